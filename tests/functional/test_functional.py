# SPDX-License-Identifier: Apache-2.0
"""Tests of `winattn.functional`: layout helpers and the semantics of `window_attention` on
every CPU backend (the backends' parity with the reference is in `tests/backends/`)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, example, given
from hypothesis import strategies as st

from tests.strategies import Problem, problems, seeded, wrapped_problems
from winattn import functional as F
from winattn.functional import window_attention

BACKENDS = ("reference", "sdpa")


def _attend(problem: Problem, qkv, backend: str, **kwargs):
    return window_attention(
        qkv,
        problem.num_heads,
        problem.window_size,
        problem.shift_size,
        backend=backend,
        **kwargs,
    )


# --- layout ----------------------------------------------------------------------------------


@given(
    batch=st.integers(1, 2),
    tiles=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    window=st.tuples(st.sampled_from((1, 2, 3, 7)), st.sampled_from((1, 2, 4, 7))),
    channels=st.integers(1, 3),
)
def test_window_reverse_inverts_window_partition(batch, tiles, window, channels):
    h, w = tiles[0] * window[0], tiles[1] * window[1]
    x = torch.randn(batch, h, w, channels)
    windows = F.window_partition(x, window)
    assert windows.shape == (batch * tiles[0] * tiles[1], *window, channels)
    assert torch.equal(F.window_reverse(windows, window, h, w), x)


@given(
    batch=st.integers(1, 2),
    tiles=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    window=st.tuples(st.sampled_from((1, 3, 7)), st.sampled_from((2, 4))),
    data=st.data(),
)
def test_window_partition_orders_windows_batch_major_then_row_major(batch, tiles, window, data):
    (nh, nw), (wh, ww) = tiles, window
    x = torch.randn(batch, nh * wh, nw * ww, 2)
    b = data.draw(st.integers(0, batch - 1))
    i = data.draw(st.integers(0, nh - 1))
    j = data.draw(st.integers(0, nw - 1))
    expected = x[b, i * wh : (i + 1) * wh, j * ww : (j + 1) * ww]
    assert torch.equal(F.window_partition(x, window)[(b * nh + i) * nw + j], expected)


def test_window_partition_rejects_map_not_a_multiple_of_the_window():
    with pytest.raises(ValueError, match=r"multiples of the window.*\(h, w\)=\(5, 8\).*pad"):
        F.window_partition(torch.randn(1, 5, 8, 3), 4)


def test_window_reverse_rejects_window_count_that_does_not_tile_the_map():
    with pytest.raises(ValueError, match="3 windows cannot tile"):
        F.window_reverse(torch.randn(3, 2, 2, 1), 2, 4, 4)


# --- window_attention: semantics ------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@given(problem=problems())
@example(problem=Problem(1, 10, 17, 2, 3, (7, 7), (3, 3)))
def test_padding_equals_attention_on_a_map_padded_with_pad_qkv(backend, problem):
    g = seeded(4)
    qkv, table, pad = problem.qkv(g), problem.bias_table(g), problem.pad_qkv(g)
    hp, wp = F.padded_size((problem.height, problem.width), problem.window_size)
    full = pad.expand(problem.batch, hp, wp, -1).clone()  # (B, Hp, Wp, 3C)
    full[:, : problem.height, : problem.width] = qkv
    expected = _attend(problem, full, backend, bias_table=table)[:, : problem.height, : problem.width]
    torch.testing.assert_close(_attend(problem, qkv, backend, bias_table=table, pad_qkv=pad), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_pad_qkv_pads_with_zeros(backend):
    problem = Problem(1, 5, 6, 2, 3, (4, 4), (2, 2))
    qkv = problem.qkv(seeded(5))
    zeros = torch.zeros(3 * problem.dim, dtype=qkv.dtype)
    torch.testing.assert_close(_attend(problem, qkv, backend), _attend(problem, qkv, backend, pad_qkv=zeros), atol=0, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@given(problem=problems(shifted=False))
def test_unshifted_window_attention_never_looks_outside_its_window(backend, problem):
    g = seeded(6)
    qkv = problem.qkv(g)
    (wh, ww), (h, w) = problem.window_size, (problem.height, problem.width)
    assume(h > wh or w > ww)
    perturbed = qkv.clone()
    perturbed[:, :wh, :ww] += torch.randn_like(perturbed[:, :wh, :ww])  # the top-left window
    before, after = _attend(problem, qkv, backend), _attend(problem, perturbed, backend)
    outside = torch.ones(h, w, dtype=torch.bool)
    outside[:wh, :ww] = False
    torch.testing.assert_close(after[:, outside], before[:, outside], atol=0, rtol=0)
    assert not torch.allclose(after[:, ~outside], before[:, ~outside])


def _wrapped_tokens(problem: Problem, axis: str):
    # After the cyclic shift by (sh, sw) on the padded (Hp, Wp) map, rows [0, sh) of the map
    # wrap around to the bottom and share the last row of windows with rows [Hp - Wh + sh, Hp),
    # which they were never next to; likewise columns [0, sw). Returns an (H, W) bool map of
    # the wrapped tokens on `axis` ("height", "width", or "corner" for both).
    (sh, sw), wrapped = problem.shift_size, torch.zeros(problem.height, problem.width, dtype=torch.bool)
    wrapped[: sh if axis != "width" else None, : sw if axis != "height" else None] = True
    return wrapped


_WRAP_CASES = st.sampled_from(("height", "width", "corner")).flatmap(
    lambda axis: st.tuples(st.just(axis), wrapped_problems(axis))
)


@pytest.mark.parametrize("backend", BACKENDS)
@given(case=_WRAP_CASES)
@example(case=("corner", Problem(1, 14, 13, 2, 3, (7, 7), (3, 3))))
@example(case=("height", Problem(2, 7, 11, 1, 5, (4, 7), (2, 0))))
def test_shifted_mask_blocks_attention_across_wrapped_regions(backend, case):
    # Perturbing the wrapped tokens must change no output outside them (the problems are drawn
    # so that they share windows with real unwrapped tokens); their own outputs must change.
    axis, problem = case
    wrapped = _wrapped_tokens(problem, axis)
    g = seeded(7)
    qkv, table, pad = problem.qkv(g), problem.bias_table(g), problem.pad_qkv(g)
    perturbed = qkv.clone()
    perturbed[:, wrapped] += 3 * torch.randn_like(perturbed[:, wrapped])
    before = _attend(problem, qkv, backend, bias_table=table, pad_qkv=pad)
    after = _attend(problem, perturbed, backend, bias_table=table, pad_qkv=pad)
    torch.testing.assert_close(after[:, ~wrapped], before[:, ~wrapped], atol=1e-12, rtol=0)
    assert not torch.allclose(after[:, wrapped], before[:, wrapped])


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_dropout_draws_from_the_torch_generator(backend):
    problem = Problem(1, 8, 8, 2, 4, (4, 4), (2, 2))
    qkv = problem.qkv(seeded(8)).float()
    outs = []
    for seed in (0, 1, 0):
        torch.manual_seed(seed)
        outs.append(_attend(problem, qkv, backend, dropout_p=0.5))
    assert not torch.allclose(outs[0], outs[1])
    torch.testing.assert_close(outs[0], outs[2], atol=0, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_without_dropout_is_deterministic_across_seeds(backend):
    problem = Problem(1, 8, 8, 2, 4, (4, 4), (2, 2))
    qkv = problem.qkv(seeded(9)).float()
    torch.manual_seed(0)
    first = _attend(problem, qkv, backend)
    torch.manual_seed(1)
    torch.testing.assert_close(_attend(problem, qkv, backend), first, atol=0, rtol=0)


# --- window_attention: bad input ------------------------------------------------------------

_QKV = torch.randn(1, 5, 6, 3 * 8)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"num_heads": 3}, ValueError, r"qkv.shape\[-1\]=24 with num_heads=3"),
        ({"num_heads": 0}, ValueError, r"num_heads must be a positive int, got num_heads=0"),
        ({"window_size": 0}, ValueError, r"window_size must be >= 1.*window_size=0"),
        ({"window_size": (4, -2)}, ValueError, r"window_size must be >= 1.*window_size=\(4, -2\)"),
        ({"window_size": 2.5}, TypeError, r"window_size must be an int.*window_size=2.5"),
        ({"window_size": True}, TypeError, r"window_size must be an int.*window_size=True"),
        ({"shift_size": -1}, ValueError, r"shift_size must be >= 0.*shift_size=-1"),
        ({"shift_size": 4}, ValueError, r"shift_size must be in \[0, window_size\).*shift_size=\(4, 4\).*window_size=\(4, 4\)"),
        ({"shift_size": (1, 5)}, ValueError, r"shift_size=\(1, 5\).*\(width\)"),
        ({"bias_table": torch.zeros(48, 2)}, ValueError, r"bias_table must have shape.*\(49, 2\).*got \(48, 2\)"),
        ({"bias": torch.zeros(2, 15, 16)}, ValueError, r"bias must have shape.*\(2, 16, 16\).*got \(2, 15, 16\)"),
        ({"bias": torch.zeros(2, 16, 16), "bias_table": torch.zeros(49, 2)}, ValueError, "either bias_table or bias"),
        ({"pad_qkv": torch.zeros(8)}, ValueError, r"pad_qkv must have shape.*\(24,\).*got \(8,\)"),
        ({"dropout_p": 1.0}, ValueError, r"dropout_p must be in \[0, 1\), got dropout_p=1.0"),
        ({"dropout_p": -0.1}, ValueError, r"dropout_p=-0.1"),
        ({"backend": "flash"}, ValueError, r"unknown backend 'flash'.*choose one of.*reference.*sdpa"),
    ],
)
def test_window_attention_rejects_bad_arguments_naming_them(kwargs, error, pattern):
    call = {"num_heads": 2, "window_size": 4, "shift_size": 2, **kwargs}
    with pytest.raises(error, match=pattern):
        window_attention(_QKV, call.pop("num_heads"), call.pop("window_size"), call.pop("shift_size"), **call)


@pytest.mark.parametrize(
    ("qkv", "error", "pattern"),
    [
        (torch.randn(5, 6, 24), ValueError, r"\(B, H, W, C\), got qkv.shape=\(5, 6, 24\) \(3 dims\)"),
        (torch.randn(1, 1, 5, 6, 24), ValueError, r"qkv.shape=\(1, 1, 5, 6, 24\) \(5 dims\)"),
        (torch.ones(1, 5, 6, 24, dtype=torch.int64), TypeError, r"floating-point.*qkv.dtype=torch.int64.*\.float\(\)"),
        (torch.ones(1, 5, 6, 24, dtype=torch.bool), TypeError, r"qkv.dtype=torch.bool"),
        (torch.randn(1, 0, 6, 24), ValueError, r"empty spatial size \(H, W\)=\(0, 6\).*>= 1"),
        (torch.randn(1, 5, 0, 24), ValueError, r"\(H, W\)=\(5, 0\)"),
        ([[1.0]], TypeError, r"qkv must be a torch.Tensor, got list"),
    ],
)
def test_window_attention_rejects_bad_qkv_naming_it(qkv, error, pattern):
    with pytest.raises(error, match=pattern):
        window_attention(qkv, 2, 4, 2)
