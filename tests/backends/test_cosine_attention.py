# SPDX-License-Identifier: Apache-2.0
"""Swin-V2's scaled cosine attention (`logit_scale=`) on every backend that runs it, against the
reference: forward and gradients (the per-head `logit_scale` included), with and without a
shift and padding, in both of the SDPA backend's shift-mask layouts (grouped and full), in
float32, float64 and the half-precision dtypes."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given

from tests.strategies import Problem, problems, seeded
from winattn.backends import AttentionCall, explain, sdpa
from winattn.backends.reference import reference_window_attention
from winattn.functional import window_attention

#: Cases as `(problem, bias table?)`; every shifted one is padded on at least one axis.
CASES = {
    "unshifted": (Problem(2, 8, 8, 2, 4, (4, 4), (0, 0)), False),
    "unshifted-table-padded": (Problem(1, 6, 7, 2, 4, (4, 4), (0, 0)), True),
    "shifted-table": (Problem(2, 8, 12, 2, 4, (4, 4), (2, 2)), True),
    "shifted-table-padded": (Problem(2, 9, 6, 3, 3, (4, 4), (2, 2)), True),
    "shifted-7x7-padded": (Problem(1, 10, 9, 1, 5, (7, 7), (3, 3)), True),
    "shifted-one-axis-rect": (Problem(1, 7, 11, 2, 4, (4, 7), (2, 0)), False),
}

LAYOUTS = {"grouped": 0, "full-mask": 1 << 30}

#: float32 tolerances. The logits reach `100 * cos + 16`, so their rounding error is about 100
#: times that of unit-scale attention; the float32 reference itself is off by up to 1e-5 here.
#: Gradients reach tens (q and k go through the normalisation times a scale of up to 100), so
#: their tolerance is this fraction of the largest gradient of each input.
ATOL = 3e-5
GRAD_TOL = 2e-5


def _inputs(problem: Problem, table: bool, dtype: torch.dtype, seed: int) -> dict:
    g = seeded(seed)
    out = {"qkv": problem.qkv(g, dtype)}
    if table:
        out["bias_table"] = 16 * torch.sigmoid(problem.bias_table(g, dtype))  # as Swin-V2's
    out["pad_qkv"] = problem.pad_qkv(g, dtype)
    # log-scales around Swin-V2's log(10) init, one above the clamp at log(100)
    scales = math.log(10.0) + torch.randn(problem.num_heads, generator=g, dtype=dtype)
    scales[0] = math.log(100.0) + 0.5
    out["logit_scale"] = scales
    return out


def _attend(problem: Problem, backend: str, **kwargs) -> torch.Tensor:
    return window_attention(
        num_heads=problem.num_heads, window_size=problem.window_size, shift_size=problem.shift_size,
        backend=backend, **kwargs,
    )


def _float32_case(monkeypatch: pytest.MonkeyPatch, layout: str, case: str, seed: int) -> tuple[Problem, dict]:
    """The SDPA backend set to `layout`, and `case`'s problem with float32 inputs."""
    monkeypatch.setattr(sdpa, "FULL_MASK_MAX_BYTES", LAYOUTS[layout])
    problem, table = CASES[case]
    return problem, _inputs(problem, table, torch.float32, seed)


def _as_double(inputs: dict) -> dict:
    return {k: v.detach().double() for k, v in inputs.items()}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES)
def test_sdpa_float32_cosine_forward_matches_float64_reference(monkeypatch, layout, case):
    problem, inputs = _float32_case(monkeypatch, layout, case, seed=0)
    expected = _attend(problem, "reference", **_as_double(inputs))
    got = _attend(problem, "sdpa", **inputs)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES)
def test_sdpa_float32_cosine_gradients_match_float64_reference(monkeypatch, layout, case):
    problem, inputs = _float32_case(monkeypatch, layout, case, seed=1)
    upstream = torch.randn(problem.batch, problem.height, problem.width, problem.dim, generator=seeded(2))

    def grads(name: str, leaves: dict) -> tuple[torch.Tensor, ...]:
        leaves = {k: v.detach().clone().requires_grad_() for k, v in leaves.items()}
        out = _attend(problem, name, **leaves)
        return torch.autograd.grad(out, list(leaves.values()), upstream.to(out.dtype), materialize_grads=True)

    for name, got, want in zip(inputs, grads("sdpa", inputs), grads("reference", _as_double(inputs))):
        atol = GRAD_TOL * want.abs().max().item()
        torch.testing.assert_close(got.double(), want, atol=atol, rtol=0, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", ["shifted-table-padded", "shifted-7x7-padded"])
def test_sdpa_half_precision_cosine_error_is_at_most_twice_the_references(dtype, case):
    problem, table = CASES[case]
    inputs = _inputs(problem, table, torch.float32, seed=3)
    exact = _attend(problem, "reference", **_as_double(inputs))
    low = {k: v.to(dtype) for k, v in inputs.items()}
    got = _attend(problem, "sdpa", **low)
    ref = _attend(problem, "reference", **low)
    assert got.dtype == dtype
    err_got = (got.double() - exact).abs().max().item()
    err_ref = (ref.double() - exact).abs().max().item()
    assert err_got <= 2 * err_ref + 1e-3, (err_got, err_ref)


@given(problem=problems())
@example(problem=Problem(2, 10, 17, 2, 3, (7, 7), (3, 3)))
@example(problem=Problem(1, 3, 2, 1, 1, (8, 8), (4, 4)))
def test_sdpa_float64_cosine_matches_reference_over_drawn_problems(problem):
    inputs = _inputs(problem, True, torch.float64, seed=4)
    call = AttentionCall.build(
        inputs["qkv"], num_heads=problem.num_heads, window_size=problem.window_size,
        shift_size=problem.shift_size, bias_table=inputs["bias_table"], bias=None, scale=None,
        pad_qkv=inputs["pad_qkv"], dropout_p=0.0, logit_scale=inputs["logit_scale"],
    )
    torch.testing.assert_close(_attend(problem, "sdpa", **inputs), reference_window_attention(call), atol=1e-10, rtol=0)


def test_logit_scale_is_clamped_at_log_100_and_gets_no_gradient_there():
    problem, _ = CASES["shifted-table"]
    inputs = _inputs(problem, True, torch.float64, seed=5)
    high = inputs["logit_scale"].clone().requires_grad_()
    clamped = high.detach().clamp(max=math.log(100.0))
    out = _attend(problem, "reference", **{**inputs, "logit_scale": high})
    torch.testing.assert_close(out, _attend(problem, "reference", **{**inputs, "logit_scale": clamped}), atol=0, rtol=0)
    (grad,) = torch.autograd.grad(out.sum(), high)
    assert grad[0] == 0 and (grad[1:] != 0).all()


def test_cosine_logits_ignore_the_length_of_q_and_k():
    problem, _ = CASES["shifted-table-padded"]
    inputs = _inputs(problem, True, torch.float64, seed=6)
    qkv = inputs.pop("qkv")
    c = problem.dim
    longer = torch.cat([qkv[..., : 2 * c] * 7.5, qkv[..., 2 * c :]], dim=-1)  # q and k scaled
    pad = inputs.pop("pad_qkv")
    pad_longer = torch.cat([pad[: 2 * c] * 3.0, pad[2 * c :]])
    torch.testing.assert_close(
        _attend(problem, "reference", qkv=longer, pad_qkv=pad_longer, **inputs),
        _attend(problem, "reference", qkv=qkv, pad_qkv=pad, **inputs),
        atol=1e-12, rtol=0,
    )


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_zero_padding_keys_stay_finite_in_float16(backend):
    problem = Problem(1, 5, 6, 2, 4, (4, 4), (2, 2))
    qkv = problem.qkv(seeded(7), torch.float16)
    out = _attend(problem, backend, qkv=qkv, logit_scale=torch.zeros(2, dtype=torch.float16))  # pad_qkv: zeros
    assert torch.isfinite(out).all()


def test_scale_and_logit_scale_together_are_refused():
    with pytest.raises(ValueError, match="either scale"):
        window_attention(torch.zeros(1, 4, 4, 12), 2, 2, scale=0.5, logit_scale=torch.zeros(2))


def test_logit_scale_of_the_wrong_size_is_refused():
    with pytest.raises(ValueError, match="num_heads=2"):
        window_attention(torch.zeros(1, 4, 4, 12), 2, 2, logit_scale=torch.zeros(3))


def test_swin_v2_logit_scale_shape_is_accepted():
    qkv = torch.randn(1, 4, 4, 12)
    flat = window_attention(qkv, 2, 2, logit_scale=torch.ones(2), backend="reference")
    torch.testing.assert_close(window_attention(qkv, 2, 2, logit_scale=torch.ones(2, 1, 1), backend="reference"), flat)


def test_triton_declines_cosine_attention_with_a_reason():
    call = AttentionCall.build(
        torch.zeros(1, 8, 8, 48), num_heads=2, window_size=4, shift_size=2, bias_table=None,
        bias=None, scale=None, pad_qkv=None, dropout_p=0.0, logit_scale=torch.zeros(2),
    )
    reasons = explain(call)
    assert reasons["sdpa"] == [] and reasons["reference"] == []
    if "triton" in reasons:
        assert any("cosine attention" in r for r in reasons["triton"])
