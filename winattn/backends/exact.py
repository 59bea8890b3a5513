# SPDX-License-Identifier: Apache-2.0
"""The exact backend: fixed-point window attention whose output is bit-identical on every CPU
instruction set, thread count and device.

Float attention is not bit-reproducible across machines: the order of a float sum depends on
the vector width (`ATEN_CPU_CAPABILITY`), the thread count, the PyTorch version and the GPU. A
learned codec whose entropy model uses window attention then cannot decode a file on another
machine. This backend removes every float reduction:

1. the inputs are converted to integers by elementwise, correctly rounded operations only
   (float64 conversion, a multiplication by a power of two, `torch.round`, which rounds half
   to even, and a clamp), so the integers are the same everywhere;
2. everything after that is int64 arithmetic (products, sums, shifts, floor divisions), which
   is exact and therefore independent of the order in which any sum is taken;
3. the one conversion back to float is exact (an integer below 2**53 to float64, times a power
   of two), followed by one correctly rounded cast to qkv's dtype.

Fixed-point formats (`Qm.f`: `f` fractional bits, magnitudes saturate at `2**m`):

* `q * scale` and `k`: `Q8.19` (`QK_FRAC`, `QK_RANGE`); `v`: `Q12.20` (`V_FRAC`, `V_RANGE`);
* logits, bias and shift mask: `LOGIT_FRAC` = 24 fractional bits; the relative position bias
  saturates at `BIAS_RANGE`; the mask is `MASK_VALUE` (-100) in that format, as in the reference;
* the softmax computes `exp(l - max) = 2**-t` from `t` with `EXP_FRAC` = 20 fractional bits:
  two 1024-entry tables of `2**-x` in `Q0.30` (built with Python's `decimal`, whose results are
  the same on every platform) give the fractional part, a right shift the integer part;
  differences beyond `MAX_EXP_ARG` (64) give 0, as they do below `2**-30` anyway;
* weights: `Q0.30` (`PROB_FRAC`), rounded `floor((e * 2**30 + sum / 2) / sum)`;
* output: rounded to `OUT_FRAC` = 24 fractional bits, then to qkv's dtype.

Within the ranges the output is within `error_bound(call)` of the real-valued attention (see
that function for the derivation); outside them the inputs saturate (the result is still
bit-identical everywhere, but no longer close to the float attention). Infinities saturate
too; a NaN input counts as 0 (converting NaN to an integer is not the same on every CPU).
Rounding of shifts is half up (`floor(x / 2**k + 1/2)`), which is exact in integers.

The device independence holds by construction; the tests check it across CPU instruction sets,
thread counts and batchings, and check that the int64 product-and-sum used off the CPU gives
the CPU matmul's bits. No GPU run has been made yet.
"""

from __future__ import annotations

import decimal
import functools
import math

import torch
from einops import rearrange
from torch import Tensor

from winattn.backends.dispatcher import AttentionCall, Backend
from winattn.backends.reference import merge_windows, pad_map, split_windows
from winattn.geometry import cached_mask

__all__ = [
    "BIAS_RANGE",
    "EXP_FRAC",
    "LOGIT_FRAC",
    "MAX_EXP_ARG",
    "MAX_HEAD_DIM",
    "OUT_FRAC",
    "PROB_FRAC",
    "QK_FRAC",
    "QK_RANGE",
    "V_FRAC",
    "V_RANGE",
    "ExactBackend",
    "error_bound",
    "exact_window_attention",
    "exp_tables",
    "int_matmul",
]

#: Fractional bits of `q * scale` and `k`; both saturate at `+-QK_RANGE`.
QK_FRAC = 19
QK_RANGE = 2.0**8
#: Fractional bits of `v`; saturates at `+-V_RANGE`.
V_FRAC = 20
V_RANGE = 2.0**12
#: Fractional bits of the logits, the bias and the mask; the bias saturates at `+-BIAS_RANGE`.
LOGIT_FRAC = 24
BIAS_RANGE = 2.0**16
#: Fractional bits of `t = (max - logit) * log2(e)`, the argument of `2**-t`.
EXP_FRAC = 20
#: Logit differences above this give the weight 0 (`exp(-64)` is far below `2**-30`).
MAX_EXP_ARG = 64
#: Fractional bits of the exponentials and of the normalised weights.
PROB_FRAC = 30
#: Fractional bits of the output before its conversion to float.
OUT_FRAC = 24
#: The largest head_dim whose logits are guaranteed to fit int64:
#: `head_dim * (2**(8+19))**2 < 2**63`.
MAX_HEAD_DIM = 256

_TABLE_BITS = EXP_FRAC // 2  # each table covers half of the fractional bits of t


def _decimal_q30(x: decimal.Decimal) -> int:
    return int((x * (1 << PROB_FRAC)).to_integral_value(rounding=decimal.ROUND_HALF_EVEN))


@functools.cache
def _exp_tables_int() -> tuple[tuple[int, ...], tuple[int, ...], int]:
    with decimal.localcontext() as ctx:
        ctx.prec = 40
        ln2 = decimal.Decimal(2).ln()
        size = 1 << _TABLE_BITS
        hi = tuple(_decimal_q30((-ln2 * i / size).exp()) for i in range(size))
        lo = tuple(_decimal_q30((-ln2 * i / (size * size)).exp()) for i in range(size))
        log2e = _decimal_q30(1 / ln2)
    return hi, lo, log2e


def exp_tables(device: torch.device | str | None = None) -> tuple[Tensor, Tensor, int]:
    """The tables of the integer exponential.

    Returns:
        `(hi, lo, log2e)`: `hi[i] = round(2**(-i / 1024) * 2**30)`,
        `lo[j] = round(2**(-j / 2**20) * 2**30)` (int64, `(1024,)` each) and
        `round(log2(e) * 2**30)`. They are computed with Python's `decimal` (software
        arithmetic, correctly rounded), so they are the same on every machine.
    """
    hi, lo, log2e = _exp_tables_int()
    return (
        torch.tensor(hi, dtype=torch.int64, device=device),
        torch.tensor(lo, dtype=torch.int64, device=device),
        log2e,
    )


def _quantise(x: Tensor, frac: int, limit: float) -> Tensor:
    """`round_half_even(x * 2**frac)` saturated at `+-limit * 2**frac`, as int64.

    float64 holds every float16, bfloat16 and float32 value exactly, and the product by a
    power of two is exact, so the only rounding is `torch.round`'s, the same everywhere."""
    bound = limit * 2.0**frac
    # NaN would convert to an integer that differs between CPUs (x86 and Arm disagree): as 0
    x = torch.nan_to_num(x.to(torch.float64), nan=0.0)
    return torch.round(x * 2.0**frac).clamp(-bound, bound).to(torch.int64)


def _shift_round(x: Tensor, bits: int) -> Tensor:
    """`floor(x / 2**bits + 1/2)` in int64 (rounds half up), exact."""
    return torch.div(x + (1 << (bits - 1)), 1 << bits, rounding_mode="floor")


def int_matmul(a: Tensor, b: Tensor, *, elementwise: bool | None = None) -> Tensor:
    """`a @ b` for int64 `(..., n, k)` and `(..., k, m)`.

    The CPU has an int64 matmul; CUDA does not, so elsewhere (or with `elementwise=True`) it
    is an elementwise product and an int64 sum. Integer sums are exact, so both give the same
    bits."""
    if elementwise is None:
        elementwise = a.device.type != "cpu"
    if not elementwise:
        return a @ b
    return (a[..., :, :, None] * b[..., None, :, :]).sum(dim=-2)  # (..., n, k, m) -> (..., n, m)


def _int_softmax(logits: Tensor) -> Tensor:
    """Softmax of `LOGIT_FRAC` fixed-point logits along the last axis, as `Q0.30` int64
    weights. Integer operations only."""
    hi, lo, log2e = exp_tables(logits.device)
    diff = logits.amax(dim=-1, keepdim=True) - logits  # >= 0, LOGIT_FRAC bits
    diff = diff.clamp(max=MAX_EXP_ARG << LOGIT_FRAC)
    t = _shift_round(diff * log2e, LOGIT_FRAC + PROB_FRAC - EXP_FRAC)  # EXP_FRAC bits
    whole = torch.bitwise_right_shift(t, EXP_FRAC).clamp(max=62)
    frac = torch.bitwise_and(t, (1 << EXP_FRAC) - 1)
    mantissa = hi[torch.bitwise_right_shift(frac, _TABLE_BITS)] * lo[
        torch.bitwise_and(frac, (1 << _TABLE_BITS) - 1)
    ]  # Q0.60
    e = torch.bitwise_right_shift(_shift_round(mantissa, PROB_FRAC), whole)  # Q0.30, max 2**30
    total = e.sum(dim=-1, keepdim=True)  # >= 2**30: the maximum contributes exactly 2**30
    return torch.div((e << PROB_FRAC) + total // 2, total, rounding_mode="floor")


def exact_window_attention(call: AttentionCall) -> Tensor:
    """Window attention in fixed point, bit-identical everywhere. Returns `(B, H, W, C)` in
    qkv's dtype. Same steps as the reference (`winattn.backends.reference`), in integers."""
    qkv = call.qkv
    b = qkv.shape[0]
    (wh, ww), (sh, sw) = call.window_size, call.shift_size
    hp, wp = call.padded
    q, k, v = split_windows(call)  # each (B*nW, heads, N, d), padded in qkv's dtype

    qi = _quantise(q.to(torch.float64) * call.scale, QK_FRAC, QK_RANGE)  # (B*nW, heads, N, d)
    ki = _quantise(k, QK_FRAC, QK_RANGE)
    vi = _quantise(v, V_FRAC, V_RANGE)
    logits = int_matmul(qi, ki.transpose(-2, -1))  # (B*nW, heads, N, N), 2 * QK_FRAC bits
    logits = _shift_round(logits, 2 * QK_FRAC - LOGIT_FRAC)  # LOGIT_FRAC bits
    bias = call.dense_bias()
    if bias is not None:
        logits = logits + _quantise(bias, LOGIT_FRAC, BIAS_RANGE)  # bias: (heads, N, N)
    if call.shifted:
        mask = cached_mask((hp, wp), (wh, ww), (sh, sw), qkv.device)  # (nW, N, N)
        mask = _quantise(mask, LOGIT_FRAC, BIAS_RANGE)
        logits = rearrange(logits, "(b nw) heads n m -> b nw heads n m", b=b)
        logits = logits + mask[None, :, None]
        logits = rearrange(logits, "b nw heads n m -> (b nw) heads n m")

    weights = _int_softmax(logits)  # (B*nW, heads, N, N), Q0.30
    out = int_matmul(weights, vi)  # (B*nW, heads, N, d), PROB_FRAC + V_FRAC bits
    out = _shift_round(out, PROB_FRAC + V_FRAC - OUT_FRAC)  # |out| < 2**37: exact in float64
    out = (out.to(torch.float64) * 2.0**-OUT_FRAC).to(qkv.dtype)

    return merge_windows(out, call)  # (B, H, W, C)


def error_bound(call: AttentionCall) -> float:
    """A bound on `|exact - attention|`, elementwise, where `attention` is the real-valued
    window attention of the call's inputs (inputs within the ranges of the formats).

    Derivation, with `q' = q * scale`, per window and head:

    * quantising `q'` and `k` moves each by at most `2**-20`, so a logit moves by at most
      `delta_qk = 2**-20 * (max ||q'||_1 + max ||k||_1) + d * 2**-40`; rounding it to
      `LOGIT_FRAC` bits adds `2**-25`, the bias and mask `2**-25` more: `delta`;
    * `t` is rounded to `2**-21`, and the tables and their product to `~2**-30` relatively:
      each exponential is off by a factor within `exp(+-eps)`, `eps = ln 2 * 2**-21 + 2**-28`;
      the flooring right shift loses less than `2**-30` (in units of the maximum weight);
    * so each normalised weight is off by a factor within `exp(+-2 * (delta + eps))`, plus
      `N * 2**-30` absolute (the floors, and the normalisation's rounding `2**-31`); the
      weighted sum of `v` then moves by at most
      `(exp(2 * (delta + eps)) - 1) * max|v| + N * 2**-29 * max|v|`;
    * quantising `v` adds `2**-21`, rounding the output to `OUT_FRAC` bits `2**-25`.

    The final cast to qkv's dtype adds half a unit in the last place of the output, which this
    bound leaves out (compare with a reference in float32 and allow for it separately).
    """
    hp, wp = call.padded
    x = pad_map(call.qkv, (hp, wp), call.pad_qkv).to(torch.float64)  # (B, Hp, Wp, 3C)
    q, k, v = rearrange(
        x, "b hp wp (three heads d) -> three b hp wp heads d", three=3, heads=call.num_heads
    )
    q_l1 = (q * call.scale).abs().sum(dim=-1).max().item()
    k_l1 = k.abs().sum(dim=-1).max().item()
    v_max = v.abs().max().item()
    n = call.window_size[0] * call.window_size[1]
    delta = 2.0**-20 * (q_l1 + k_l1) + call.head_dim * 2.0**-40 + 2 * 2.0**-25
    eps = math.log(2) * 2.0**-21 + 2.0**-28
    return (
        math.expm1(2 * (delta + eps)) * v_max + n * 2.0**-29 * v_max + 2.0**-21 + 2.0**-25
    )


class ExactBackend(Backend):
    """Fixed-point window attention for inference, bit-identical on every CPU instruction set,
    thread count and device. Opt-in: `"auto"` never picks it. See `winattn.backends.exact`."""

    name = "exact"

    def not_supported_reasons(self, call: AttentionCall) -> list[str]:
        reasons = []
        if call.needs_grad:
            reasons.append(
                "exact is an inference backend and computes no gradients; call it under "
                "torch.no_grad() or with inputs that do not require grad"
            )
        if call.dropout_p > 0:
            reasons.append(
                f"exact has no attention dropout (dropout_p={call.dropout_p}); pass 0 (eval mode)"
            )
        if call.cosine:
            reasons.append(
                "exact does not support Swin-V2's cosine attention (logit_scale): the L2 "
                "normalisation is not implemented in fixed point"
            )
        if call.head_dim > MAX_HEAD_DIM:
            reasons.append(
                f"exact supports head_dim <= {MAX_HEAD_DIM} (its int64 logits could overflow "
                f"beyond), got head_dim={call.head_dim}"
            )
        return reasons

    def unverified_reasons(self, call: AttentionCall) -> list[str]:
        return [
            "exact is opt-in (backend='exact'): it trades speed and a fixed-point error for "
            "bit-identical results"
        ]

    def forward(self, call: AttentionCall) -> Tensor:
        return exact_window_attention(call)
