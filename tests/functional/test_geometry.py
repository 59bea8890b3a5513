# SPDX-License-Identifier: Apache-2.0
"""Tests of `winattn.geometry`: padded size, shift mask, relative position index, dense bias,
the shared integer check and the memory guard."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from winattn import geometry as G
from winattn._utils import positive_int


@pytest.mark.parametrize(
    ("size", "window", "expected"),
    [((5, 8), 4, (8, 8)), ((1, 1), 7, (7, 7)), ((14, 15), (7, 5), (14, 15)), ((9, 3), (4, 2), (12, 4))],
)
def test_padded_size_rounds_up_to_the_window(size, window, expected):
    assert G.padded_size(size, window) == expected


@pytest.mark.parametrize("window", [(1, 1), (4, 4), (3, 5)])
def test_shifted_window_mask_is_zero_without_a_shift(window):
    wh, ww = window
    mask = G.shifted_window_mask((2 * wh, 3 * ww), window, 0)
    assert mask.shape == (6, wh * ww, wh * ww)
    assert not mask.any()


@given(window_shift=st.sampled_from([((4, 4), (2, 2)), ((7, 7), (3, 3)), ((3, 5), (1, 0)), ((2, 4), (0, 3))]))
def test_shifted_window_mask_is_symmetric_with_values_zero_or_mask_value(window_shift):
    window, shift = window_shift
    mask = G.shifted_window_mask((3 * window[0], 2 * window[1]), window, shift)
    assert torch.equal(mask, mask.transpose(-1, -2))
    assert set(mask.unique().tolist()) == {0.0, G.MASK_VALUE}
    assert not mask.diagonal(dim1=-2, dim2=-1).any()


def test_shifted_window_mask_leaves_windows_away_from_the_wrap_unmasked():
    mask = G.shifted_window_mask((12, 12), 4, 2)  # (9, 16, 16): 3 x 3 windows
    interior = mask.reshape(3, 3, 16, 16)[:2, :2]
    assert not interior.any()
    assert mask.reshape(3, 3, 16, 16)[2, 2].any()


def test_shifted_window_mask_rejects_unpadded_size():
    with pytest.raises(ValueError, match=r"padded size.*size=\(10, 8\).*padded_size"):
        G.shifted_window_mask((10, 8), 4, 2)


def test_relative_position_index_covers_the_table_once_per_offset():
    index = G.relative_position_index((3, 5))  # (15, 15)
    assert index.shape == (15, 15) and index.dtype == torch.int64
    assert set(index.unique().tolist()) == set(range(5 * 9))
    assert torch.all(index.diagonal() == index[0, 0])




def test_dense_bias_gathers_the_table_by_the_relative_position_index():
    table = torch.randn(5 * 9, 2)  # window (3, 5): (2*3-1)(2*5-1) rows, 2 heads
    index = G.relative_position_index((3, 5))  # (15, 15)
    dense = G.dense_bias(table, (3, 5))  # (2, 15, 15)
    assert dense.shape == (2, 15, 15)
    i, j = torch.meshgrid(torch.arange(15), torch.arange(15), indexing="ij")
    for head in range(2):
        assert torch.equal(dense[head], table[index[i, j], head])


def test_dense_bias_is_differentiable_in_the_table():
    table = torch.randn(9, 3, requires_grad=True)
    G.dense_bias(table, (2, 2)).sum().backward()
    index = G.relative_position_index(2)
    expected = torch.bincount(index.reshape(-1), minlength=9).double()  # uses of each row
    assert torch.equal(table.grad, expected[:, None].expand(9, 3).float())


@pytest.mark.parametrize(
    "value",
    [np.int64(4), np.int32(4), torch.tensor(4), (np.int64(4), 4), (torch.tensor(4), np.int16(4))],
    ids=["np.int64", "np.int32", "torch-scalar", "np-pair", "torch-np-pair"],
)
def test_integer_scalars_of_numpy_and_torch_are_accepted_as_window_sizes(value):
    assert G.padded_size((5, 9), value) == (8, 12)


@pytest.mark.parametrize(
    "value", [np.float64(4.0), torch.tensor(4.0), torch.tensor([4, 4]), np.bool_(True)],
    ids=["np.float64", "torch-float", "torch-vector", "np.bool"],
)
def test_non_integer_scalars_are_refused_as_window_sizes(value):
    with pytest.raises(TypeError, match="window_size must be an int"):
        G.padded_size((5, 9), value)


@pytest.mark.parametrize("value", [0, -3, np.int64(0), 2.0, True, "4", None])
def test_positive_int_names_the_value(value):
    with pytest.raises(ValueError, match=rf"num_heads must be a positive int, got num_heads={value!r}"):
        positive_int(value, "num_heads")


def test_memory_guard_refuses_a_huge_window_before_allocating():
    with pytest.raises(ValueError, match=r"window_size=\(256, 256\) \(65536 tokens.*1x1 map.*GiB.*WINATTN_MAX_ATTENTION_BYTES"):
        G.check_memory((1, 1), (256, 256), 2, 4)


def test_memory_guard_reads_its_budget_from_the_environment(monkeypatch):
    need = G.attention_bytes((8, 8), (4, 4), 2, 4)
    monkeypatch.setenv(G.MEMORY_BUDGET_VAR, str(need))
    G.check_memory((8, 8), (4, 4), 2, 4)
    monkeypatch.setenv(G.MEMORY_BUDGET_VAR, str(need - 1))
    with pytest.raises(ValueError, match="over the budget"):
        G.check_memory((8, 8), (4, 4), 2, 4)


def test_memory_guard_names_a_bad_budget(monkeypatch):
    monkeypatch.setenv(G.MEMORY_BUDGET_VAR, "lots")
    with pytest.raises(ValueError, match=r"WINATTN_MAX_ATTENTION_BYTES='lots' is not a number of bytes"):
        G.memory_budget()


@pytest.mark.parametrize(
    ("value", "budget"),
    [("1024", 1024), ("512MiB", 512 << 20), ("2GiB", 2 << 30), (" 8 GiB ", 8 << 30), ("64KiB", 64 << 10), ("7B", 7), ("", G.DEFAULT_MEMORY_BUDGET)],
)
def test_memory_budget_accepts_bytes_with_an_optional_binary_unit(monkeypatch, value, budget):
    monkeypatch.setenv(G.MEMORY_BUDGET_VAR, value)
    assert G.memory_budget() == budget


@pytest.mark.parametrize("value", ["inf", "nan", "-5", "1e9", "1.5GiB", "0x10", "2GB", "GiB"])
def test_memory_budget_rejects_anything_else_naming_the_variable_the_value_and_the_fix(monkeypatch, value):
    monkeypatch.setenv(G.MEMORY_BUDGET_VAR, value)
    pattern = rf"WINATTN_MAX_ATTENTION_BYTES={value!r} is not a number of bytes; set it to a whole number of bytes.*16GiB"
    with pytest.raises(ValueError, match=pattern):
        G.memory_budget()


def test_memory_guard_prints_sizes_in_a_unit_that_shows_them(monkeypatch):
    monkeypatch.setenv(G.MEMORY_BUDGET_VAR, "1000")
    with pytest.raises(ValueError, match=r"needs 18\.0 KiB per image.*over the budget of 1000 B"):
        G.check_memory((8, 8), (4, 4), 2, 4)
    monkeypatch.setenv(G.MEMORY_BUDGET_VAR, "3MiB")
    with pytest.raises(ValueError, match=r"needs 8\.0 MiB per image.*over the budget of 3\.0 MiB"):
        G.check_memory((64, 64), (8, 8), 4, 4)


def _measured_peak(fn) -> int:
    """Peak bytes that `fn` allocates on the CPU.

    The profiler records every allocation and free of PyTorch's CPU allocator with its size
    and time (`profile_memory=True`); the running sum of those sizes in time order is the
    memory allocated since the start, and its maximum is the peak. This counts tensors only
    (not Python objects), exactly, whatever the platform's malloc does.
    """
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    sizes, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            sizes.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    now = peak = 0
    for _, size in sorted(sizes):
        now += size
        peak = max(peak, now)
    return peak


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize("window", [8, 32])
@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_attention_bytes_bounds_the_measured_peak_from_above_and_closely(backend, window, shift, grad, dtype):
    from winattn.functional import window_attention

    heads, size, head_dim = (2, 40, 8) if window == 8 else (1, 40, 8)
    G._cached_index.cache_clear()  # the first call builds the index and the mask
    G._cached_mask.cache_clear()
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(1, size, size, 3 * heads * head_dim, generator=g, dtype=dtype).requires_grad_(grad)
    table = torch.randn((2 * window - 1) ** 2, heads, generator=g, dtype=dtype).requires_grad_(grad)

    def call():
        with torch.set_grad_enabled(grad):
            out = window_attention(qkv, heads, window, window // 2 if shift else 0, bias_table=table, backend=backend)
            if grad:
                out.sum().backward()

    measured = _measured_peak(call)
    estimate = G.attention_bytes(
        (size, size), (window, window), heads, qkv.element_size(), shifted=shift, bias=True,
        grad=grad, channels=heads * head_dim,
    )
    # one bound for both backends: sdpa's chunked inference allocates less (down to 1 / 2.1)
    assert measured <= estimate <= 2.5 * measured, (measured, estimate)
