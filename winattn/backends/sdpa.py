# SPDX-License-Identifier: Apache-2.0
"""The SDPA backend: `torch.nn.functional.scaled_dot_product_attention` on windows.

Padding, cyclic shift and partition are one gather with a precomputed index (one copy of
qkv instead of three); merge, reverse shift and crop are one gather back. The relative
position bias and the shift mask go to SDPA as one additive float mask of shape
`(nW, heads, N, N)` (or `(heads, N, N)` without a shift) that broadcasts over the batch, so
no `(B * nW, heads, N, N)` mask is ever built.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from winattn.backends import AttentionCall, Backend, register_backend
from winattn.functional import geometry_mask


def _layout_indices(
    h: int, w: int, wh: int, ww: int, sh: int, sw: int, device: torch.device | None
) -> tuple[Tensor, Tensor]:
    hp, wp = -(-h // wh) * wh, -(-w // ww) * ww
    # Gather: for every slot of the windowed, shifted, padded map, which token of the
    # original map it holds (h * w means a padding token).
    r = torch.arange(hp, device=device)
    c = torch.arange(wp, device=device)
    src_r = (r + sh) % hp  # row of the padded map that lands at shifted row r
    src_c = (c + sw) % wp
    inside = (src_r[:, None] < h) & (src_c[None, :] < w)  # (Hp, Wp)
    src = torch.where(inside, src_r[:, None] * w + src_c[None, :], h * w)  # (Hp, Wp)
    gather = src.reshape(hp // wh, wh, wp // ww, ww).permute(0, 2, 1, 3).reshape(-1)  # (nW*N,)
    # Scatter back: for every token of the original map, its slot in the windowed layout.
    # Shifted row of each original row. `+ hp` keeps the operand of % non-negative, which
    # inductor's index range analysis needs (a negative one fails to compile on the CPU).
    dst_r = (torch.arange(h, device=device) + (hp - sh)) % hp
    dst_c = (torch.arange(w, device=device) + (wp - sw)) % wp
    nww = wp // ww
    slot_r = (dst_r // wh) * nww * wh * ww + (dst_r % wh) * ww  # (H,)
    slot_c = (dst_c // ww) * wh * ww + (dst_c % ww)  # (W,)
    scatter = (slot_r[:, None] + slot_c[None, :]).reshape(-1)  # (H*W,)
    return gather, scatter


@functools.lru_cache(maxsize=128)
def _layout_indices_cached(
    h: int, w: int, wh: int, ww: int, sh: int, sw: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    return _layout_indices(h, w, wh, ww, sh, sw, device)


def layout_indices(call: AttentionCall) -> tuple[Tensor, Tensor]:
    """`(gather, scatter)`: `(nW * N,)` and `(H * W,)` int64 indices between the map and the
    windowed layout (shift and padding included). Cached outside `torch.compile`."""
    args = (*call.size, *call.window_size, *call.shift_size, call.qkv.device)
    if torch.compiler.is_compiling():
        return _layout_indices(*args)
    return _layout_indices_cached(*args)


def sdpa_window_attention(call: AttentionCall) -> Tensor:
    qkv = call.qkv
    b, h, w, c3 = qkv.shape
    c, heads, d = c3 // 3, call.num_heads, call.head_dim
    (wh, ww), n = call.window_size, call.window_size[0] * call.window_size[1]
    hp, wp = call.padded
    nw = (hp // wh) * (wp // ww)
    gather, scatter = layout_indices(call)

    flat = qkv.reshape(b, h * w, c3)  # (B, H*W, 3C)
    if (hp, wp) != (h, w):
        pad = torch.zeros(c3, dtype=qkv.dtype, device=qkv.device) if call.pad_qkv is None else call.pad_qkv
        flat = torch.cat([flat, pad.to(qkv.dtype).expand(b, 1, c3)], dim=1)  # (B, H*W+1, 3C)
    windows = flat[:, gather].view(b, nw, n, 3, heads, d)  # (B, nW, N, 3, heads, d)
    q, k, v = windows.permute(3, 0, 1, 4, 2, 5).unbind(0)  # each (B, nW, heads, N, d)

    mask = call.dense_bias()  # (heads, N, N) or None
    if call.shifted:
        shift = geometry_mask((hp, wp), call.window_size, call.shift_size, qkv.device)
        shift = shift[:, None].to(qkv.dtype)  # (nW, 1, N, N)
        mask = shift if mask is None else mask + shift  # (nW, heads, N, N)

    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=call.dropout_p, scale=call.scale
    )  # (B, nW, heads, N, d)
    out = out.transpose(2, 3).reshape(b, nw * n, c)  # (B, nW*N, C)
    return out[:, scatter].view(b, h, w, c)  # (B, H, W, C)


@register_backend
class SdpaBackend(Backend):
    """`scaled_dot_product_attention` with an additive float mask; every device, every dtype."""

    name = "sdpa"

    def forward(self, call: AttentionCall) -> Tensor:
        return sdpa_window_attention(call)
