# SPDX-License-Identifier: Apache-2.0
"""The triton backend against the reference backend: forward, qkv, bias and padding gradients.

Where to run it:

* CPU: the kernels run in Triton's interpreter, which must be chosen before they are first
  loaded: `TRITON_INTERPRET=1 python -m pytest tests/test_triton.py`.
  `tests/test_triton_interpreter.py` runs exactly that in a subprocess, so a plain `pytest`
  covers this file without putting the rest of the suite under the interpreter.
* CUDA: the same tests run on the GPU (unless `TRITON_INTERPRET=1`), plus the `gpu`-marked
  ones at full size: every dtype and window, a head dim of each kernel block size. The
  `gpu_long`-marked ones add the other head dims (`-m "gpu or gpu_long"` runs everything).
  With `WINATTN_TRITON_RECORD_OUT=path`, a CUDA run merges the configuration classes whose
  cases all passed (and drops those with a failing case) into the verification record at
  `path` (see `winattn/backends/triton/verification.py`); `benchmarks/gpu_session.sh` does this.

Tolerances (flash-attention's rule): fp32 has a fixed `atol` with `rtol=0`; fp16 and bf16 may
err against an fp32 reference at most twice as much as the reference itself run in that
dtype, plus a small `atol`.
"""

from __future__ import annotations

import itertools
import os
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from winattn.backends import AttentionCall, BackendUnavailableError, backend_reasons, select_backend
from winattn.backends.triton import verification
from winattn.functional import window_attention

FP32_ATOL = 2e-5
LOW_ATOL = {torch.bfloat16: 2e-2, torch.float16: 2e-3}
GRADS = ("qkv", "bias", "pad_qkv")


@dataclass(frozen=True)
class Case:
    window: tuple[int, int]
    shift: tuple[int, int]
    size: tuple[int, int]
    head_dim: int
    dtype: torch.dtype
    heads: int = 2
    batch: int = 1
    bias: str = "table"  # "table", "dense" or "none"
    pad: bool = True  # pass pad_qkv (else padding tokens are zeros)

    @property
    def config_class(self) -> verification.ConfigClass:
        return verification.config_class(
            self.dtype, self.head_dim, self.window, self.bias, self.shift, self.size, self.pad
        )

    def __str__(self) -> str:
        wh, ww = self.window
        h, w = self.size
        dt = str(self.dtype).removeprefix("torch.")
        return (
            f"w{wh}x{ww}-s{self.shift[0]}x{self.shift[1]}-{h}x{w}-b{self.batch}-"
            f"h{self.heads}d{self.head_dim}-{dt}-{self.bias}{'-pad' if self.pad else ''}"
        )


def _size(window: int, padded: bool) -> tuple[int, int]:
    # Two windows across; a padded map is a few tokens short of that on both axes.
    return (window + 3, 2 * window - 3) if padded else (window, 2 * window)


# The interpreter grid: windows 4, 7, 8; head dims 16, 24; shift or not; padded or
# not; fp32 and bf16 (48 cases), plus a window of 144 tokens (several query blocks per
# window), a non-square window, a batch, a dense bias, no bias and zero padding.
INTERPRETER_CASES = [
    Case((ws, ws), (ws // 2, ws // 2) if shifted else (0, 0), _size(ws, padded), d, dtype)
    for ws, d, shifted, padded, dtype in itertools.product(
        (4, 7, 8), (16, 24), (False, True), (False, True), (torch.float32, torch.bfloat16)
    )
] + [
    Case((12, 12), (6, 6), (13, 12), 16, torch.float32),
    Case((4, 8), (1, 5), (6, 13), 24, torch.bfloat16, batch=2),
    Case((7, 7), (3, 3), (9, 11), 16, torch.float32, bias="dense"),
    Case((7, 7), (0, 3), (9, 11), 16, torch.float32, bias="none", pad=False),
]

# Full size on the GPU: every dtype and window (square or not), head dims 8 to 128. The
# `gpu` set has a head dim of each kernel block size (16, 32, 64, 128); `gpu_long` the rest.
GPU_CASES = [
    Case((ws, wsw), (ws // 2, wsw // 2), (37, 45), d, dtype, heads=3, batch=2)
    for (ws, wsw), d in zip(
        [(4, 4), (7, 7), (8, 8), (12, 12), (16, 16), (8, 4), (7, 12)],
        (24, 40, 48, 32, 64, 16, 8),
    )
    for dtype in (torch.float32, torch.float16, torch.bfloat16)
] + [
    Case((8, 8), (4, 4), (64, 64), d, torch.bfloat16, heads=4, batch=4) for d in (16, 24, 48, 128)
] + [Case((8, 8), (0, 0), (64, 64), 32, torch.float16, heads=4, batch=8, bias="dense")]
GPU_LONG_CASES = [
    Case((8, 8), (4, 4), (64, 64), d, torch.bfloat16, heads=4, batch=4) for d in (8, 40, 64, 96)
]


@pytest.fixture(scope="module")
def device() -> torch.device:
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") == "1":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    pytest.skip(
        "needs a CUDA GPU or TRITON_INTERPRET=1 (tests/test_triton_interpreter.py runs this "
        "file under the interpreter)"
    )


@pytest.fixture(scope="module")
def cuda(device: torch.device) -> torch.device:
    if device.type != "cuda":
        pytest.skip("needs a CUDA GPU")
    return device


def _inputs(case: Case, device: torch.device) -> dict[str, torch.Tensor]:
    """fp32 inputs on `device`; the bias table is scaled like a trained one (std 1)."""
    gen = torch.Generator().manual_seed(zlib.crc32(str(case).encode()))
    b, (h, w), c = case.batch, case.size, case.heads * case.head_dim
    n = case.window[0] * case.window[1]
    rows = (2 * case.window[0] - 1) * (2 * case.window[1] - 1)
    t = {
        "qkv": torch.randn(b, h, w, 3 * c, generator=gen),
        "grad": torch.randn(b, h, w, c, generator=gen),
    }
    if case.bias == "table":
        t["bias"] = torch.randn(rows, case.heads, generator=gen)
    if case.bias == "dense":
        t["bias"] = torch.randn(case.heads, n, n, generator=gen)
    if case.pad:
        t["pad_qkv"] = torch.randn(3 * c, generator=gen)
    return {k: v.to(device) for k, v in t.items()}


def _run(case: Case, inputs: dict[str, torch.Tensor], dtype: torch.dtype, backend: str):
    """Output and gradients of `window_attention` on `inputs` cast to `dtype`."""
    leaves = {k: v.to(dtype).requires_grad_() for k, v in inputs.items() if k != "grad"}
    bias_kw = {"bias_table" if case.bias == "table" else "bias": leaves["bias"]} if "bias" in leaves else {}
    out = window_attention(
        leaves["qkv"],
        case.heads,
        case.window,
        case.shift,
        pad_qkv=leaves.get("pad_qkv"),
        backend=backend,
        **bias_kw,
    )
    names = [k for k in GRADS if k in leaves]
    grads = torch.autograd.grad(
        out, [leaves[k] for k in names], inputs["grad"].to(dtype), materialize_grads=True
    )
    return {"out": out.detach(), **dict(zip(names, grads))}


_RESULTS: dict[tuple[Case, str], tuple[dict, dict, dict]] = {}
# Outcomes for the verification record: case -> {"forward" or "gradients": passed}.
_OUTCOMES: dict[Case, dict[str, bool]] = {}
RECORD_ENV = "WINATTN_TRITON_RECORD_OUT"


def results(case: Case, device: torch.device) -> tuple[dict, dict, dict]:
    """(triton, reference in fp32, reference in the case's dtype), computed once per case."""
    key = (case, device.type)
    if key not in _RESULTS:
        inputs = _inputs(case, device)
        _RESULTS[key] = (
            _run(case, inputs, case.dtype, "triton"),
            _run(case, inputs, torch.float32, "reference"),
            _run(case, inputs, case.dtype, "reference"),
        )
    return _RESULTS[key]


def assert_matches_reference(case: Case, device: torch.device, names: tuple[str, ...]) -> None:
    part = "forward" if names == ("out",) else "gradients"
    try:
        _assert_matches_reference(case, device, names)
    except BaseException:
        _OUTCOMES.setdefault(case, {})[part] = False
        raise
    _OUTCOMES.setdefault(case, {})[part] = True


def _assert_matches_reference(case: Case, device: torch.device, names: tuple[str, ...]) -> None:
    got, ref, ref_low = results(case, device)
    for name in names:
        if name not in ref:
            continue
        assert got[name].shape == ref[name].shape, name
        assert got[name].dtype == ref_low[name].dtype, name
        err = (got[name].float() - ref[name]).abs().max().item()
        if case.dtype == torch.float32:
            bound = FP32_ATOL * max(1.0, ref[name].abs().max().item())
        else:
            ref_err = (ref_low[name].float() - ref[name]).abs().max().item()
            bound = 2 * ref_err + LOW_ATOL[case.dtype]
        assert err <= bound, f"{name}: max error {err:.3g} > {bound:.3g}"


@pytest.fixture(scope="module", autouse=True)
def verification_record():
    """After the module, with `$WINATTN_TRITON_RECORD_OUT` set, writes its outcomes next to the
    record (one part per pytest-xdist worker) and, outside xdist, merges them into it: a class
    is verified when each of its cases passed forward and gradients, dropped when one failed.
    Under the interpreter the device class is "interpreter" (which auto never uses)."""
    yield
    out = os.environ.get(RECORD_ENV)
    if not out or not _OUTCOMES:
        return
    import triton

    on_gpu = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    verification.write_part(
        Path(out),
        worker or "main",
        device=verification.device_class(torch.device("cuda")) if on_gpu else "interpreter",
        passed=[c.config_class for c, o in _OUTCOMES.items() if o == {"forward": True, "gradients": True}],
        failed=[c.config_class for c, o in _OUTCOMES.items() if False in o.values()],
        run={
            "device": torch.cuda.get_device_name() if on_gpu else "Triton interpreter (CPU)",
            "torch": torch.__version__,
            "triton": triton.__version__,
            "command": " ".join(["pytest", *sys.argv[1:]]),
        },
    )
    if worker is None:
        verification.merge_parts(Path(out))


@pytest.mark.parametrize("case", INTERPRETER_CASES, ids=str)
def test_forward_matches_reference(case: Case, device: torch.device) -> None:
    assert_matches_reference(case, device, ("out",))


@pytest.mark.parametrize("case", INTERPRETER_CASES, ids=str)
def test_gradients_match_reference(case: Case, device: torch.device) -> None:
    assert_matches_reference(case, device, GRADS)


def test_bias_and_padding_gradients_are_bitwise_reproducible(device: torch.device) -> None:
    case = Case((7, 7), (3, 3), (9, 11), 16, torch.float32, batch=2)
    inputs = _inputs(case, device)
    first = _run(case, inputs, case.dtype, "triton")
    second = _run(case, inputs, case.dtype, "triton")
    for name in ("bias", "pad_qkv"):
        assert torch.equal(first[name], second[name]), name


def test_custom_ops_have_consistent_fake_implementations(device: torch.device) -> None:
    from winattn.backends.triton import ops

    case = Case((4, 4), (2, 2), (5, 6), 16, torch.float32)
    t = _inputs(case, device)
    geometry = (case.heads, *case.window, *case.shift, 0.25)
    checks = ("test_schema", "test_faketensor")
    torch.library.opcheck(
        ops.window_attention_op, (t["qkv"], t["bias"], None, t["pad_qkv"], *geometry), test_utils=checks
    )
    torch.library.opcheck(
        ops.window_attention_backward_op,
        (t["grad"], t["qkv"], t["bias"], None, t["pad_qkv"], *geometry, True, True),
        test_utils=checks,
    )


def test_compiled_call_matches_eager(device: torch.device) -> None:
    case = Case((4, 4), (2, 2), (5, 6), 16, torch.float32)
    t = _inputs(case, device)

    def attend(qkv, table, pad):
        return window_attention(qkv, 2, 4, 2, bias_table=table, pad_qkv=pad, backend="triton")

    compiled = torch.compile(attend, backend="aot_eager", fullgraph=True)
    args = (t["qkv"].requires_grad_(), t["bias"].requires_grad_(), t["pad_qkv"].requires_grad_())
    eager_out = attend(*args)
    compiled_out = compiled(*args)
    assert torch.equal(compiled_out, eager_out)
    eager_grads = torch.autograd.grad(eager_out, args, t["grad"])
    compiled_grads = torch.autograd.grad(compiled_out, args, t["grad"])
    for a, b in zip(eager_grads, compiled_grads):
        assert torch.equal(a, b)


def _call(device: torch.device, **kwargs) -> AttentionCall:
    qkv = torch.randn(1, 4, 4, 3 * 32, device=device)
    defaults = dict(
        num_heads=2, window_size=4, shift_size=0, bias_table=None, bias=None, scale=None,
        pad_qkv=None, dropout_p=0.0,
    )
    return AttentionCall.build(qkv, **{**defaults, **kwargs})


def test_dropout_is_reported_as_not_supported(device: torch.device) -> None:
    reasons = backend_reasons(_call(device, dropout_p=0.1))["triton"]
    assert any("dropout_p=0.1" in r for r in reasons)


def test_cpu_call_without_interpreter_raises_with_the_fix(
    device: torch.device, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    qkv = torch.randn(1, 4, 4, 3 * 32)
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
        window_attention(qkv, 2, 4, backend="triton")


def test_auto_selection_skips_triton_on_cpu(device: torch.device) -> None:
    assert select_backend(_call(torch.device("cpu"))).name != "triton"


def _class_call(cls: verification.ConfigClass, device: torch.device) -> AttentionCall:
    """A call of configuration class `cls`."""
    (wh, ww), heads = cls.window, 2
    padded = cls.padding != "none"
    c3 = 3 * heads * cls.head_dim_block
    dtype = getattr(torch, cls.dtype)
    n = wh * ww
    bias = {
        "table": dict(bias_table=torch.zeros((2 * wh - 1) * (2 * ww - 1), heads, dtype=dtype, device=device)),
        "dense": dict(bias=torch.zeros(heads, n, n, dtype=dtype, device=device)),
        "none": {},
    }[cls.bias]
    qkv = torch.randn(1, 2 * wh + padded, 2 * ww + padded, c3, dtype=dtype, device=device)
    pad = torch.zeros(c3, dtype=dtype, device=device) if cls.padding == "pad_qkv" else None
    shift = (wh // 2, ww // 2) if cls.shifted else 0
    kwargs = {"bias_table": None, "bias": None, **bias, "scale": None, "pad_qkv": pad, "dropout_p": 0.0}
    return AttentionCall.build(qkv, num_heads=heads, window_size=cls.window, shift_size=shift, **kwargs)


@pytest.mark.gpu
def test_auto_selection_picks_triton_for_every_verified_class_on_cuda(cuda: torch.device) -> None:
    classes = verification.verified_classes().get(verification.device_class(cuda))
    if not classes:
        pytest.skip(f"no configuration class is verified on {verification.device_class(cuda)}")
    for cls in sorted(classes):
        call = _class_call(cls, cuda)
        assert verification.call_class(call) == cls
        assert select_backend(call, "auto").name == "triton", str(cls)


@pytest.mark.gpu
def test_auto_selection_passes_over_triton_for_an_unverified_class_on_cuda(cuda: torch.device) -> None:
    cls = verification.ConfigClass("float32", 16, (5, 3), "none", False, "zeros")
    assert cls not in verification.verified_classes().get(verification.device_class(cuda), ())
    assert select_backend(_class_call(cls, cuda), "auto").name != "triton"


def _full_size(cases: list[Case], long: list[Case]) -> list:
    return [*cases, *(pytest.param(c, marks=pytest.mark.gpu_long) for c in long)]


@pytest.mark.gpu
@pytest.mark.parametrize("case", _full_size(GPU_CASES, GPU_LONG_CASES), ids=str)
def test_full_size_forward_matches_reference_on_gpu(case: Case, cuda: torch.device) -> None:
    assert_matches_reference(case, cuda, ("out",))


@pytest.mark.gpu
@pytest.mark.parametrize("case", _full_size(GPU_CASES, GPU_LONG_CASES), ids=str)
def test_full_size_gradients_match_reference_on_gpu(case: Case, cuda: torch.device) -> None:
    assert_matches_reference(case, cuda, GRADS)


def test_backward_with_smaller_query_blocks_matches_reference(
    device: torch.device, monkeypatch: pytest.MonkeyPatch
) -> None:
    from winattn.backends.triton import kernels

    case = Case((8, 8), (4, 4), (11, 13), 24, torch.float32, batch=2)
    inputs = _inputs(case, device)
    ref = _run(case, inputs, torch.float32, "reference")
    monkeypatch.setattr(kernels, "BWD_BLOCK_M", 16)
    first = _run(case, inputs, case.dtype, "triton")
    second = _run(case, inputs, case.dtype, "triton")
    for name in GRADS:
        bound = FP32_ATOL * max(1.0, ref[name].abs().max().item())
        assert (first[name] - ref[name]).abs().max().item() <= bound, name
    for name in ("bias", "pad_qkv"):
        assert torch.equal(first[name], second[name]), name
