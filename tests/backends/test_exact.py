# SPDX-License-Identifier: Apache-2.0
"""Tests of the exact backend: fixed-point window attention, within its documented error of
the reference and bit-identical across instruction sets, thread counts and batchings."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import example, given

from tests.backends.exact_env import ChannelContext
from tests.strategies import Problem, problems, seeded
from winattn.backends import AttentionCall, BackendUnavailableError, exact, explain, select_backend
from winattn.backends.exact import error_bound, exact_window_attention, exp_tables
from winattn.backends.reference import reference_window_attention
from winattn.functional import window_attention
from winattn.geometry import dense_bias

REPO = Path(__file__).resolve().parents[2]

#: Shapes that take every path: padding, shifts on both and on one axis, rectangular and 7x7
#: windows, a bias table, a dense bias, the padding token's qkv.
CASES = {
    "unshifted-no-bias": (Problem(2, 8, 8, 2, 4, (4, 4), (0, 0)), None),
    "unshifted-table-padded": (Problem(1, 6, 7, 2, 16, (4, 4), (0, 0)), "table"),
    "shifted-table-padded": (Problem(2, 9, 6, 2, 8, (4, 4), (2, 2)), "table"),
    "shifted-dense-7x7": (Problem(1, 10, 9, 3, 32, (7, 7), (3, 3)), "dense"),
    "shifted-one-axis-rect": (Problem(1, 7, 11, 2, 5, (4, 7), (2, 0)), "table"),
    "shifted-other-axis": (Problem(1, 8, 8, 1, 8, (4, 4), (0, 1)), None),
}


def _call(problem: Problem, bias: str | None, dtype: torch.dtype, seed: int = 0) -> AttentionCall:
    g = seeded(seed)
    qkv = problem.qkv(g, dtype)
    table = problem.bias_table(g, dtype)
    padded = problem.height % problem.window_size[0] or problem.width % problem.window_size[1]
    return AttentionCall.build(
        qkv, num_heads=problem.num_heads, window_size=problem.window_size,
        shift_size=problem.shift_size,
        bias_table=table if bias == "table" else None,
        bias=dense_bias(table, problem.window_size) if bias == "dense" else None,
        scale=None, pad_qkv=problem.pad_qkv(g, dtype) if padded else None, dropout_p=0.0,
    )


def _as_float64(call: AttentionCall) -> AttentionCall:
    def up(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.double()

    return AttentionCall(
        up(call.qkv), call.num_heads, call.window_size, call.shift_size, up(call.bias_table),
        up(call.bias), call.scale, up(call.pad_qkv), 0.0,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CASES)
def test_matches_reference_within_the_quantisation_bound(case, dtype):
    call = _call(*CASES[case], dtype)
    exact = exact_window_attention(call)
    reference = reference_window_attention(_as_float64(call))  # the same inputs, float64
    # error_bound covers the fixed point; the final cast to dtype adds half a unit in the
    # last place (eps * |ref| allows twice that).
    tolerance = error_bound(_as_float64(call)) + torch.finfo(dtype).eps * reference.abs()
    assert exact.dtype == dtype
    assert ((exact.double() - reference).abs() <= tolerance).all()


@given(problem=problems())
@example(problem=Problem(2, 10, 17, 2, 3, (7, 7), (3, 3)))
@example(problem=Problem(1, 9, 6, 3, 5, (4, 7), (2, 3)))
def test_matches_reference_within_the_bound_over_drawn_problems(problem):
    for bias in (None, "table", "dense"):
        call = _call(problem, bias, torch.float32, seed=3)
        reference = reference_window_attention(_as_float64(call))
        tolerance = error_bound(_as_float64(call)) + torch.finfo(torch.float32).eps * reference.abs()
        assert ((exact_window_attention(call).double() - reference).abs() <= tolerance).all()


def test_error_bound_is_small_for_codec_sized_inputs():
    call = _call(*CASES["shifted-dense-7x7"], torch.float32)
    assert error_bound(call) < 1e-3


def test_saturates_outside_the_documented_range():
    qkv = torch.zeros(1, 2, 2, 3 * 4)
    qkv[..., 8:] = 1e6  # v far beyond V_RANGE = 4096
    out = window_attention(qkv, 1, 2, backend="exact")
    assert torch.equal(out, torch.full_like(out, 4096.0))


def test_nan_inputs_count_as_zero():
    qkv = torch.randn(1, 4, 4, 12)
    zeroed = qkv.clone()
    qkv[0, 1, 2, 5], zeroed[0, 1, 2, 5] = float("nan"), 0.0
    assert torch.equal(window_attention(qkv, 1, 2, backend="exact"), window_attention(zeroed, 1, 2, backend="exact"))


def test_a_window_gives_the_same_bits_alone_and_inside_a_batch_and_map():
    call = _call(Problem(3, 8, 12, 2, 8, (4, 4), (0, 0)), "table", torch.float32)
    whole = window_attention(call.qkv, 2, 4, bias_table=call.bias_table, backend="exact")
    image = window_attention(call.qkv[1:2], 2, 4, bias_table=call.bias_table, backend="exact")
    window = window_attention(
        call.qkv[1:2, 4:8, 8:12], 2, 4, bias_table=call.bias_table, backend="exact"
    )
    assert torch.equal(image, whole[1:2])
    assert torch.equal(window, whole[1:2, 4:8, 8:12])


def test_elementwise_integer_matmul_of_other_devices_gives_the_cpu_matmul_bits(monkeypatch):
    call = _call(*CASES["shifted-dense-7x7"], torch.float32)
    cpu = exact_window_attention(call)
    monkeypatch.setattr(exact, "int_matmul", functools.partial(exact.int_matmul, elementwise=True))
    assert torch.equal(exact_window_attention(call), cpu)


def test_exp_tables_are_the_same_integers_everywhere():
    """The tables are part of the format: a change would change every decoded bit."""
    hi, lo, log2e = exp_tables()
    assert (hi[0].item(), hi[512].item(), lo[0].item(), lo[1023].item()) == (
        1 << 30, 759250125, 1 << 30, 1073015962,
    )
    assert (int(hi.sum()), int(lo.sum()), log2e) == (793398452139, 1099139944440, 1549082005)


@pytest.fixture(scope="module")
def environment_outputs(tmp_path_factory) -> dict[str, dict[str, torch.Tensor]]:
    """`tests.backends.exact_env` run under different instruction sets and thread counts
    (native: `ATEN_CPU_CAPABILITY` unset, the best the CPU has)."""
    runs = {
        "isa-native,1-thread": ({}, 1),
        "isa-default,1-thread": ({"ATEN_CPU_CAPABILITY": "default"}, 1),
        "isa-native,2-threads": ({}, 2),
    }
    outputs = {}
    for name, (extra, threads) in runs.items():
        path = tmp_path_factory.mktemp("exact") / "out.pt"
        env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
        env.update(extra, PYTHONPATH=str(REPO))
        subprocess.run(
            [sys.executable, "-m", "tests.backends.exact_env", str(path), str(threads)],
            check=True, cwd=REPO, env=env, timeout=120,
        )
        outputs[name] = torch.load(path)
    return outputs


def test_the_environments_differ_as_asked(environment_outputs):
    settings = {name: (out["capability"], out["threads"]) for name, out in environment_outputs.items()}
    assert settings["isa-default,1-thread"] == ("DEFAULT", 1)
    assert settings["isa-native,2-threads"][1] == 2


@pytest.mark.parametrize("what", ["attention", "model"])
def test_bits_are_identical_across_instruction_sets_and_thread_counts(environment_outputs, what):
    first, *others = environment_outputs.values()
    for other in others:
        assert torch.equal(first[what], other[what])


def test_channel_context_model_runs_exact_attention():
    model = ChannelContext()
    y_hat = torch.randint(-8, 9, (1, 8, 5, 6)).double()
    with torch.no_grad():
        means, scales = model(y_hat)
    assert means.shape == scales.shape == (1, 8, 5, 6)
    assert model.attn.backend == "exact"


def test_refuses_inputs_that_require_grad():
    qkv = torch.randn(1, 4, 4, 12, requires_grad=True)
    with pytest.raises(BackendUnavailableError, match="inference backend and computes no gradients"):
        window_attention(qkv, 1, 2, backend="exact")


def test_refuses_dropout():
    with pytest.raises(BackendUnavailableError, match="no attention dropout"):
        window_attention(torch.randn(1, 4, 4, 12), 1, 2, dropout_p=0.1, backend="exact")


def test_refuses_cosine_attention():
    with pytest.raises(BackendUnavailableError, match="cosine attention"):
        window_attention(torch.randn(1, 4, 4, 12), 1, 2, logit_scale=torch.zeros(1), backend="exact")


def test_refuses_head_dims_whose_logits_could_overflow():
    with pytest.raises(BackendUnavailableError, match="head_dim <= 256"):
        window_attention(torch.randn(1, 2, 2, 3 * 512), 1, 2, backend="exact")


def test_auto_never_picks_exact():
    call = AttentionCall.build(
        torch.zeros(1, 4, 4, 12), num_heads=1, window_size=2, shift_size=1,
        bias_table=None, bias=None, scale=None, pad_qkv=None, dropout_p=0.0,
    )
    assert select_backend(call, "auto").name != "exact"
    assert all(r.startswith("not picked by auto: ") for r in explain(call)["exact"])
    assert explain(call)["exact"]
