# SPDX-License-Identifier: Apache-2.0
"""Host (Python) time of one triton-backend call, forward and forward+backward.

Two modes:

* `--mock` (any machine, no GPU): the kernel launches are replaced by no-ops, so what is
  timed is everything the host does around them: argument checks, backend selection, the
  launchers, the bias-gradient reduction and autograd. CPU tensors, tiny shapes.
* default (CUDA): eager time against CUDA-graph replay time at one shape (the gap is the host
  work the GPU waits for), and a `torch.profiler` table of where the host time of one eager
  forward+backward goes.

Prints a table and writes JSON (`--json`).

    python benchmarks/triton_host.py --mock
    python benchmarks/triton_host.py --shape 8,128,128,4,8 --dtype bf16 --json host.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class _NoLaunch:
    """Stands in for a Triton kernel: `kernel[grid](*args, **meta)` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def _inputs(shape: tuple[int, ...], dtype: torch.dtype, device: str, grad: bool):
    b, size, c, heads, ws = shape
    qkv = torch.randn(b, size, size, 3 * c, device=device, dtype=dtype, requires_grad=grad)
    table = torch.randn((2 * ws - 1) ** 2, heads, device=device, dtype=dtype, requires_grad=grad)
    dout = torch.randn(b, size, size, c, device=device, dtype=dtype)
    return qkv, table, dout


def _steps(shape, qkv, table, dout):
    from winattn.functional import window_attention

    _, _, _, heads, ws = shape

    def fwd():
        return window_attention(qkv, heads, ws, ws // 2, bias_table=table, backend="triton")

    def fwd_bwd():
        out = fwd()
        torch.autograd.grad(out, (qkv, table), dout)

    return fwd, fwd_bwd


def _host_us(fn, repeat: int, inner: int) -> dict:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner * 1e6)
    return {"min_us": min(times), "median_us": statistics.median(times)}


def mock(args) -> dict:
    """Host time with the launches replaced by no-ops (CPU tensors)."""
    os.environ["TRITON_INTERPRET"] = "1"  # the backend runs CPU tensors only under the interpreter
    from winattn.backends.triton import kernels

    kernels._fwd = kernels._bwd_kernel = _NoLaunch()
    shape = (1, 16, 32, 2, 8)
    fwd, fwd_bwd = _steps(shape, *_inputs(shape, torch.float32, "cpu", True))
    with torch.no_grad():
        nograd = _host_us(fwd, args.repeat, args.inner)
    rows = {
        "fwd (no grad)": nograd,
        "fwd (grad enabled)": _host_us(fwd, args.repeat, args.inner),
        "fwd+bwd": _host_us(fwd_bwd, args.repeat, args.inner),
    }
    return {"mode": "mock", "load_average": os.getloadavg(), "rows": rows}


def cuda(args) -> dict:
    """Eager against CUDA-graph time (timed as `attention_gpu.py` times them), and the host
    profile of one eager forward+backward."""
    from attention_gpu import Shape, make_inputs, time_method, winattn_method

    shape = Shape(*(int(x) for x in args.shape.split(",")))
    inputs = make_inputs(shape, DTYPES[args.dtype], torch.device("cuda"))
    fn = winattn_method("triton", shape)
    rows = {}
    for mode in ("fwd", "fwd+bwd"):
        eager, graph = time_method(fn, inputs, mode), time_method(fn, inputs, f"{mode}-graph")
        rows[mode] = {"eager_ms": eager, "graph_ms": graph, "eager_over_graph": eager / graph}
    qkv, table = inputs["qkv"].requires_grad_(), inputs["table"].requires_grad_()
    _, fwd_bwd = _steps(tuple(int(x) for x in args.shape.split(",")), qkv, table, inputs["grad"])
    fwd_bwd()
    torch.cuda.synchronize()
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            fwd_bwd()
        torch.cuda.synchronize()
    table_text = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    return {
        "mode": "cuda", "device": torch.cuda.get_device_name(), "shape": args.shape,
        "dtype": args.dtype, "rows": rows, "profile_5_iterations": table_text,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mock", action="store_true", help="no GPU: launches replaced by no-ops")
    parser.add_argument("--shape", default="8,128,128,4,8", help="B,SIZE,C,HEADS,WINDOW (CUDA)")
    parser.add_argument("--dtype", default="bf16", choices=DTYPES)
    parser.add_argument("--repeat", type=int, default=7, help="--mock: timing rounds")
    parser.add_argument("--inner", type=int, default=200, help="--mock: calls per round")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if not args.mock and not torch.cuda.is_available():
        parser.error("no CUDA GPU here; pass --mock to time the host path with no-op launches")
    result = mock(args) if args.mock else cuda(args)
    for name, row in result["rows"].items():
        print(f"{name:20s} " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()))
    if "profile_5_iterations" in result:
        print(result["profile_5_iterations"])
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
