# SPDX-License-Identifier: Apache-2.0
"""Edge inputs of the modules: empty batches, mixed dtypes and devices, huge windows, integer
scalars from NumPy and torch, and `DropPath`'s rescaling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from winattn import SwinBlock, WindowAttention, WindowAttentionBlock, window_attention
from winattn.modules import DropPath

CPU_BACKENDS = ("reference", "sdpa")


# --- empty batches and channels ---------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    ("build", "shape"),
    [
        (lambda b: WindowAttention(16, 2, 4, 2, backend=b), (0, 8, 8, 16)),
        (lambda b: WindowAttention(16, 2, 4, 0, backend=b), (0, 5, 7, 16)),
        (lambda b: SwinBlock(16, 2, 4, 2, backend=b), (0, 9, 6, 16)),
        (lambda b: WindowAttentionBlock(16, 2, 4, 2, backend=b), (0, 16, 8, 8)),
    ],
    ids=["attention", "attention-unshifted", "swin-block", "wa-block"],
)
def test_modules_map_an_empty_batch_to_an_empty_output(backend, build, shape):
    x = torch.randn(shape, requires_grad=True)
    out = build(backend)(x)
    assert out.shape == shape
    out.sum().backward()
    assert x.grad.shape == shape


def test_window_attention_refuses_qkv_without_channels():
    with pytest.raises(ValueError, match=r"qkv has no channels \(qkv.shape=\(1, 8, 8, 0\)\).*C >= num_heads"):
        window_attention(torch.randn(1, 8, 8, 0), 2, 4)


# --- dtypes and devices ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_attention_names_both_dtypes_when_input_and_parameters_differ(dtype):
    with pytest.raises(TypeError, match=rf"x.dtype={dtype} but the module's parameters are torch.float32.*module.to"):
        WindowAttention(16, 2, 4, 2)(torch.randn(1, 8, 8, 16, dtype=dtype))


def test_wa_block_names_both_dtypes_before_its_convolutions_run():
    with pytest.raises(TypeError, match=r"x.dtype=torch.float64 but the module's parameters are torch.float32"):
        WindowAttentionBlock(16, 2, 4, 2)(torch.randn(1, 16, 8, 8, dtype=torch.float64))


def test_swin_block_names_both_dtypes():
    with pytest.raises(TypeError, match=r"x.dtype=torch.float16 but the module's parameters are torch.float32"):
        SwinBlock(16, 2, 4, 2)(torch.randn(1, 8, 8, 16, dtype=torch.float16))


def test_autocast_may_mix_input_and_parameter_dtypes():
    module = WindowAttention(16, 2, 4, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(torch.randn(1, 8, 8, 16))
    assert out.shape == (1, 8, 8, 16)


def test_attention_names_the_device_of_input_and_parameters():
    module = WindowAttention(16, 2, 4, 2, device="meta")
    with pytest.raises(ValueError, match=r"x is on cpu but the module's parameters are on meta"):
        module(torch.randn(1, 8, 8, 16))


@pytest.mark.parametrize("name", ["bias_table", "pad_qkv"])
def test_window_attention_names_a_tensor_on_another_device(name):
    extra = {"bias_table": torch.zeros(49, 2, device="meta"), "pad_qkv": torch.zeros(48, device="meta")}
    with pytest.raises(ValueError, match=rf"{name} is on meta but qkv is on cpu"):
        window_attention(torch.randn(1, 8, 8, 48), 2, 4, 2, **{name: extra[name]}, backend="sdpa")


# --- huge windows ------------------------------------------------------------------------------


def test_huge_window_on_a_small_map_is_refused_before_allocating(monkeypatch):
    # 2 GiB of logits alone (all the guard used to count), 8 GiB while the index is built
    monkeypatch.setenv("WINATTN_MAX_ATTENTION_BYTES", "2GiB")
    with pytest.raises(ValueError, match=r"window_size=\(128, 128\) \(16384 tokens.*1x1 map with 2 heads needs 8\.0 GiB.*budget of 2\.0 GiB"):
        window_attention(torch.randn(1, 1, 1, 48), 2, 128)


def test_module_forward_names_its_window_when_over_the_budget(monkeypatch):
    module = WindowAttention(16, 4, 32)  # windows of 1024 tokens: 16 MiB of fp32 weights
    monkeypatch.setenv("WINATTN_MAX_ATTENTION_BYTES", str(8 << 20))
    with pytest.raises(ValueError, match=r"window_size=\(32, 32\).*3x5 map with 4 heads"):
        module(torch.randn(1, 3, 5, 16))


def test_a_window_whose_index_alone_is_over_the_budget_is_refused_at_construction():
    with pytest.raises(ValueError, match=r"window_size=\(256, 256\) \(65536 tokens.*32.0 GiB.*WINATTN_MAX_ATTENTION_BYTES"):
        WindowAttention(16, 2, 256)


def test_the_memory_budget_is_read_at_call_time(monkeypatch):
    module = WindowAttention(16, 2, 4, 2)
    x = torch.randn(1, 8, 8, 16)
    module(x)
    monkeypatch.setenv("WINATTN_MAX_ATTENTION_BYTES", "1024")
    with pytest.raises(ValueError, match="over the budget"):
        module(x)


# --- constructor arguments ---------------------------------------------------------------------


@pytest.mark.parametrize("window", [np.int64(4), torch.tensor(4), (np.int32(4), np.int64(4))])
def test_integer_scalars_of_numpy_and_torch_build_a_module(window):
    module = WindowAttention(np.int64(16), np.int64(2), window, np.int64(2))
    assert module.window_size == (4, 4) and module.shift_size == (2, 2)
    assert type(module.dim) is int and type(module.num_heads) is int
    assert module(torch.randn(1, 5, 6, 16)).shape == (1, 5, 6, 16)


@pytest.mark.parametrize("ratio", [math.nan, math.inf, -1.0, 0.0])
def test_swin_block_refuses_a_bad_mlp_ratio_naming_it(ratio):
    with pytest.raises(ValueError, match=rf"mlp_ratio must be positive, got mlp_ratio={ratio}"):
        SwinBlock(16, 2, 4, mlp_ratio=ratio)


# --- DropPath ----------------------------------------------------------------------------------


def test_drop_path_keeps_whole_samples_scaled_by_one_over_keep():
    torch.manual_seed(0)
    drop = DropPath(0.25).train()
    x = torch.ones(4000, 3, 2)
    per_sample = drop(x).flatten(1)  # (B, 6), each sample all 0 or all 1/keep
    assert torch.equal(per_sample.min(1).values, per_sample.max(1).values)
    assert per_sample[:, 0].unique().tolist() == pytest.approx([0.0, 1 / 0.75])
    kept = (per_sample[:, 0] > 0).double().mean().item()
    assert abs(kept - 0.75) < 0.03  # 4000 draws: the standard deviation is about 0.007


def test_drop_path_preserves_the_mean_in_expectation():
    torch.manual_seed(1)
    x = torch.ones(20000, 4)
    out = DropPath(0.5).train()(x)
    assert abs(out.mean().item() - 1.0) < 0.03  # sd of the mean: 1/sqrt(20000) ~ 0.007


@pytest.mark.parametrize("prob", [0.0, 0.5])
def test_drop_path_is_the_identity_in_eval(prob):
    x = torch.randn(8, 3)
    assert DropPath(prob).eval()(x) is x


def test_drop_path_gradient_is_scaled_like_its_output():
    torch.manual_seed(2)
    x = torch.randn(64, 5, requires_grad=True)
    out = DropPath(0.2).train()(x)
    out.sum().backward()
    kept = out.detach().ne(0).any(1)
    torch.testing.assert_close(x.grad[kept], torch.full_like(x.grad[kept], 1 / 0.8), atol=1e-6, rtol=0)
    assert torch.equal(x.grad[~kept], torch.zeros_like(x.grad[~kept]))
