# SPDX-License-Identifier: Apache-2.0
"""GPU benchmark of the window-attention core: from the qkv map `(B, H, W, 3C)` to the output
map `(B, H, W, C)`, shifted windows with relative position bias, forward and forward+backward.

Methods:

* `triton`: winattn's fused kernel (`backend="triton"`, bias gathered from the table);
* `triton-dense`: the same kernel reading a precomputed `(heads, N, N)` bias;
* `sdpa`: winattn's SDPA backend;
* `timm`, `timm-math`: timm 1.0's path (roll, `window_partition`, its `WindowAttention` with
  the projections replaced by identities, `window_reverse`, roll back), with its fused
  (SDPA) attention and with its plain math attention, eager;
* `timm-compiled`: the fused timm path under `torch.compile`;
* `flex-batch`: FlexAttention with windows as batch and the bias and shift mask in a
  `score_mod`;
* `flex-block`: FlexAttention over the whole windowed sequence with a block-diagonal
  `BlockMask` of 64-token blocks (plus the same `score_mod`).

Achieved bandwidth counts the minimum traffic of the forward, `4 * B*H*W*C * bytes` (read q, k,
v, write the output), and of forward+backward, `11 * B*H*W*C * bytes` (also read qkv and dO,
write dqkv), as a fraction of the device's peak measured here with a large device-to-device
copy. Maps that fit in L2 can exceed it.

Usage:
    python benchmarks/attention_gpu.py                 # default shapes, all methods
    python benchmarks/attention_gpu.py --grid          # issue grid, cheap methods only
    python benchmarks/attention_gpu.py --methods triton sdpa --dtypes bf16

Writes JSON to `benchmarks/results/attention_gpu-<device>-<date>.json` (or `--out`).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from winattn.backends.sdpa import _layout  # noqa: E402
from winattn.functional import relative_position_index, shifted_window_mask, window_attention  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
COMPILED = ("timm-compiled", "flex-batch", "flex-block")
ALL_METHODS = ("triton", "triton-dense", "sdpa", "timm", "timm-math", *COMPILED)
CHEAP_METHODS = ("triton", "sdpa", "timm")
MODES = ("fwd", "fwd+bwd", "fwd-graph", "fwd+bwd-graph")


@dataclass(frozen=True)
class Shape:
    batch: int
    size: int
    dim: int
    heads: int
    window: int

    @property
    def shift(self) -> int:
        return self.window // 2

    def __str__(self) -> str:
        return f"B{self.batch} {self.size}x{self.size} C{self.dim} h{self.heads} w{self.window}"


def _codec(dim: int) -> tuple[int, int]:
    # (heads, window) as codecs use them: 32-wide heads at 128/192 channels, 40 at 320.
    return {128: (4, 8), 192: (6, 8), 320: (8, 4)}[dim]


#: The headline shape of the issue, then a few codec shapes; every method runs here.
DEFAULT_SHAPES = [
    Shape(8, 128, 128, 4, 8),
    Shape(1, 64, 192, 6, 8),
    Shape(8, 64, 320, 8, 4),
    Shape(8, 256, 128, 4, 8),
]
#: The benchmark grid: B in {1, 8}, maps 32..256, C in {128, 192, 320} (window 8 for 128 and 192,
#: 4 for 320), and window 4 at C=128.
GRID_SHAPES = [
    Shape(b, s, c, *_codec(c))
    for b, s, c in itertools.product((1, 8), (32, 64, 128, 256), (128, 192, 320))
] + [Shape(b, s, 128, 4, 4) for b, s in itertools.product((1, 8), (32, 64, 128, 256))]


# ---------------------------------------------------------------------------------------------
# Inputs and methods


def make_inputs(shape: Shape, dtype: torch.dtype, device: torch.device) -> dict[str, Tensor]:
    b, s, c, ws = shape.batch, shape.size, shape.dim, shape.window
    gen = torch.Generator(device).manual_seed(0)
    return {
        "qkv": torch.randn(b, s, s, 3 * c, device=device, dtype=dtype, generator=gen),
        "table": torch.randn((2 * ws - 1) ** 2, shape.heads, device=device, dtype=dtype, generator=gen),
        "grad": torch.randn(b, s, s, c, device=device, dtype=dtype, generator=gen),
    }


def _dense_bias(table: Tensor, ws: int) -> Tensor:
    n = ws * ws
    index = relative_position_index(ws, table.device).reshape(-1)
    return table[index].reshape(n, n, -1).permute(2, 0, 1)  # (heads, N, N)


def winattn_method(backend: str, shape: Shape, dense: bool = False):
    def run(qkv: Tensor, table: Tensor) -> Tensor:
        bias = {"bias": _dense_bias(table, shape.window)} if dense else {"bias_table": table}
        return window_attention(qkv, shape.heads, shape.window, shape.shift, backend=backend, **bias)

    return run


def timm_method(shape: Shape, fused: bool, device: torch.device, dtype: torch.dtype, table: Tensor):
    from timm.models.swin_transformer import (
        SwinTransformerBlock,
        window_partition,
        window_reverse,
    )

    ws, s, c = shape.window, shape.size, shape.dim
    block = SwinTransformerBlock(
        c, (s, s), num_heads=shape.heads, window_size=ws, shift_size=shape.shift
    ).to(device, dtype)
    attn = block.attn
    attn.fused_attn = fused
    attn.qkv = nn.Identity()  # the core starts from the qkv map
    attn.proj = nn.Identity()
    with torch.no_grad():
        attn.relative_position_bias_table.copy_(table)  # timm reads its own parameter
    mask = block.attn_mask
    n = ws * ws

    def run(qkv: Tensor, table: Tensor) -> Tensor:
        x = torch.roll(qkv, shifts=(-shape.shift, -shape.shift), dims=(1, 2))
        windows = window_partition(x, (ws, ws)).view(-1, n, 3 * c)  # (B*nW, N, 3C)
        out = attn(windows, mask=mask)  # (B*nW, N, C)
        out = window_reverse(out.view(-1, ws, ws, c), (ws, ws), s, s)  # (B, H, W, C)
        return torch.roll(out, shifts=(shape.shift, shape.shift), dims=(1, 2))

    run.bias_leaf = attn.relative_position_bias_table  # timm's own table gets the gradient
    return run


def _flex_geometry(shape: Shape, device: torch.device):
    ws, s = shape.window, shape.size
    index = relative_position_index(ws, device)  # (N, N)
    mask = shifted_window_mask((s, s), ws, shape.shift, device)  # (nW, N, N)
    # One map, windows in row-major order (ungrouped); these maps need no padding.
    lay = _layout(1, s, s, ws, ws, shape.shift, shape.shift, False, device)
    gather, scatter = lay.gather, lay.scatter  # (nW*N,), (H*W,)
    return index, mask, gather, scatter


def flex_method(shape: Shape, device: torch.device, blocked: bool):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    flex = torch.compile(flex_attention, dynamic=False)
    ws, s, c, heads = shape.window, shape.size, shape.dim, shape.heads
    n, d = ws * ws, c // heads
    nw = (s // ws) ** 2
    index, mask, gather, scatter = _flex_geometry(shape, device)
    block_mask = None
    if blocked:
        def same_window(b, h, q, kv):
            return q // n == kv // n

        block_mask = create_block_mask(
            same_window, None, None, nw * n, nw * n, device=device, BLOCK_SIZE=64
        )

    def run(qkv: Tensor, table: Tensor) -> Tensor:
        b = qkv.shape[0]
        bias = table[index]  # (N, N, heads)
        windows = qkv.reshape(b, s * s, 3 * c)[:, gather]  # (B, nW*N, 3C)
        if blocked:
            def score_mod(score, bb, h, q, kv):
                return score + bias[q % n, kv % n, h] + mask[q // n, q % n, kv % n]

            q, k, v = windows.view(b, nw * n, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
            out = flex(q, k, v, score_mod=score_mod, block_mask=block_mask)  # (B, heads, nW*N, d)
            out = out.transpose(1, 2).reshape(b, nw * n, c)
        else:
            def score_mod(score, bb, h, q, kv):
                return score + bias[q, kv, h] + mask[bb % nw, q, kv]

            q, k, v = windows.view(b * nw, n, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
            out = flex(q, k, v, score_mod=score_mod)  # (B*nW, heads, N, d)
            out = out.transpose(1, 2).reshape(b, nw * n, c)
        return out[:, scatter].view(b, s, s, c)

    return run


def build(method: str, shape: Shape, device: torch.device, table: Tensor):
    dtype = table.dtype
    if method == "triton":
        return winattn_method("triton", shape)
    if method == "triton-dense":
        return winattn_method("triton", shape, dense=True)
    if method == "sdpa":
        return winattn_method("sdpa", shape)
    if method == "timm":
        return timm_method(shape, True, device, dtype, table)
    if method == "timm-math":
        return timm_method(shape, False, device, dtype, table)
    if method == "timm-compiled":
        eager = timm_method(shape, True, device, dtype, table)
        compiled = torch.compile(eager, dynamic=False)
        compiled.bias_leaf = eager.bias_leaf
        return compiled
    if method == "flex-batch":
        return flex_method(shape, device, blocked=False)
    if method == "flex-block":
        return flex_method(shape, device, blocked=True)
    raise ValueError(f"unknown method {method!r}; choose from {ALL_METHODS}.")


# ---------------------------------------------------------------------------------------------
# Timing


def peak_bandwidth(device: torch.device) -> float:
    """Device-to-device copy of 2 GiB, bytes read plus written per second."""
    from triton.testing import do_bench

    src = torch.empty(1 << 30, dtype=torch.float16, device=device).normal_()
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def time_method(fn, inputs: dict[str, Tensor], mode: str) -> float:
    """Median ms of one call (`fwd`) or of forward and backward (`fwd+bwd`). The `-graph`
    modes replay a CUDA graph of the same work: device time without the host's launch cost."""
    from triton.testing import do_bench

    qkv, table, grad = inputs["qkv"], inputs["table"], inputs["grad"]
    backward = mode.startswith("fwd+bwd")
    if backward:
        qkv = qkv.detach().requires_grad_()
        table = getattr(fn, "bias_leaf", None)
        table = inputs["table"].detach().requires_grad_() if table is None else table

    def step():
        if not backward:
            with torch.no_grad():
                return fn(qkv, inputs["table"])
        return torch.autograd.grad(fn(qkv, table), (qkv, table), grad)

    if mode.endswith("graph"):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        return do_bench(graph.replay, warmup=25, rep=100, return_mode="median")
    return do_bench(step, warmup=25, rep=100, return_mode="median")


def max_error(fn, ref_fn, inputs: dict[str, Tensor]) -> float:
    with torch.no_grad():
        got, ref = fn(inputs["qkv"], inputs["table"]), ref_fn(inputs["qkv"], inputs["table"])
    return (got.float() - ref.float()).abs().max().item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", action="store_true", help="the full shape grid")
    parser.add_argument(
        "--shape", action="append", default=None, metavar="B,SIZE,C,HEADS,WINDOW",
        help="a shape to run instead of the defaults (repeatable)",
    )
    parser.add_argument("--methods", nargs="+", default=None, choices=ALL_METHODS)
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=DTYPES)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("attention_gpu.py needs a CUDA GPU; see benchmarks/attention.py for the CPU.")
        return 1
    device = torch.device("cuda")
    shapes = GRID_SHAPES if args.grid else DEFAULT_SHAPES
    if args.shape:
        shapes = [Shape(*map(int, spec.split(","))) for spec in args.shape]
    methods = args.methods or (CHEAP_METHODS if args.grid else ALL_METHODS)
    peak = peak_bandwidth(device)
    name = torch.cuda.get_device_name(device)
    print(f"{name}: measured copy bandwidth {peak / 1e12:.2f} TB/s")

    rows = []
    for dtype_name, shape in itertools.product(args.dtypes, shapes):
        dtype = DTYPES[dtype_name]
        inputs = make_inputs(shape, dtype, device)
        tokens = shape.batch * shape.size * shape.size
        ref = build("sdpa", shape, device, inputs["table"])
        for method in methods:
            t0 = time.perf_counter()
            try:
                fn = build(method, shape, device, inputs["table"])
                err = max_error(fn, ref, inputs)
            except Exception as exc:  # a method that fails at a shape is recorded, not fatal
                print(f"  {dtype_name} {shape} {method}: FAILED {type(exc).__name__}: {exc}"[:300])
                rows.append({**asdict(shape), "dtype": dtype_name, "method": method, "error": repr(exc)[:500]})
                continue
            times = {}
            for mode in args.modes:
                try:
                    times[mode] = time_method(fn, inputs, mode)
                except Exception as exc:
                    print(f"  {dtype_name} {shape} {method} {mode}: FAILED {type(exc).__name__}"[:300])
                    rows.append({
                        **asdict(shape), "dtype": dtype_name, "method": method, "mode": mode,
                        "error": repr(exc)[:500],
                    })
            for mode, ms in times.items():
                words = (11 if mode.startswith("fwd+bwd") else 4) * tokens * shape.dim
                bw = words * inputs["qkv"].element_size() / (ms * 1e-3)
                rows.append({
                    **asdict(shape), "shift": shape.shift, "dtype": dtype_name, "method": method,
                    "mode": mode, "ms": ms, "bandwidth_TBps": bw / 1e12, "peak_fraction": bw / peak,
                    "max_abs_diff_vs_sdpa": err,
                })
            print(
                f"  {dtype_name} {shape} {method:14s} "
                + " ".join(f"{m} {t:.3f}" for m, t in times.items())
                + f" ms  (err {err:.2g}, {time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
        del inputs
        torch.cuda.empty_cache()

    print_table(rows, args.modes)
    out = args.out or ROOT / "benchmarks" / "results" / (
        f"attention_gpu-{name.replace(' ', '_')}-{datetime.date.today()}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    import triton

    out.write_text(json.dumps({
        "device": name,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": "python benchmarks/attention_gpu.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "peak_copy_bandwidth_TBps": peak / 1e12,
        "rows": rows,
    }, indent=1))
    print(f"wrote {out}")
    return 0


def print_table(rows: list[dict], modes: list[str]) -> None:
    """Per shape and mode: each method's time, its speedup of triton over it, triton's peak fraction."""
    ok = [r for r in rows if "ms" in r]
    keys = sorted({(r["dtype"], r["batch"], r["size"], r["dim"], r["heads"], r["window"]) for r in ok})
    for mode in modes:
        print(f"\n{mode}: ms (triton speedup over it); triton's fraction of peak bandwidth")
        for key in keys:
            sel = {
                r["method"]: r for r in ok
                if (r["dtype"], r["batch"], r["size"], r["dim"], r["heads"], r["window"]) == key
                and r["mode"] == mode
            }
            tri = sel.get("triton")
            cells = []
            for m, r in sel.items():
                ratio = f" ({r['ms'] / tri['ms']:.2f}x)" if tri and m != "triton" else ""
                cells.append(f"{m} {r['ms']:.3f}{ratio}")
            frac = f" | {tri['peak_fraction']:.0%} peak" if tri else ""
            d, b, s, c, h, w = key
            print(f"  {d} B{b} {s}x{s} C{c} h{h} w{w}: " + ", ".join(cells) + frac)


if __name__ == "__main__":
    raise SystemExit(main())
