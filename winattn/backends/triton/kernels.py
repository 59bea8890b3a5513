# SPDX-License-Identifier: Apache-2.0
"""Fused window-attention kernels (Triton) and their launchers.

Read top to bottom: configurations, the shared index arithmetic, the forward kernel, the
backward kernel, then the launchers that allocate outputs and pick grids.

One program handles one head of one window (forward) or one head of a fixed, strided set of
windows (backward). The program finds its tokens in the qkv projection's output by index
arithmetic, so the padding, the cyclic shift and the window partition cost no copies:

* slot `t` of window `(wr, wc)` sits at `(r, c) = (wr * Wh + t // Ww, wc * Ww + t % Ww)` of the
  shifted, padded map;
* that slot holds the map token `((r + sh) % Hp, (c + sw) % Wp)`, or a padding token when
  that position is outside `(H, W)` (its q, k, v are `pad_qkv`'s);
* the shift mask compares band ids computed from `(r, c)`, the relative position bias is
  gathered from the table with the offset between two slots.

Windows of `N` tokens are handled as `BLOCK_N = next_pow2(N)` slots with the extra slots
masked out (keys at -inf, rows never stored), and the head dim likewise as `BLOCK_D`.

This module imports Triton; `winattn.backends.triton` imports it only on first use. Whether
the kernels run in Triton's interpreter is decided when this module is imported
(`TRITON_INTERPRET=1`), as Triton decides it when a kernel is decorated.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from winattn.geometry import MASK_VALUE

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

#: `WINATTN_TRITON_CONFIGS=few` autotunes the forward over two configurations instead of the
#: full list (read when this module is imported): the GPU test run uses it to stay short.
CONFIGS_ENV = "WINATTN_TRITON_CONFIGS"

# Bias modes of the kernels (constexpr): no bias, gathered from the table, dense (heads, N, N).
NO_BIAS, TABLE_BIAS, DENSE_BIAS = 0, 1, 2

# Triton's interpreter multiplies bf16 operands of tl.dot as their raw 16-bit integers
# (triton 3.8); upcasting first gives what the tensor cores compute (exact products, fp32 sums).
_UPCAST_DOT = tl.constexpr(INTERPRET)


# ---------------------------------------------------------------------------------------------
# Configurations


def _fwd_configs() -> list[triton.Config]:
    few = os.environ.get(CONFIGS_ENV, "all") == "few"
    return [
        triton.Config({"BLOCK_M": bm, "HEADS_PER_PROG": hp}, num_warps=nw, num_stages=1)
        for bm in ((32, 64) if few else (16, 32, 64, 128))
        for nw in ((4,) if few else (2, 4, 8))
        for hp in ((1,) if few else (1, 2))
    ]


def keep(config: triton.Config) -> bool:
    """Drops configurations that are never worth timing: more warps than rows to give them,
    several heads per program with blocks that already fill the program."""
    block_m, heads = config.kwargs["BLOCK_M"], config.kwargs["HEADS_PER_PROG"]
    return block_m >= 4 * config.num_warps and (heads == 1 or block_m <= 64)


def _prune_by_shape(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    # Query blocks no larger than the padded window, and at most 128 fp32 logits per thread.
    block_n = kwargs.get("BLOCK_N", named_args.get("BLOCK_N"))
    heads = kwargs.get("HEADS", named_args.get("HEADS"))
    kept = [
        c
        for c in configs
        if c.kwargs["BLOCK_M"] <= block_n
        and c.kwargs["BLOCK_M"] * block_n <= 128 * 32 * c.num_warps
        and heads % c.kwargs["HEADS_PER_PROG"] == 0
    ]
    return kept or [min(configs, key=lambda c: (c.kwargs["BLOCK_M"], c.kwargs["HEADS_PER_PROG"]))]


def default_block_m(block_n: int) -> int:
    """Query rows per program when not autotuning (interpreter, backward)."""
    return min(block_n, 64)


def block_size(n: int) -> int:
    """Padded extent of a window or head axis: the next power of two, at least 16 (tl.dot)."""
    return max(16, triton.next_power_of_2(n))


# ---------------------------------------------------------------------------------------------
# Index arithmetic shared by the kernels


@triton.jit
def _dot(a, b, DOT_PRECISION: tl.constexpr):
    if _UPCAST_DOT:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=DOT_PRECISION)


@triton.jit
def _slots(
    offs, win_r, win_c, H, W, Hp, Wp, sh, sw,
    WH: tl.constexpr, WW: tl.constexpr, SHIFTED: tl.constexpr,
):
    """Where the window slots `offs` of window `(win_r, win_c)` come from.

    Returns `(i, j, valid, inside, is_pad, token, region)`: the slot's row and column in the
    window, whether it is a real slot (`< N`), whether it holds a map token or a padding
    token, the map token's flat index `row * W + col`, and its shift-mask band id.
    """
    i = offs // WW
    j = offs % WW
    valid = offs < WH * WW
    r = win_r * WH + i
    c = win_c * WW + j
    src_r = (r + sh) % Hp
    src_c = (c + sw) % Wp
    inside = valid & (src_r < H) & (src_c < W)
    is_pad = valid & ((src_r >= H) | (src_c >= W))
    token = src_r * W + src_c
    if SHIFTED:
        # Swin's three bands per axis on the shifted map: [0, L-w), [L-w, L-s), [L-s, L).
        band_r = ((r >= Hp - WH) & (sh > 0)).to(tl.int32) + ((r >= Hp - sh) & (sh > 0)).to(tl.int32)
        band_c = ((c >= Wp - WW) & (sw > 0)).to(tl.int32) + ((c >= Wp - sw) & (sw > 0)).to(tl.int32)
        region = band_r * 3 + band_c
    else:
        region = offs * 0
    return i, j, valid, inside, is_pad, token, region


@triton.jit
def _load_part(
    base, PAD, token, inside, is_pad, offs_d, head,
    PART: tl.constexpr, HEADS: tl.constexpr, D: tl.constexpr,
):
    """q, k or v (`PART` 0, 1, 2) of one head for a set of slots: `(slots, BLOCK_D)`."""
    C: tl.constexpr = HEADS * D
    d_ok = offs_d < D
    col = PART * C + head * D + offs_d
    x = tl.load(base + token[:, None] * (3 * C) + col[None, :], mask=inside[:, None] & d_ok[None, :], other=0.0)
    if PAD is not None:  # else padding tokens are zeros
        pad = tl.load(PAD + col, mask=d_ok, other=0.0)
        x = tl.where(is_pad[:, None], pad[None, :], x)
    return x


@triton.jit
def _logits(
    q, k, TABLE, BIAS, head, scale, mask_value,
    offs_m, i_q, j_q, valid_q, region_q, offs_n, i_k, j_k, valid_k, region_k,
    HEADS: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr,
    BIAS_MODE: tl.constexpr, SHIFTED: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Logits `(q * scale) k^T + bias + shift mask` in fp32, `-inf` at slots past N. Pairs
    in different shift bands get `mask_value` (the library's `MASK_VALUE`)."""
    s = _dot(q, tl.trans(k), DOT_PRECISION) * scale
    pair_ok = valid_q[:, None] & valid_k[None, :]
    if BIAS_MODE == 1:
        # Row of the table: (i_q - i_k + Wh - 1) * (2Ww - 1) + (j_q - j_k + Ww - 1).
        row_q = i_q * (2 * WW - 1) + j_q + (WH - 1) * (2 * WW - 1) + WW - 1
        row_k = i_k * (2 * WW - 1) + j_k
        rel = row_q[:, None] - row_k[None, :]
        bias = tl.load(TABLE + rel * HEADS + head, mask=pair_ok, other=0.0)
        s += bias.to(q.dtype).to(tl.float32)
    if BIAS_MODE == 2:
        n: tl.constexpr = WH * WW
        bias = tl.load(BIAS + head * n * n + offs_m[:, None] * n + offs_n[None, :], mask=pair_ok, other=0.0)
        s += bias.to(q.dtype).to(tl.float32)
    if SHIFTED:
        s += tl.where(region_q[:, None] != region_k[None, :], mask_value, 0.0)
    return tl.where(valid_k[None, :], s, float("-inf"))


@triton.jit
def _softmax(s):
    m = tl.max(s, 1)
    p = tl.exp2((s - m[:, None]) * 1.4426950408889634)
    return p / tl.sum(p, 1)[:, None]


# ---------------------------------------------------------------------------------------------
# Forward


@triton.jit
def _fwd_kernel(
    QKV, PAD, TABLE, BIAS, OUT,
    H, W, Hp, Wp, sh, sw, n_win_w, n_win, scale, mask_value, size_class,
    HEADS: tl.constexpr, D: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr,
    BIAS_MODE: tl.constexpr, SHIFTED: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
    HEADS_PER_PROG: tl.constexpr,
):
    C: tl.constexpr = HEADS * D
    GROUPS: tl.constexpr = HEADS // HEADS_PER_PROG
    pid = tl.program_id(0)
    head0 = (pid % GROUPS) * HEADS_PER_PROG
    window = pid // GROUPS
    b = window // n_win
    win_r = (window % n_win) // n_win_w
    win_c = window % n_win_w
    base = QKV + b.to(tl.int64) * H * W * 3 * C
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    i_k, j_k, valid_k, inside_k, pad_k, token_k, region_k = _slots(
        offs_n, win_r, win_c, H, W, Hp, Wp, sh, sw, WH, WW, SHIFTED
    )
    i_q, j_q, valid_q, inside_q, pad_q, token_q, region_q = _slots(
        offs_m, win_r, win_c, H, W, Hp, Wp, sh, sw, WH, WW, SHIFTED
    )
    out = OUT + b.to(tl.int64) * H * W * C + token_q[:, None] * C + offs_d[None, :]
    out_mask = inside_q[:, None] & (offs_d < D)[None, :]

    for hh in tl.static_range(HEADS_PER_PROG):
        head = head0 + hh
        k = _load_part(base, PAD, token_k, inside_k, pad_k, offs_d, head, 1, HEADS, D)
        v = _load_part(base, PAD, token_k, inside_k, pad_k, offs_d, head, 2, HEADS, D)
        q = _load_part(base, PAD, token_q, inside_q, pad_q, offs_d, head, 0, HEADS, D)
        s = _logits(
            q, k, TABLE, BIAS, head, scale, mask_value,
            offs_m, i_q, j_q, valid_q, region_q, offs_n, i_k, j_k, valid_k, region_k,
            HEADS, WH, WW, BIAS_MODE, SHIFTED, DOT_PRECISION,
        )
        p = _softmax(s)
        o = _dot(p.to(v.dtype), v, DOT_PRECISION)
        tl.store(out + head * D, o.to(OUT.dtype.element_ty), mask=out_mask)

if INTERPRET:
    _fwd = _fwd_kernel
else:
    _fwd = triton.autotune(
        configs=list(filter(keep, _fwd_configs())),
        # size_class (log2 of the windows in the batch) retunes when the problem size changes
        # by 2x; without it a config tuned on a tiny map was reused on large ones.
        key=["HEADS", "D", "WH", "WW", "BIAS_MODE", "SHIFTED", "size_class"],
        prune_configs_by={"early_config_prune": _prune_by_shape},
    )(_fwd_kernel)


# ---------------------------------------------------------------------------------------------
# Backward


@triton.jit
def _store_grad(
    dbase, grad, dpad, token, inside, is_pad, offs_d, head,
    PART: tl.constexpr, HEADS: tl.constexpr, D: tl.constexpr, PAD_GRAD: tl.constexpr,
):
    """Stores the k or v (`PART` 1, 2) gradient of one head, `(BLOCK_N, BLOCK_D)` fp32, at its
    map tokens; returns `dpad` plus its padding slots' sum when `PAD_GRAD`."""
    C: tl.constexpr = HEADS * D
    d_ok = offs_d < D
    ptrs = dbase + token[:, None] * (3 * C) + PART * C + head * D + offs_d[None, :]
    tl.store(ptrs, grad.to(dbase.dtype.element_ty), mask=inside[:, None] & d_ok[None, :])
    if PAD_GRAD:
        dpad += tl.sum(tl.where(is_pad[:, None], grad, 0.0), 0)
    return dpad


@triton.jit
def _bwd_kernel(
    QKV, PAD, TABLE, BIAS, DOUT, DQKV, DPAD_PART, DBIAS_PART,
    H, W, Hp, Wp, sh, sw, n_win_w, n_win, n_total, n_groups, scale, mask_value,
    HEADS: tl.constexpr, D: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr,
    BIAS_MODE: tl.constexpr, SHIFTED: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BIAS_GRAD: tl.constexpr, PAD_GRAD: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    # Program (group g, head): windows g, g + n_groups, ... of the whole batch. Its partial
    # sums of the bias and padding gradients go to its own rows of DBIAS_PART / DPAD_PART,
    # which the launcher reduces in a fixed order: deterministic, no atomics.
    C: tl.constexpr = HEADS * D
    N: tl.constexpr = WH * WW
    NUM_QB: tl.constexpr = BLOCK_N // BLOCK_M
    group = tl.program_id(0)
    head = tl.program_id(1)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    offs_n = tl.arange(0, BLOCK_N)
    # This program's slice: N*N values and a spare zero that the table reduction gathers.
    dbias_row = (group * HEADS + head).to(tl.int64) * (N * N + 1)
    dbias_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    dpad_k = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dpad_v = tl.zeros((BLOCK_D,), dtype=tl.float32)

    for window in range(group, n_total, n_groups):
        b = window // n_win
        win_r = (window % n_win) // n_win_w
        win_c = window % n_win_w
        base = QKV + b.to(tl.int64) * H * W * 3 * C
        dbase = DQKV + b.to(tl.int64) * H * W * 3 * C
        obase = DOUT + b.to(tl.int64) * H * W * C
        i_k, j_k, valid_k, inside_k, pad_k, token_k, region_k = _slots(
            offs_n, win_r, win_c, H, W, Hp, Wp, sh, sw, WH, WW, SHIFTED
        )
        k = _load_part(base, PAD, token_k, inside_k, pad_k, offs_d, head, 1, HEADS, D)
        v = _load_part(base, PAD, token_k, inside_k, pad_k, offs_d, head, 2, HEADS, D)
        if NUM_QB > 1:
            dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
            dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)

        for qb in tl.static_range(NUM_QB):
            offs_m = qb * BLOCK_M + tl.arange(0, BLOCK_M)
            i_q, j_q, valid_q, inside_q, pad_q, token_q, region_q = _slots(
                offs_m, win_r, win_c, H, W, Hp, Wp, sh, sw, WH, WW, SHIFTED
            )
            q = _load_part(base, PAD, token_q, inside_q, pad_q, offs_d, head, 0, HEADS, D)
            # Padding and spare slots have no output, so their dO is zero.
            o_mask = inside_q[:, None] & d_ok[None, :]
            do = tl.load(obase + token_q[:, None] * C + head * D + offs_d[None, :], mask=o_mask, other=0.0)
            s = _logits(
                q, k, TABLE, BIAS, head, scale, mask_value,
                offs_m, i_q, j_q, valid_q, region_q, offs_n, i_k, j_k, valid_k, region_k,
                HEADS, WH, WW, BIAS_MODE, SHIFTED, DOT_PRECISION,
            )
            p = _softmax(s)
            dv_part = _dot(tl.trans(p.to(do.dtype)), do, DOT_PRECISION)
            if NUM_QB == 1:
                # One query block: dV is final; storing it now keeps one fp32 tile fewer live.
                dpad_v = _store_grad(
                    dbase, dv_part, dpad_v, token_k, inside_k, pad_k, offs_d, head, 2, HEADS, D,
                    PAD_GRAD,
                )
            else:
                dv += dv_part
            dp = _dot(do, tl.trans(v), DOT_PRECISION)
            ds = p * (dp - tl.sum(p * dp, 1)[:, None])  # d loss / d logits, (BLOCK_M, BLOCK_N)
            dk_part = _dot(tl.trans(ds.to(q.dtype)), q, DOT_PRECISION)
            if NUM_QB == 1:
                dpad_k = _store_grad(
                    dbase, dk_part * scale, dpad_k, token_k, inside_k, pad_k, offs_d, head, 1,
                    HEADS, D, PAD_GRAD,
                )
            else:
                dk += dk_part
            dq = _dot(ds.to(k.dtype), k, DOT_PRECISION) * scale
            tl.store(
                dbase + token_q[:, None] * (3 * C) + head * D + offs_d[None, :],
                dq.to(DQKV.dtype.element_ty),
                mask=o_mask,
            )
            if BIAS_GRAD:
                if NUM_QB == 1:
                    dbias_acc += ds
                else:
                    # Large windows: this program's own slice, read-modify-write.
                    ptrs = DBIAS_PART + dbias_row + offs_m[:, None] * N + offs_n[None, :]
                    pair_ok = valid_q[:, None] & valid_k[None, :]
                    tl.store(ptrs, tl.load(ptrs, mask=pair_ok, other=0.0) + ds, mask=pair_ok)
                    tl.debug_barrier()

        if NUM_QB > 1:
            dpad_k = _store_grad(
                dbase, dk * scale, dpad_k, token_k, inside_k, pad_k, offs_d, head, 1, HEADS, D,
                PAD_GRAD,
            )
            dpad_v = _store_grad(
                dbase, dv, dpad_v, token_k, inside_k, pad_k, offs_d, head, 2, HEADS, D, PAD_GRAD
            )

    if PAD_GRAD:
        # The q part stays zero: padding queries have no output.
        dpad = DPAD_PART + group * 3 * C + head * D + offs_d
        tl.store(dpad + C, dpad_k, mask=d_ok)
        tl.store(dpad + 2 * C, dpad_v, mask=d_ok)
    if BIAS_GRAD:
        if NUM_QB == 1:
            offs_m = tl.arange(0, BLOCK_M)
            pair_ok = (offs_m < N)[:, None] & (offs_n < N)[None, :]
            tl.store(DBIAS_PART + dbias_row + offs_m[:, None] * N + offs_n[None, :], dbias_acc, mask=pair_ok)


# ---------------------------------------------------------------------------------------------
# Launchers


@dataclass
class _Problem:
    """What both launchers derive from a call: tensors as the kernels read them, the map and
    window geometry (runtime arguments) and the compile-time constants."""

    qkv: Tensor  # (B, H, W, 3C), contiguous
    pad: Tensor | None  # (3C,) in qkv's dtype; None: zeros
    table: Tensor | None  # (T, heads)
    dense: Tensor | None  # (heads, N, N)
    batch: int
    windows: int  # per image
    geometry: tuple  # H, W, Hp, Wp, sh, sw, windows per row, windows per image
    meta: dict

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.qkv.shape)


@functools.lru_cache(maxsize=256)
def _plan(
    shape: tuple[int, int, int, int],
    fp32: bool,
    num_heads: int,
    window: tuple[int, int],
    shift: tuple[int, int],
    mode: int,
) -> tuple[int, tuple, dict]:
    # The per-shape part of a launch, computed once: (windows per image, geometry, meta).
    b, h, w, c3 = shape
    (wh, ww), (sh, sw) = window, shift
    hp, wp = -(-h // wh) * wh, -(-w // ww) * ww
    n_win = (hp // wh) * (wp // ww)
    meta = dict(
        HEADS=num_heads, D=c3 // 3 // num_heads, WH=wh, WW=ww, BIAS_MODE=mode,
        SHIFTED=bool(sh or sw), DOT_PRECISION="ieee" if fp32 else "tf32",
        BLOCK_N=block_size(wh * ww), BLOCK_D=block_size(c3 // 3 // num_heads),
    )
    return n_win, (h, w, hp, wp, sh, sw, wp // ww, n_win), meta


def _problem(
    qkv: Tensor,
    bias_table: Tensor | None,
    bias: Tensor | None,
    pad_qkv: Tensor | None,
    num_heads: int,
    window: tuple[int, int],
    shift: tuple[int, int],
) -> _Problem:
    qkv = qkv.contiguous()
    mode = TABLE_BIAS if bias_table is not None else DENSE_BIAS if bias is not None else NO_BIAS
    n_win, geometry, meta = _plan(
        tuple(qkv.shape), qkv.dtype == torch.float32, num_heads, tuple(window), tuple(shift), mode
    )
    return _Problem(
        qkv=qkv,
        pad=None if pad_qkv is None else pad_qkv.to(qkv.dtype).contiguous(),
        table=None if bias_table is None else bias_table.contiguous(),
        dense=None if bias is None else bias.contiguous(),
        batch=qkv.shape[0],
        windows=n_win,
        geometry=geometry,
        meta=meta,
    )


def forward(
    qkv: Tensor,
    bias_table: Tensor | None,
    bias: Tensor | None,
    pad_qkv: Tensor | None,
    num_heads: int,
    window: tuple[int, int],
    shift: tuple[int, int],
    scale: float,
) -> Tensor:
    """Launches the forward kernel. `qkv: (B, H, W, 3C)` -> `(B, H, W, C)`."""
    pb = _problem(qkv, bias_table, bias, pad_qkv, num_heads, window, shift)
    b, h, w, c3 = pb.shape
    out = pb.qkv.new_empty(b, h, w, c3 // 3)
    size_class = (b * pb.windows).bit_length()
    args = (pb.qkv, pb.pad, pb.table, pb.dense, out, *pb.geometry, scale, MASK_VALUE, size_class)
    block_n = pb.meta["BLOCK_N"]
    if INTERPRET:
        block_m, per_prog = default_block_m(block_n), 1 if num_heads % 2 else 2
        grid = (b * pb.windows * num_heads // per_prog, block_n // block_m)
        _fwd[grid](*args, **pb.meta, BLOCK_M=block_m, HEADS_PER_PROG=per_prog)
    else:
        def grid(m: dict) -> tuple[int, int]:
            return (b * pb.windows * num_heads // m["HEADS_PER_PROG"], block_n // m["BLOCK_M"])

        _fwd[grid](*args, **pb.meta)
    return out


# Backward launch shape: programs per multiprocessor (all heads together), warps per program
# (None: by block size) and query rows per block (None: `default_block_m`). Rows fewer than the
# window's slots cut the live fp32 tiles (logits, dP, dS) by the same factor; the bias gradient
# then accumulates in the program's own slice of the partial buffer instead of registers.
# Module constants so that benchmarks/tune_triton.py can sweep them.
BWD_PROGRAMS_PER_SM = 8
BWD_NUM_WARPS: int | None = None
BWD_BLOCK_M: int | None = None


@functools.lru_cache(maxsize=8)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def backward_groups(n_windows: int, num_heads: int, n: int, device: torch.device) -> int:
    """Programs per head in the backward pass. Depends only on the shape and the device, so
    the reduction order of the bias and padding gradients is fixed for a given problem."""
    if device.type != "cuda":
        return min(n_windows, 4)
    target = BWD_PROGRAMS_PER_SM * _sm_count(device)
    budget = (64 << 20) // (4 * n * n * num_heads)  # keep DBIAS_PART under 64 MiB
    return max(1, min(n_windows, -(-target // num_heads), budget))


def _bwd_config(block_n: int, block_d: int) -> tuple[int, int]:
    """(BLOCK_M, num_warps) of the backward kernel, fixed per shape (no autotuning, so that the
    results do not depend on timing)."""
    block_m = min(BWD_BLOCK_M, block_n) if BWD_BLOCK_M else default_block_m(block_n)
    if BWD_NUM_WARPS:
        return block_m, BWD_NUM_WARPS
    return block_m, 4 if block_m * max(block_n, block_d) <= 64 * 64 else 8


@functools.lru_cache(maxsize=32)
def _table_gather(window: tuple[int, int], device: torch.device) -> Tensor:
    # (T, N) flat indices into a (N*N + 1,) vector: the (query, key) pairs of every table row,
    # padded with the index of a trailing zero. Summing the gathered rows reduces the dense
    # bias gradient to the table in a fixed order.
    from winattn.geometry import relative_position_index

    wh, ww = window
    n = wh * ww
    index = relative_position_index(window).reshape(-1)  # (N*N,)
    rows = (2 * wh - 1) * (2 * ww - 1)
    order = torch.argsort(index, stable=True)
    counts = torch.bincount(index, minlength=rows)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(n * n) - starts[index[order]]
    gather = torch.full((rows, n), n * n, dtype=torch.long)
    gather[index[order], slot] = order
    return gather.to(device)


def table_grad_from_dense(flat: Tensor, window: tuple[int, int], dtype: torch.dtype) -> Tensor:
    """`(heads, N*N + 1)` gradient of the dense bias, flattened with a trailing zero ->
    `((2Wh-1)(2Ww-1), heads)` gradient of the table in `dtype`."""
    gather = _table_gather(window, flat.device)  # (T, N)
    return flat[:, gather].sum(-1).t().contiguous().to(dtype)


def backward(
    dout: Tensor,
    qkv: Tensor,
    bias_table: Tensor | None,
    bias: Tensor | None,
    pad_qkv: Tensor | None,
    num_heads: int,
    window: tuple[int, int],
    shift: tuple[int, int],
    scale: float,
    bias_grad: bool,
    pad_grad: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Launches the backward kernel.

    Returns:
        `(dqkv, dbias, dpad)`: `(B, H, W, 3C)` in qkv's dtype; the gradient of `bias_table`
        `(T, heads)` or of `bias` `(heads, N, N)` in its dtype (None unless `bias_grad`); of
        `pad_qkv` `(3C,)` (None unless `pad_grad`).
    """
    pb = _problem(qkv, bias_table, bias, pad_qkv, num_heads, window, shift)
    b, h, w, c3 = pb.shape
    n = window[0] * window[1]
    block_m, num_warps = _bwd_config(pb.meta["BLOCK_N"], pb.meta["BLOCK_D"])
    mode = pb.meta["BIAS_MODE"]
    bias_grad = bias_grad and mode != NO_BIAS
    pad_grad = pad_grad and pb.geometry[2:4] != (h, w)
    groups = backward_groups(b * pb.windows, num_heads, n, qkv.device)
    dqkv = torch.empty_like(pb.qkv)
    f32 = dict(dtype=torch.float32, device=qkv.device)
    dpad_part = torch.zeros(groups, c3, **f32) if pad_grad else None
    dbias_part = torch.zeros(groups, num_heads, n * n + 1, **f32) if bias_grad else None
    _bwd_kernel[(groups, num_heads)](
        pb.qkv, pb.pad, pb.table, pb.dense, dout.contiguous(), dqkv, dpad_part, dbias_part,
        *pb.geometry, b * pb.windows, groups, scale, MASK_VALUE,
        **pb.meta, BIAS_GRAD=bias_grad, PAD_GRAD=pad_grad, BLOCK_M=block_m, num_warps=num_warps,
    )
    dbias = None
    if bias_grad:
        flat = dbias_part.sum(0)  # (heads, N*N + 1), the last column zero
        if mode == TABLE_BIAS:
            dbias = table_grad_from_dense(flat, window, bias_table.dtype)
        else:
            dbias = flat[:, : n * n].reshape(num_heads, n, n).contiguous().to(bias.dtype)
    dpad = None
    if pad_grad:
        dpad = dpad_part.sum(0).to(pad_qkv.dtype if pad_qkv is not None else qkv.dtype)
    elif pad_qkv is not None:
        dpad = torch.zeros_like(pad_qkv)
    return dqkv, dbias, dpad
