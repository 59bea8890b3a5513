# SPDX-License-Identifier: Apache-2.0
"""The SDPA backend's layout choices (grouped or full shift mask) and its inference mask
cache, checked against the reference backend."""

import pytest
import torch

from winattn import WindowAttention, window_attention
from winattn.backends import sdpa

ATOL = 1e-5


def _module() -> WindowAttention:
    torch.manual_seed(0)
    module = WindowAttention(dim=16, num_heads=2, window_size=4, shift_size=2).eval()
    with torch.no_grad():
        module.relative_position_bias_table.normal_()
    return module


IMAGE_QKV_BYTES = 10 * 13 * 3 * 16 * 4  # one (10, 13) map of qkv, float32


@pytest.mark.parametrize("full_mask_max_bytes", [0, 1 << 30], ids=["grouped", "full-mask"])
@pytest.mark.parametrize(
    "chunk_bytes", [1, 2 * IMAGE_QKV_BYTES, 1 << 30], ids=["by-image", "by-two", "whole-batch"]
)
@pytest.mark.parametrize("batch", [1, 3])
def test_sdpa_layouts_match_reference_with_padding_and_shift(
    monkeypatch: pytest.MonkeyPatch, full_mask_max_bytes: int, chunk_bytes: int, batch: int
) -> None:
    monkeypatch.setattr(sdpa, "FULL_MASK_MAX_BYTES", full_mask_max_bytes)
    monkeypatch.setattr(sdpa, "CHUNK_BYTES", chunk_bytes)
    module = _module()
    x = torch.randn(batch, 10, 13, 16)
    with torch.no_grad():
        got, want = module(x, backend="sdpa"), module(x, backend="reference")
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_sdpa_inference_sees_an_in_place_update_of_the_bias_table() -> None:
    module = _module()
    x = torch.randn(2, 8, 8, 16)
    with torch.no_grad():
        module(x, backend="sdpa")  # fills the mask cache
        module.relative_position_bias_table.mul_(-3.0)
        got, want = module(x, backend="sdpa"), module(x, backend="reference")
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_sdpa_inference_sees_a_loaded_state_dict() -> None:
    module, other = _module(), _module()
    with torch.no_grad():
        other.relative_position_bias_table.normal_(std=2.0)
    x = torch.randn(1, 8, 8, 16)
    with torch.no_grad():
        module(x, backend="sdpa")  # fills the mask cache
        module.load_state_dict(other.state_dict())
        got, want = module(x, backend="sdpa"), other(x, backend="reference")
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("full_mask_max_bytes", [0, 1 << 30], ids=["grouped", "full-mask"])
def test_sdpa_training_gradients_match_reference(
    monkeypatch: pytest.MonkeyPatch, full_mask_max_bytes: int
) -> None:
    monkeypatch.setattr(sdpa, "FULL_MASK_MAX_BYTES", full_mask_max_bytes)
    module = _module()
    x = torch.randn(2, 10, 13, 16)
    grads = []
    for backend in ("sdpa", "reference"):
        module.zero_grad(set_to_none=True)
        x_in = x.clone().requires_grad_(True)
        module(x_in, backend=backend).square().sum().backward()
        grads.append((x_in.grad, module.relative_position_bias_table.grad, module.qkv.bias.grad))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_sdpa_output_is_bitwise_the_same_with_and_without_grad_mode() -> None:
    # An entropy coder needs the encoder (usually under no_grad) and the decoder to compute
    # the same bits; the backend must not switch kernels with the grad mode.
    module = _module()
    x = torch.randn(2, 10, 13, 16)
    with torch.no_grad():
        inference = module(x, backend="sdpa")
    recorded = module(x, backend="sdpa")
    assert recorded.requires_grad
    assert torch.equal(inference, recorded.detach())


def test_sdpa_inference_sees_a_bias_table_changed_through_data() -> None:
    # `.data` edits bypass the version counter; the cache must still notice new values.
    module = _module()
    x = torch.randn(1, 8, 8, 16)
    with torch.no_grad():
        module(x, backend="sdpa")  # fills the mask cache
    module.relative_position_bias_table.data.copy_(torch.randn_like(module.relative_position_bias_table))
    with torch.no_grad():
        got, want = module(x, backend="sdpa"), module(x, backend="reference")
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("backend", ["sdpa", "reference"])
def test_training_works_after_a_call_under_inference_mode(backend: str) -> None:
    # The cached geometry tensors must not be inference tensors, or backward cannot save them.
    module = WindowAttention(dim=16, num_heads=2, window_size=(3, 5), shift_size=(1, 2))
    x = torch.randn(1, 7, 11, 16)
    with torch.inference_mode():
        module(x, backend=backend)
    module(x, backend=backend).square().sum().backward()
    assert module.relative_position_bias_table.grad is not None


def test_chunked_sdpa_inference_runs_under_cpu_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sdpa, "CHUNK_BYTES", 1)  # one image per chunk
    qkv = torch.randn(3, 10, 13, 3 * 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = window_attention(qkv, 2, 4, 2, backend="sdpa")
        want = window_attention(qkv, 2, 4, 2, backend="reference")
    torch.testing.assert_close(got.float(), want.float(), atol=3e-2, rtol=0)


@pytest.mark.parametrize("full_mask_max_bytes", [0, 1 << 30], ids=["grouped", "full-mask"])
@pytest.mark.parametrize("shift", [0, 2])
@pytest.mark.parametrize("batch", [1, 3])
def test_window_chunked_inference_is_bitwise_the_recorded_forward(
    monkeypatch: pytest.MonkeyPatch, full_mask_max_bytes: int, shift: int, batch: int
) -> None:
    # Inference on large maps attends a few windows at a time; every window must come out
    # with the same bits as in the one-call path taken when autograd records, padding
    # windows included, and match the reference.
    monkeypatch.setattr(sdpa, "FULL_MASK_MAX_BYTES", full_mask_max_bytes)
    monkeypatch.setattr(sdpa, "LOGITS_CHUNK_BYTES", 3 * 2 * 16 * 16 * 4)  # three windows
    calls = []
    chunked = sdpa._attend_cpu_chunked
    monkeypatch.setattr(sdpa, "_attend_cpu_chunked", lambda *a, **k: calls.append(1) or chunked(*a, **k))
    torch.manual_seed(0)
    module = WindowAttention(dim=16, num_heads=2, window_size=4, shift_size=shift).eval()
    with torch.no_grad():
        module.relative_position_bias_table.normal_()
    x = torch.randn(batch, 10, 13, 16)  # padded to 12x16: padding in the last row and column
    with torch.no_grad():
        inference = module(x, backend="sdpa")
        want = module(x, backend="reference")
    recorded = module(x, backend="sdpa")
    assert calls, "the window-chunked path was not taken"
    assert torch.equal(inference, recorded.detach())
    torch.testing.assert_close(inference, want, atol=ATOL, rtol=0)


def test_window_chunked_inference_keeps_autocast_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sdpa, "LOGITS_CHUNK_BYTES", 1)
    qkv = torch.randn(1, 16, 16, 3 * 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = window_attention(qkv, 2, 4, 2, backend="sdpa")
        want = window_attention(qkv, 2, 4, 2, backend="reference")
    assert got.dtype == want.dtype
    torch.testing.assert_close(got.float(), want.float(), atol=3e-2, rtol=0)
