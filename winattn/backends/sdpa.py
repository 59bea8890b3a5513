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
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from winattn.backends import AttentionCall, Backend, register_backend
from winattn.functional import geometry_mask


@dataclass(frozen=True)
class Layout:
    """How `b` maps of `(H, W)` tokens map to windows, for one window size and shift.

    Windows are grouped by the shift mask they need: without a shift there is one group; with
    one, the windows of the last window row and of the last window column see the wrapped
    bands, so there are up to four groups (inside, last column, last row, corner), each with a
    single `(N, N)` mask shared by all its windows. Slots are ordered (group, image, window of
    the group, token of the window), so each group is one contiguous block of windows that
    SDPA runs with a mask broadcast over its windows.

    Attributes:
        gather: `(b * nW * N,)`, the row of the flattened `(b * H * W)` map that each slot
            holds (padding slots hold row 0 and are overwritten).
        scatter: `(b * H * W,)`, the slot of each row of the map.
        pad_slots: `(b * P,)`, the padding slots (`P = Hp * Wp - H * W`), possibly empty.
        groups: `(windows per image, index of one of its windows, whether its shift mask is
            not all zero)` per group, in slot order.
    """

    gather: Tensor
    scatter: Tensor
    pad_slots: Tensor
    groups: tuple[tuple[int, int, bool], ...]


def _layout(
    b: int, h: int, w: int, wh: int, ww: int, sh: int, sw: int, device: torch.device | None
) -> Layout:
    hp, wp = -(-h // wh) * wh, -(-w // ww) * ww
    nwh, nww = hp // wh, wp // ww
    # Token of the original map held by each position of the shifted, padded map.
    src_r = (torch.arange(hp, device=device) + sh) % hp  # (Hp,) row that lands at row r
    src_c = (torch.arange(wp, device=device) + sw) % wp  # (Wp,)
    inside = (src_r[:, None] < h) & (src_c[None, :] < w)  # (Hp, Wp)
    token = src_r[:, None] * w + src_c[None, :]  # (Hp, Wp)
    token = token.reshape(nwh, wh, nww, ww).permute(0, 2, 1, 3).reshape(nwh * nww, wh * ww)  # (nW, N)
    pad = ~inside.reshape(nwh, wh, nww, ww).permute(0, 2, 1, 3).reshape(nwh * nww, wh * ww)  # (nW, N)

    # Group the windows by the shift mask they need (plain Python: no data-dependent shapes).
    kind = [(r == nwh - 1 and sh > 0, c == nww - 1 and sw > 0) for r in range(nwh) for c in range(nww)]
    groups, order = [], []
    for k in sorted(set(kind)):
        members = [i for i, ki in enumerate(kind) if ki == k]
        groups.append((len(members), members[0], any(k)))
        order += members
    order_t = torch.tensor(order, device=device)

    # Key of every slot: its row in the flattened (b*H*W) maps, or b*H*W for padding.
    image = torch.arange(b, device=device)[:, None, None] * (h * w)  # (b, 1, 1)
    keys, first = [], 0
    for count, _, _ in groups:
        block = order_t[first : first + count]
        key = torch.where(pad[block], b * h * w, token[block] + image)  # (b, count, N)
        keys.append(key.reshape(-1))
        first += count
    key = torch.cat(keys)  # (b*nW*N,)
    by_key = torch.argsort(key, stable=True)  # real tokens in map order, then padding slots
    return Layout(
        gather=torch.where(key == b * h * w, 0, key),
        scatter=by_key[: b * h * w],
        pad_slots=by_key[b * h * w :],
        groups=tuple(groups),
    )


@functools.lru_cache(maxsize=128)
def _layout_cached(
    b: int, h: int, w: int, wh: int, ww: int, sh: int, sw: int, device: torch.device
) -> Layout:
    return _layout(b, h, w, wh, ww, sh, sw, device)


def layout(call: AttentionCall, batch: int) -> Layout:
    """The `Layout` of `batch` maps of `call`'s size. Cached outside `torch.compile`."""
    args = (batch, *call.size, *call.window_size, *call.shift_size, call.qkv.device)
    if torch.compiler.is_compiling():
        return _layout(*args)
    return _layout_cached(*args)


def _group_masks(
    call: AttentionCall, groups: tuple[tuple[int, int, bool], ...]
) -> list[Tensor | None]:
    """Bias plus the group's shift mask, `(1, heads, N, N)`, per group (None: no mask)."""
    bias = call.dense_bias()  # (heads, N, N) or None
    shift = None
    if call.shifted:
        shift = geometry_mask(call.padded, call.window_size, call.shift_size, call.qkv.device)
    masks = []
    for _, window, masked in groups:
        mask = bias
        if shift is not None and masked:
            mask = shift[window].to(call.qkv.dtype) if mask is None else mask + shift[window]
        masks.append(None if mask is None else mask.expand(1, call.num_heads, *mask.shape[-2:]))
    return masks


def _attend(
    flat: Tensor, call: AttentionCall, masks: list[Tensor | None], out: Tensor | None = None
) -> Tensor:
    """`(b, H * W, 3C)` qkv -> `(b * H * W, C)` attention output, map order (written into
    `out` when given: inference only)."""
    b, hw, c3 = flat.shape
    heads, d = call.num_heads, call.head_dim
    n = call.window_size[0] * call.window_size[1]
    lay = layout(call, b)
    windows = flat.reshape(b * hw, c3).index_select(0, lay.gather)  # (b*nW*N, 3C)
    if lay.pad_slots.numel():
        pad = flat.new_zeros(c3) if call.pad_qkv is None else call.pad_qkv.to(flat.dtype)
        windows[lay.pad_slots] = pad.expand(lay.pad_slots.shape[0], c3)  # padding tokens
    outs, first = [], 0
    for (count, _, _), mask in zip(lay.groups, masks):
        rows = b * count * n
        part = windows[first : first + rows].view(b * count, n, 3, heads, d)
        q, k, v = part.permute(2, 0, 3, 1, 4).unbind(0)  # each (b*count, heads, N, d), strided
        res = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=call.dropout_p, scale=call.scale
        )  # (b*count, heads, N, d)
        outs.append(res.transpose(1, 2).reshape(rows, heads * d))  # (b*count*N, C)
        first += rows
    windowed = outs[0] if len(outs) == 1 else torch.cat(outs)  # (b*nW*N, C)
    if out is None:
        return windowed.index_select(0, lay.scatter)  # (b*H*W, C)
    return torch.index_select(windowed, 0, lay.scatter, out=out)  # (b*H*W, C)


def sdpa_window_attention(call: AttentionCall) -> Tensor:
    qkv = call.qkv
    b, h, w, c3 = qkv.shape
    c = c3 // 3
    masks = _group_masks(call, layout(call, 1).groups)
    flat = qkv.reshape(b, h * w, c3)  # (B, H*W, 3C)
    if b == 1 or call.needs_grad or torch.compiler.is_compiling():
        return _attend(flat, call, masks).view(b, h, w, c)
    # Eager inference: one image at a time, each one's temporaries the size of one image.
    out = qkv.new_empty(b, h * w, c)  # (B, H*W, C)
    for i in range(b):
        _attend(flat[i : i + 1], call, masks, out=out[i])
    return out.view(b, h, w, c)  # (B, H, W, C)


@register_backend
class SdpaBackend(Backend):
    """`scaled_dot_product_attention` with an additive float mask; every device, every dtype."""

    name = "sdpa"

    def forward(self, call: AttentionCall) -> Tensor:
        return sdpa_window_attention(call)
