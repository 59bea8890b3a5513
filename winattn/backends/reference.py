# SPDX-License-Identifier: Apache-2.0
"""The reference backend: plain PyTorch, written to be read. It is the specification that
every other backend is tested against.

Step by step, as in Swin and the official STF code:

1. pad the map at the bottom and right to a multiple of the window with padding tokens
   (a padding token's qkv is `pad_qkv`, the projection of a zero token);
2. roll the padded map by `(-sh, -sw)` (the cyclic shift);
3. cut it into windows of `N = Wh * Ww` tokens and split q, k, v and the heads;
4. logits `(q * scale) @ k^T + bias`, plus the shifted-window mask (-100 between tokens of
   different bands, padding tokens not masked), in (at least) float32: half-precision logits
   overflow (float16 ends at 65504) where the attention itself is well defined; with
   `logit_scale` (Swin-V2's scaled cosine attention) the logits are instead
   `cos(q, k) * exp(min(logit_scale, log 100))` per head, q and k L2-normalised along
   `head_dim` in (at least) float32, then the bias and mask;
5. softmax in (at least) float32, dropout, weights @ v in qkv's dtype;
6. merge the windows, roll back by `(sh, sw)`, crop to `(H, W)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from winattn.backends.dispatcher import AttentionCall, Backend
from winattn.geometry import cached_mask


def pad_map(qkv: Tensor, padded: tuple[int, int], pad_qkv: Tensor | None) -> Tensor:
    """Pads `(B, H, W, C3)` to `(B, Hp, Wp, C3)` with copies of `pad_qkv` (zeros if None)."""
    b, h, w, c3 = qkv.shape
    hp, wp = padded
    if (hp, wp) == (h, w):
        return qkv
    if pad_qkv is None:
        return F.pad(qkv, (0, 0, 0, wp - w, 0, hp - h))
    pad = pad_qkv.to(qkv.dtype)
    right = pad.expand(b, h, wp - w, c3)  # (B, H, Wp-W, C3)
    qkv = torch.cat([qkv, right], dim=2)  # (B, H, Wp, C3)
    bottom = pad.expand(b, hp - h, wp, c3)  # (B, Hp-H, Wp, C3)
    return torch.cat([qkv, bottom], dim=1)  # (B, Hp, Wp, C3)


def unit(x: Tensor) -> Tensor:
    """`x` L2-normalised along its last axis, computed in (at least) float32 with
    `F.normalize`'s `eps=1e-12` (which keeps a zero vector, such as a padding token's key with
    a zero bias, at zero), returned in `x`'s dtype."""
    return F.normalize(x.to(torch.promote_types(x.dtype, torch.float32)), dim=-1).to(x.dtype)


def split_windows(call: AttentionCall) -> tuple[Tensor, Tensor, Tensor]:
    """Steps 1 to 3: pads, shifts and cuts the call's qkv into windows and heads.

    Returns:
        q, k, v: `(B * nW, heads, N, d)` each, in qkv's dtype.
    """
    (wh, ww), (sh, sw) = call.window_size, call.shift_size
    x = pad_map(call.qkv, call.padded, call.pad_qkv)  # (B, Hp, Wp, 3C)
    if call.shifted:
        x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
    q, k, v = rearrange(
        x,
        "b (nh wh) (nw ww) (three heads d) -> three (b nh nw) heads (wh ww) d",
        wh=wh,
        ww=ww,
        three=3,
        heads=call.num_heads,
    )  # each (B*nW, heads, N, d)
    return q, k, v


def merge_windows(out: Tensor, call: AttentionCall) -> Tensor:
    """Step 6: the inverse of `split_windows` for the output `(B * nW, heads, N, d)`.
    Returns `(B, H, W, C)`."""
    b, h, w, _ = call.qkv.shape
    (wh, _), (sh, sw) = call.window_size, call.shift_size
    out = rearrange(
        out,
        "(b nh nw) heads (wh ww) d -> b (nh wh) (nw ww) (heads d)",
        b=b,
        nh=call.padded[0] // wh,
        wh=wh,
    )  # (B, Hp, Wp, C)
    if call.shifted:
        out = torch.roll(out, shifts=(sh, sw), dims=(1, 2))
    return out[:, :h, :w]


def reference_window_attention(call: AttentionCall) -> Tensor:
    """The specification of `window_attention`. Returns `(B, H, W, C)`."""
    qkv = call.qkv
    b = qkv.shape[0]
    (wh, ww), (sh, sw) = call.window_size, call.shift_size
    hp, wp = call.padded
    q, k, v = split_windows(call)  # each (B*nW, heads, N, d)

    acc = torch.promote_types(qkv.dtype, torch.float32)
    if call.cosine:
        q, k = unit(q), unit(k)
        logits = q.to(acc) @ k.to(acc).transpose(-2, -1)  # (B*nW, heads, N, N), cosine similarities
        logits = logits * call.cosine_scale()[:, None, None]
    else:
        logits = (q.to(acc) * call.scale) @ k.to(acc).transpose(-2, -1)  # (B*nW, heads, N, N)
    bias = call.dense_bias()
    if bias is not None:
        logits = logits + bias  # bias: (heads, N, N)
    if call.shifted:
        mask = cached_mask((hp, wp), (wh, ww), (sh, sw), qkv.device)  # (nW, N, N)
        logits = rearrange(logits, "(b nw) heads n m -> b nw heads n m", b=b)
        logits = logits + mask[None, :, None].to(logits.dtype)
        logits = rearrange(logits, "b nw heads n m -> (b nw) heads n m")

    weights = logits.softmax(dim=-1).to(qkv.dtype)
    if call.dropout_p > 0:
        weights = F.dropout(weights, p=call.dropout_p, training=True)
    out = weights @ v  # (B*nW, heads, N, d)

    return merge_windows(out, call)  # (B, H, W, C)


class ReferenceBackend(Backend):
    """Plain PyTorch. Runs everything, on every device; slow but obviously right."""

    name = "reference"

    def forward(self, call: AttentionCall) -> Tensor:
        return reference_window_attention(call)
