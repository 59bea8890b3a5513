# SPDX-License-Identifier: Apache-2.0
"""Sweeps the Triton kernels' launch parameters at one shape and prints a table (GPU only).

Forward: every (BLOCK_M, HEADS_PER_PROG, num_warps) on the raw kernel, plus the bias modes
(table, dense, none) and no shift, each with the autotuned launcher. Backward: query rows per
block, warps and programs per multiprocessor, each against the backward's traffic floor (read
qkv and dO, write dqkv, at the copy bandwidth measured here). Also the registers and spills
of every compiled variant.

    python benchmarks/tune_triton.py --shape 8,128,128,4,8 --dtype bf16
    python benchmarks/tune_triton.py --backward-only --json backward.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from winattn.backends.triton import kernels  # noqa: E402
from winattn.functional import relative_position_index  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def bench(fn) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=200, return_mode="median")


def compiled_variants(jit_fn) -> list[str]:
    """Registers and spills of every compiled variant of a @triton.jit kernel."""
    lines = []
    for caches in jit_fn.device_caches.values():
        for kernel in caches[0].values():
            kernel._init_handles()
            c = kernel.src.constants if hasattr(kernel.src, "constants") else {}
            keys = {k: v for k, v in c.items() if isinstance(k, str) and k.isupper()} if c else {}
            lines.append(
                f"{jit_fn.__name__}: regs {kernel.n_regs} spills {kernel.n_spills} "
                f"warps {kernel.metadata.num_warps} {keys}"
            )
    return lines


def launcher(pb, out, scale, block_m: int, hpp: int, nw: int):
    grid = (pb.batch * pb.windows * pb.meta["HEADS"] // hpp, pb.meta["BLOCK_N"] // block_m)

    def launch():
        kernels._fwd_kernel[grid](
            pb.qkv, pb.pad, pb.table, pb.dense, out, *pb.geometry, scale, kernels.MASK_VALUE, 0,
            **pb.meta,
            BLOCK_M=block_m, HEADS_PER_PROG=hpp, num_warps=nw, num_stages=1,
        )

    return launch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="8,128,128,4,8", help="B,SIZE,C,HEADS,WINDOW")
    parser.add_argument("--dtype", default="bf16", choices=DTYPES)
    parser.add_argument("--backward-only", action="store_true", help="skip the forward sweeps")
    parser.add_argument("--json", type=Path, help="write the backward sweep here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    b, size, c, heads, ws = map(int, args.shape.split(","))
    dtype, dev = DTYPES[args.dtype], torch.device("cuda")
    sh = ws // 2
    qkv = torch.randn(b, size, size, 3 * c, device=dev, dtype=dtype)
    table = torch.randn((2 * ws - 1) ** 2, heads, device=dev, dtype=dtype)
    n = ws * ws
    dense = table[relative_position_index(ws, dev).reshape(-1)].reshape(n, n, heads)
    dense = dense.permute(2, 0, 1).contiguous()  # (heads, N, N)
    dout = torch.randn(b, size, size, c, device=dev, dtype=dtype)
    scale = (c // heads) ** -0.5
    nbytes = 4 * b * size * size * c * qkv.element_size()
    geo = ((ws, ws), (sh, sh))
    print(f"shape B{b} {size}x{size} C{c} heads {heads} window {ws} {args.dtype}; min fwd bytes {nbytes / 1e6:.1f} MB")

    if not args.backward_only:
        forward_sweep(qkv, table, dense, heads, geo, scale, nbytes, dtype, ws)
    backward_sweep(args, qkv, table, dout, heads, geo, scale)
    for line in compiled_variants(kernels._fwd_kernel) + compiled_variants(kernels._bwd_kernel):
        print(line)


def forward_sweep(qkv, table, dense, heads, geo, scale, nbytes, dtype, ws) -> None:
    b, size = qkv.shape[0], qkv.shape[1]
    c = qkv.shape[-1] // 3

    def fwd(t=table, d=None, g=geo):
        return kernels.forward(qkv, t, d, None, heads, *g, scale)

    for name, fn in [
        ("fwd table (autotuned)", fwd),
        ("fwd dense bias", lambda: fwd(None, dense)),
        ("fwd no bias", lambda: fwd(None, None)),
        ("fwd no shift", lambda: fwd(g=((ws, ws), (0, 0)))),
    ]:
        ms = bench(fn)
        print(f"{name:28s} {ms * 1e3:8.1f} us  {nbytes / ms / 1e6:6.0f} GB/s")
    print("autotuned:", {k: str(v) for k, v in kernels._fwd.cache.items()})

    pb = kernels._problem(qkv, table, None, None, heads, *geo)
    out = torch.empty(b, size, size, c, device=qkv.device, dtype=dtype)
    rows = []
    for block_m in (32, 64):
        for hpp in (1, 2, 4):
            for nw in (2, 4, 8):
                if heads % hpp or block_m > pb.meta["BLOCK_N"]:
                    continue
                ms = bench(launcher(pb, out, scale, block_m, hpp, nw))
                rows.append((ms, block_m, hpp, nw))
    for ms, block_m, hpp, nw in sorted(rows):
        print(f"fwd BLOCK_M {block_m:3d} heads/prog {hpp} warps {nw}: {ms * 1e3:7.1f} us  {nbytes / ms / 1e6:6.0f} GB/s")



def backward_sweep(args, qkv, table, dout, heads, geo, scale) -> None:
    from attention_gpu import peak_bandwidth

    peak = peak_bandwidth(qkv.device)
    bwd_bytes = 7 * qkv.numel() // 3 * qkv.element_size()  # read qkv, dO; write dqkv
    floor_ms = bwd_bytes / peak * 1e3
    print(f"bwd traffic floor {floor_ms * 1e3:.1f} us ({bwd_bytes / 1e6:.0f} MB at {peak / 1e12:.2f} TB/s)")
    rows = []
    for block_m in (None, 32, 16):
        for warps in (4, 8):
            for per_sm in (8, 16):
                kernels.BWD_BLOCK_M, kernels.BWD_NUM_WARPS = block_m, warps
                kernels.BWD_PROGRAMS_PER_SM = per_sm
                ms = bench(lambda: kernels.backward(dout, qkv, table, None, None, heads, *geo, scale, True, False))
                ms_nb = bench(lambda: kernels.backward(dout, qkv, table, None, None, heads, *geo, scale, False, False))
                rows.append({
                    "block_m": block_m or kernels.default_block_m(kernels.block_size(geo[0][0] * geo[0][1])),
                    "warps": warps, "programs_per_sm": per_sm, "ms": ms, "ms_without_bias_grad": ms_nb,
                    "over_floor": ms / floor_ms,
                })
                r = rows[-1]
                print(
                    f"bwd BLOCK_M {r['block_m']:3d} warps {warps} programs/SM {per_sm:2d}: {ms * 1e3:7.1f} us "
                    f"({ms / floor_ms:.2f}x floor), without bias grad {ms_nb * 1e3:7.1f} us"
                )
    kernels.BWD_BLOCK_M = kernels.BWD_NUM_WARPS = None
    kernels.BWD_PROGRAMS_PER_SM = 8
    if args.json:
        args.json.write_text(json.dumps({
            "device": torch.cuda.get_device_name(), "shape": args.shape, "dtype": args.dtype,
            "floor_ms": floor_ms, "peak_copy_bandwidth_TBps": peak / 1e12, "rows": rows,
            "compiled": compiled_variants(kernels._bwd_kernel),
        }, indent=1) + "\n")


if __name__ == "__main__":
    main()
