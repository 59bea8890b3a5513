# SPDX-License-Identifier: Apache-2.0
"""Every registered backend against the reference: forward and gradients, with and without a
shift, with a bias table, a dense bias or no bias at all, with and without padding.

Backends that cannot run here (triton on a CPU-only process) are skipped with their reasons;
`test_triton_passes_the_parity_suite_under_the_interpreter` runs this file again with
`TRITON_INTERPRET=1`, so a plain `pytest` checks every backend on the CPU.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from tests.interpreter import assert_passes_under_interpreter
from tests.strategies import Problem, one_axis_shifts, problems, seeded
from winattn.backends import AttentionCall, explain, registered_backends, sdpa
from winattn.backends.reference import reference_window_attention
from winattn.functional import window_attention
from winattn.geometry import dense_bias

#: The float backends. `exact` (fixed point, inference only) has its own tests against the
#: reference, within its quantisation bound: tests/backends/test_exact.py.
BACKENDS = tuple(name for name in registered_backends() if name not in ("reference", "exact"))

#: The fixed cases every backend runs, small enough for Triton's interpreter. Each name says
#: which path of the backends it takes.
CASES = {
    "unshifted-no-bias": (Problem(2, 8, 8, 2, 4, (4, 4), (0, 0)), None),
    "unshifted-no-bias-padded": (Problem(1, 6, 7, 2, 4, (4, 4), (0, 0)), None),
    "unshifted-table": (Problem(1, 8, 12, 2, 4, (4, 4), (0, 0)), "table"),
    "unshifted-dense": (Problem(1, 8, 8, 3, 2, (4, 4), (0, 0)), "dense"),
    "shifted-no-bias": (Problem(2, 8, 8, 2, 4, (4, 4), (2, 2)), None),
    "shifted-table-padded": (Problem(2, 9, 6, 2, 3, (4, 4), (2, 2)), "table"),
    "shifted-dense-7x7": (Problem(1, 10, 9, 1, 5, (7, 7), (3, 3)), "dense"),
    "shifted-one-axis-rect": (Problem(1, 7, 11, 2, 4, (4, 7), (2, 0)), "table"),
    "shifted-one-head-batch": (Problem(2, 1, 2, 1, 1, (2, 1), (1, 0)), None),
}


def _runs_here(backend: str, dtype: torch.dtype = torch.float32) -> None:
    """Skips unless `backend` can run a small call of `dtype` on the CPU here."""
    probe = AttentionCall.build(
        torch.zeros(1, 4, 4, 12, dtype=dtype), num_heads=2, window_size=2, shift_size=1,
        bias_table=None, bias=None, scale=None, pad_qkv=None, dropout_p=0.0,
    )
    reasons = [r for r in explain(probe)[backend] if not r.startswith("not picked by auto")]
    if reasons:
        pytest.skip(f"{backend} cannot run here: {'; '.join(reasons)}")


def _inputs(problem: Problem, bias: str | None, dtype: torch.dtype, seed: int) -> dict:
    g = seeded(seed)
    out = {"qkv": problem.qkv(g, dtype)}
    table = problem.bias_table(g, dtype)
    if bias == "table":
        out["bias_table"] = table
    elif bias == "dense":
        out["bias"] = dense_bias(table, problem.window_size).contiguous()  # (heads, N, N)
    if problem.height % problem.window_size[0] or problem.width % problem.window_size[1]:
        out["pad_qkv"] = problem.pad_qkv(g, dtype)
    return out


def _attend(problem: Problem, backend: str, qkv: torch.Tensor, **kwargs) -> torch.Tensor:
    return window_attention(
        qkv, problem.num_heads, problem.window_size, problem.shift_size, backend=backend, **kwargs
    )


def _as_double(inputs: dict) -> dict:
    return {k: v.detach().double() for k, v in inputs.items()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_float32_forward_matches_float64_reference(backend, case):
    _runs_here(backend)
    problem, bias = CASES[case]
    inputs = _inputs(problem, bias, torch.float32, seed=0)
    expected = _attend(problem, "reference", **_as_double(inputs))
    got = _attend(problem, backend, **inputs)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_float32_gradients_match_float64_reference(backend, case):
    _runs_here(backend)
    problem, bias = CASES[case]
    inputs = _inputs(problem, bias, torch.float32, seed=1)
    upstream = torch.randn(problem.batch, problem.height, problem.width, problem.dim, generator=seeded(2))

    def grads(name: str, leaves: dict) -> tuple[torch.Tensor, ...]:
        leaves = {k: v.detach().clone().requires_grad_() for k, v in leaves.items()}
        out = _attend(problem, name, **leaves)
        return torch.autograd.grad(out, list(leaves.values()), upstream.to(out.dtype), materialize_grads=True)

    for name, got, want in zip(inputs, grads(backend, inputs), grads("reference", _as_double(inputs))):
        torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=0, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_explicit_scale_without_bias_is_applied(backend):
    _runs_here(backend)
    problem, _ = CASES["unshifted-no-bias"]
    inputs = _inputs(problem, None, torch.float32, seed=3)
    expected = _attend(problem, "reference", scale=0.9, **_as_double(inputs))
    torch.testing.assert_close(_attend(problem, backend, scale=0.9, **inputs).double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shift", [0, 2])
def test_empty_batch_gives_an_empty_output(backend, shift):
    _runs_here(backend)
    qkv = torch.randn(0, 8, 8, 3 * 16, requires_grad=True)
    out = window_attention(qkv, 2, 4, shift, bias_table=torch.zeros(49, 2), backend=backend)
    assert out.shape == (0, 8, 8, 16)
    out.sum().backward()
    assert qkv.grad.shape == qkv.shape


# --- shifts on one axis only, in both memory layouts and both sdpa window orders --------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("memory_format", ["nhwc", "nchw"])
@given(problem=one_axis_shifts(), grouped=st.booleans())
@example(problem=Problem(1, 4, 9, 1, 2, (4, 4), (0, 2)), grouped=True)
@example(problem=Problem(1, 9, 4, 1, 2, (4, 4), (2, 0)), grouped=True)
def test_shift_on_one_axis_matches_reference_over_drawn_problems(backend, memory_format, problem, grouped):
    # `grouped` makes sdpa group the windows by shift mask (it does so for large masks) or not;
    # "nchw" passes qkv as the channels-last view of an NCHW tensor.
    _runs_here(backend)
    inputs = _inputs(problem, "table", torch.float32, seed=7)
    if memory_format == "nchw":
        inputs["qkv"] = inputs["qkv"].permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)  # (B, H, W, 3C)
    expected = _attend(problem, "reference", **_as_double(inputs))
    with mock.patch.object(sdpa, "FULL_MASK_MAX_BYTES", 0 if grouped else 1 << 40):
        got = _attend(problem, backend, **inputs)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)


# --- half precision: logits beyond the dtype's range -----------------------------------------


@pytest.mark.parametrize("backend", ("reference", *BACKENDS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_half_precision_stays_finite_when_the_logits_overflow_the_dtype(backend, dtype, grad, monkeypatch):
    # q and k of about 300 give logits of about 1e5, beyond float16's 65504, where SDPA, which
    # accumulates them in float32, is finite. A tiny logits chunk sends sdpa's inference down
    # its chunked CPU path as well.
    _runs_here(backend, dtype)
    monkeypatch.setattr(sdpa, "LOGITS_CHUNK_BYTES", 4096)
    problem = Problem(2, 8, 12, 2, 16, (4, 4), (2, 2))
    g = seeded(6)
    qkv = problem.qkv(g)
    qkv[..., : 2 * problem.dim] *= 300  # q and k
    inputs = {"qkv": qkv.to(dtype), "bias_table": problem.bias_table(g).to(dtype)}
    with torch.set_grad_enabled(grad):
        got = _attend(problem, backend, **{k: v.requires_grad_(grad) for k, v in inputs.items()})
    expected = _attend(problem, "reference", **_as_double(inputs))  # the same rounded inputs
    assert torch.isfinite(got).all()
    # the error of a float32 computation is about 1e-6; allow the rounding of the output
    torch.testing.assert_close(got.double(), expected, atol=2 * torch.finfo(dtype).eps, rtol=torch.finfo(dtype).eps)


# --- float64, for the backends that take it: tight tolerance over drawn problems -------------


def _float64_backends() -> tuple[str, ...]:
    probe = AttentionCall.build(
        torch.zeros(1, 4, 4, 12, dtype=torch.float64), num_heads=2, window_size=2, shift_size=1,
        bias_table=None, bias=None, scale=None, pad_qkv=None, dropout_p=0.0,
    )
    return tuple(name for name in BACKENDS if not any("dtype" in r for r in explain(probe)[name]))


@pytest.mark.parametrize("backend", _float64_backends())
@given(problem=problems())
@example(problem=Problem(2, 10, 17, 2, 3, (7, 7), (3, 3)))
@example(problem=Problem(1, 9, 6, 3, 5, (4, 7), (2, 3)))
@example(problem=Problem(1, 3, 2, 1, 1, (8, 8), (4, 4)))
def test_float64_forward_matches_reference_over_drawn_problems(backend, problem):
    _runs_here(backend, torch.float64)
    for bias in (None, "table", "dense"):
        inputs = _inputs(problem, bias, torch.float64, seed=4)
        call = AttentionCall.build(
            inputs["qkv"], num_heads=problem.num_heads, window_size=problem.window_size,
            shift_size=problem.shift_size, bias_table=inputs.get("bias_table"), bias=inputs.get("bias"),
            scale=None, pad_qkv=inputs.get("pad_qkv"), dropout_p=0.0,
        )
        expected = reference_window_attention(call)
        torch.testing.assert_close(_attend(problem, backend, **inputs), expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("backend", _float64_backends())
@given(problem=problems(max_batch=1))
@example(problem=Problem(1, 10, 17, 2, 3, (7, 7), (3, 3)))
@example(problem=Problem(1, 9, 6, 3, 5, (4, 7), (2, 3)))
def test_float64_gradients_match_reference_over_drawn_problems(backend, problem):
    _runs_here(backend, torch.float64)
    g = seeded(5)
    leaves = {
        "qkv": problem.qkv(g).requires_grad_(),
        "bias_table": problem.bias_table(g).requires_grad_(),
        "pad_qkv": problem.pad_qkv(g).requires_grad_(),
    }
    upstream = torch.randn(problem.batch, problem.height, problem.width, problem.dim, generator=g, dtype=torch.float64)

    def grads(name):
        out = _attend(problem, name, **leaves)
        return torch.autograd.grad(out, list(leaves.values()), upstream, materialize_grads=True)

    for name, got, want in zip(leaves, grads(backend), grads("reference")):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0, msg=lambda m, n=name: f"{n}: {m}")


# --- triton, under the interpreter ----------------------------------------------------------


def test_triton_passes_the_parity_suite_under_the_interpreter() -> None:
    assert_passes_under_interpreter(__file__, "-k", "triton and not interpreter")
