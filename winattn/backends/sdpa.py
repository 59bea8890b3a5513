# SPDX-License-Identifier: Apache-2.0
"""The SDPA backend: `torch.nn.functional.scaled_dot_product_attention` on windows.

Padding, cyclic shift and partition are one gather with a precomputed index (one copy of
qkv instead of three); merge, reverse shift and crop are one gather back. The relative
position bias and the shift mask go to SDPA as one additive float mask.

How the work is laid out matters more than the arithmetic (see `docs/benchmarks.md`):

* q, k and v reach SDPA as 4-D `(windows, heads, N, d)` strided views of the gathered qkv
  with a 4-D mask, the form for which PyTorch picks its fused (flash) kernel on the CPU;
  5-D inputs or a 3-D mask send it to the slower math path.
* The mask is `(nW, heads, N, N)` with a shift and `(1, heads, N, N)` without. With a shift
  it cannot broadcast over the batch inside one 4-D call, so in eager inference the batch is
  processed one image at a time: that also keeps every temporary at the size of one image,
  small enough for the allocator to reuse memory instead of faulting in fresh pages on
  every call, which on the CPU costs as much as the copies themselves.
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
) -> tuple[Tensor, Tensor, Tensor | None]:
    hp, wp = -(-h // wh) * wh, -(-w // ww) * ww
    # Gather: for every slot of the windowed, shifted, padded map, which token of the
    # original map it holds. Padding slots read token 0 and are overwritten afterwards.
    r = torch.arange(hp, device=device)
    c = torch.arange(wp, device=device)
    src_r = (r + sh) % hp  # row of the padded map that lands at shifted row r
    src_c = (c + sw) % wp
    inside = (src_r[:, None] < h) & (src_c[None, :] < w)  # (Hp, Wp)
    src = torch.where(inside, src_r[:, None] * w + src_c[None, :], 0)  # (Hp, Wp)
    gather = src.reshape(hp // wh, wh, wp // ww, ww).permute(0, 2, 1, 3).reshape(-1)  # (nW*N,)
    outside = (~inside).reshape(hp // wh, wh, wp // ww, ww).permute(0, 2, 1, 3).reshape(-1)
    pad_slots = outside.nonzero().flatten() if (hp, wp) != (h, w) else None  # (P,)
    # Scatter back: for every token of the original map, its slot in the windowed layout.
    dst_r = (torch.arange(h, device=device) - sh) % hp  # shifted row of original row
    dst_c = (torch.arange(w, device=device) - sw) % wp
    nww = wp // ww
    slot_r = (dst_r // wh) * nww * wh * ww + (dst_r % wh) * ww  # (H,)
    slot_c = (dst_c // ww) * wh * ww + (dst_c % ww)  # (W,)
    scatter = (slot_r[:, None] + slot_c[None, :]).reshape(-1)  # (H*W,)
    return gather, scatter, pad_slots


@functools.lru_cache(maxsize=128)
def _layout_indices_cached(
    h: int, w: int, wh: int, ww: int, sh: int, sw: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor | None]:
    return _layout_indices(h, w, wh, ww, sh, sw, device)


def layout_indices(call: AttentionCall) -> tuple[Tensor, Tensor, Tensor | None]:
    """`(gather, scatter, pad_slots)` between the map and the windowed layout.

    `gather` `(nW * N,)`: the token of the map (flattened `H * W`) that each slot of the
    windowed layout holds (shift included; padding slots hold token 0). `scatter` `(H * W,)`:
    the slot of each token. `pad_slots` `(P,)`: the padding slots, or None without padding.
    All int64, cached outside `torch.compile`.
    """
    args = (*call.size, *call.window_size, *call.shift_size, call.qkv.device)
    if torch.compiler.is_compiling():
        return _layout_indices(*args)
    return _layout_indices_cached(*args)


def _attention_mask(call: AttentionCall, nw: int) -> Tensor | None:
    """Bias plus shift mask: `(nW, heads, N, N)`, `(1, heads, N, N)` or None."""
    mask = call.dense_bias()  # (heads, N, N) or None
    if call.shifted:
        shift = geometry_mask(call.padded, call.window_size, call.shift_size, call.qkv.device)
        shift = shift[:, None].to(call.qkv.dtype)  # (nW, 1, N, N)
        return shift if mask is None else mask + shift  # (nW, heads, N, N)
    return None if mask is None else mask[None]  # (1, heads, N, N)


def _gather_windows(flat: Tensor, call: AttentionCall) -> Tensor:
    """`(b, H * W, 3C)` -> `(b, nW * N, 3C)`: pad, shift and partition in one gather."""
    gather, _, pad_slots = layout_indices(call)
    windows = flat.index_select(1, gather)  # (b, nW*N, 3C)
    if pad_slots is not None:
        c3 = flat.shape[-1]
        pad = flat.new_zeros(c3) if call.pad_qkv is None else call.pad_qkv.to(flat.dtype)
        windows[:, pad_slots] = pad.expand(len(pad_slots), c3)  # (P, 3C) rows of padding
    return windows


def _attend(windows: Tensor, mask: Tensor | None, call: AttentionCall) -> Tensor:
    """`(b, nW * N, 3C)` windows of qkv -> `(b * nW * N, C)` attention output, same order."""
    b, heads, d = windows.shape[0], call.num_heads, call.head_dim
    n = call.window_size[0] * call.window_size[1]
    nw = windows.shape[1] // n
    parts = windows.view(b * nw, n, 3, heads, d)  # (b*nW, N, 3, heads, d)
    q, k, v = parts.permute(2, 0, 3, 1, 4).unbind(0)  # each (b*nW, heads, N, d), strided
    if mask is not None and mask.shape[0] > 1 and b > 1:
        mask = mask.expand(b, *mask.shape).reshape(b * nw, heads, n, n)  # (b*nW, heads, N, N)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=call.dropout_p, scale=call.scale
    )  # (b*nW, heads, N, d)
    return out.transpose(1, 2).reshape(b * nw * n, heads * d)  # (b*nW*N, C)


def sdpa_window_attention(call: AttentionCall) -> Tensor:
    qkv = call.qkv
    b, h, w, c3 = qkv.shape
    c = c3 // 3
    hp, wp = call.padded
    nw = (hp // call.window_size[0]) * (wp // call.window_size[1])
    _, scatter, _ = layout_indices(call)
    mask = _attention_mask(call, nw)
    flat = qkv.reshape(b, h * w, c3)  # (B, H*W, 3C)

    if b == 1 or call.needs_grad or torch.compiler.is_compiling():
        out = _attend(_gather_windows(flat, call), mask, call)  # (B*nW*N, C)
        return out.view(b, nw * out.shape[0] // (b * nw), c).index_select(1, scatter).view(b, h, w, c)

    # Eager inference: one image at a time, straight into the output.
    out = qkv.new_empty(b, h * w, c)  # (B, H*W, C)
    for i in range(b):
        windows = _attend(_gather_windows(flat[i : i + 1], call), mask, call)  # (nW*N, C)
        torch.index_select(windows, 0, scatter, out=out[i])
    return out.view(b, h, w, c)  # (B, H, W, C)


@register_backend
class SdpaBackend(Backend):
    """`scaled_dot_product_attention` with an additive float mask; every device, every dtype."""

    name = "sdpa"

    def forward(self, call: AttentionCall) -> Tensor:
        return sdpa_window_attention(call)
