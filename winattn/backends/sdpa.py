# SPDX-License-Identifier: Apache-2.0
"""The SDPA backend: `torch.nn.functional.scaled_dot_product_attention` on windows.

Padding, cyclic shift and partition are one gather with a precomputed index (one copy of
qkv instead of three); merge, reverse shift and crop are one gather back. The relative
position bias and the shift mask go to SDPA as an additive float mask.

How the work is laid out matters more than the arithmetic (measured with
`benchmarks/attention.py`; see `docs/benchmarks.md`):

* On CUDA, q, k and v reach SDPA as 4-D `(windows, heads, N, d)` strided views of the
  gathered qkv, with a 4-D mask. On the CPU the attention itself is matmul, softmax, matmul
  (`_attention_matmul`): as fast as CPU SDPA's fused kernel at these window sizes, and the
  same arithmetic whether or not autograd is recording. There the gathers move rows of
  `head_dim` values, straight into contiguous q, k, v `(windows, heads, N, d)` and straight
  back from the `(windows, heads, N, d)` output, so no further copy rearranges the heads
  (about 5% of the module's forward at the codec shapes), and a mask per window is broadcast
  over the images rather than copied for each.
* With a shift, only the windows of the last window row and column see wrapped bands, and
  all windows of each of the (at most) four kinds (inside, last column, last row, corner)
  share one mask. When the full `(nW, heads, N, N)` mask would be large, the windows are
  gathered grouped by kind and SDPA runs once per group with a `(1, heads, N, N)` mask
  broadcast over the group's windows, which keeps the mask in cache. When it is small, one
  call with the full mask is cheaper than four.
* In eager inference the batch is processed a few images at a time (`CHUNK_BYTES` of qkv):
  the temporaries then stay small enough for the allocator to reuse from call to call instead
  of faulting in fresh pages, which on the CPU costs as much as the copies themselves. On the
  CPU, where the logits of those images would still be large (a high-resolution map), the
  windows are attended a few at a time (`LOGITS_CHUNK_BYTES` of logits): each chunk gathers
  its q, k, v, attends and writes its rows of the output, so logits and weights stay in
  cache. At the first stage of a 512x768 codec this halves the attention's time. Each window
  goes through the same operations either way, so the bits do not change.
* Under `torch.compile` all of this is eager-only: the traced graph is the reference's pad,
  roll and rearrange around the attention, which traces with symbolic sizes (a dynamic-shape
  compile) and which the compiler fuses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from winattn._utils import compile_safe_cache
from winattn.backends.dispatcher import AttentionCall, Backend
from winattn.backends.reference import reference_window_attention
from winattn.geometry import cached_mask, padded_size

#: Eager inference gathers the qkv of at most this many bytes of images at a time (at
#: least one image).
CHUNK_BYTES = 8 * 1024 * 1024

#: Eager CPU inference computes the attention logits of at most this many bytes of windows at
#: a time (at least one window).
LOGITS_CHUNK_BYTES = 2 * 1024 * 1024

#: Above this many bytes, the full `(nW, heads, N, N)` mask of a shifted call is replaced by
#: one shared mask per group of windows (see the module docstring).
FULL_MASK_MAX_BYTES = 512 * 1024

#: On the CPU, a call on one image keeps the full mask up to this many times that size: four
#: group calls then cost more than the mask's traffic (measured at 32x32 and 64x64 maps, 5-9%
#: faster in training and inference).
ONE_IMAGE_FULL_MASK_FACTOR = 8


@dataclass(frozen=True)
class Layout:
    """How `b` maps of `(H, W)` tokens map to windows, for one window size and shift.

    Slots are ordered (group, image, window of the group, token of the window), so each group
    is one contiguous block of windows for one SDPA call. Without grouping there is one group
    holding every window in row-major order.

    Attributes:
        gather: `(b * nW * N,)`, the row of the flattened `(b * H * W)` maps that each slot
            holds (padding slots hold row 0 and are overwritten).
        scatter: `(b * H * W,)`, the slot of each row of the maps.
        pad_slots: `(b * P,)`, the padding slots (`P = Hp * Wp - H * W`), possibly empty.
        groups: per group, `(windows per image, a window of the group)`; every window of a
            group has the same shift mask as that one.
        grouped: whether windows are grouped by shift mask (else one group, in order).
        gather_heads: on the CPU, `(3 * b * nW * heads * N,)`: for each `(q/k/v, slot's
            window, head, slot's token)`, in that order, the row of the maps' qkv viewed as
            `(b * H * W * 3 * heads, head_dim)`; None elsewhere.
        scatter_heads: on the CPU, `(b * H * W * heads,)`: for each row of the maps and head,
            the row of the attention output viewed as `(b * nW * heads * N, head_dim)`.
        dest_heads: on the CPU, `(b * nW * heads * N,)`, the inverse of `scatter_heads`: for
            each row of the attention output, its row of the output viewed as
            `(b * H * W * heads, head_dim)`, or -1 for a padding slot.
        pad_prefix: on the CPU, `(b * nW + 1,)`: how many of the first `i` windows hold
            padding slots.
        source_heads: on the CPU, `(b * H * W * 3 * heads,)`, the inverse of `gather_heads`:
            for each row of the maps' qkv, the row of the gathered q, k, v that holds it.
        pad_rows_heads: on the CPU, the rows of the attention output (viewed as
            `(b * nW * heads * N, head_dim)`) that belong to padding slots.
    """

    gather: Tensor
    scatter: Tensor
    pad_slots: Tensor
    groups: tuple[tuple[int, int], ...]
    grouped: bool
    gather_heads: Tensor | None = None
    scatter_heads: Tensor | None = None
    dest_heads: Tensor | None = None
    pad_prefix: tuple[int, ...] = ()
    source_heads: Tensor | None = None
    pad_rows_heads: Tensor | None = None


def _layout(
    b: int, h: int, w: int, wh: int, ww: int, sh: int, sw: int, grouped: bool,
    device: torch.device | None, heads: int = 1,
) -> Layout:
    hp, wp = padded_size((h, w), (wh, ww))
    nwh, nww = hp // wh, wp // ww
    # Token of the original map held by each position of the shifted, padded map.
    src_r = (torch.arange(hp, device=device) + sh) % hp  # (Hp,) row that lands at row r
    src_c = (torch.arange(wp, device=device) + sw) % wp  # (Wp,)
    inside = (src_r[:, None] < h) & (src_c[None, :] < w)  # (Hp, Wp)
    token = src_r[:, None] * w + src_c[None, :]  # (Hp, Wp)
    token = token.reshape(nwh, wh, nww, ww).permute(0, 2, 1, 3).reshape(nwh * nww, wh * ww)  # (nW, N)
    pad = ~inside.reshape(nwh, wh, nww, ww).permute(0, 2, 1, 3).reshape(nwh * nww, wh * ww)  # (nW, N)

    # Kind of each window: whether it is the last along each shifted axis.
    if grouped:
        kind = [(r == nwh - 1 and sh > 0, c == nww - 1 and sw > 0) for r in range(nwh) for c in range(nww)]
    else:
        kind = [(False, False)] * (nwh * nww)
    groups, order = [], []
    for k in sorted(set(kind)):
        members = [i for i, ki in enumerate(kind) if ki == k]
        groups.append((len(members), members[0]))
        order += members
    order_t = torch.tensor(order, device=device)

    # Key of every slot: its row in the flattened (b*H*W) maps, or b*H*W for padding.
    image = torch.arange(b, device=device)[:, None, None] * (h * w)  # (b, 1, 1)
    keys, first = [], 0
    for count, _ in groups:
        block = order_t[first : first + count]
        key = torch.where(pad[block], b * h * w, token[block] + image)  # (b, count, N)
        keys.append(key.reshape(-1))
        first += count
    key = torch.cat(keys)  # (b*nW*N,)
    by_key = torch.argsort(key, stable=True)  # real tokens in map order, then padding slots
    gather, scatter = torch.where(key == b * h * w, 0, key), by_key[: b * h * w]
    gather_heads = scatter_heads = dest_heads = source_heads = pad_rows_heads = None
    pad_prefix: tuple[int, ...] = ()
    if torch.device(device or "cpu").type == "cpu":
        n = wh * ww
        head = torch.arange(heads, device=device)
        three = torch.arange(3, device=device)[:, None, None, None]
        token = gather.view(1, -1, 1, n)  # (1, b*nW, 1, N), rows of the maps
        gather_heads = ((token * 3 + three) * heads + head[:, None]).reshape(-1)  # (3, b*nW, heads, N)
        scatter_heads = ((scatter // n)[:, None] * heads + head) * n + (scatter % n)[:, None]  # (b*H*W, heads)
        dest_heads = torch.full((gather.numel() * heads,), -1, dtype=torch.long, device=device)
        dest_heads[scatter_heads.reshape(-1)] = torch.arange(b * h * w * heads, device=device)
        has_pad = torch.zeros(b * nwh * nww, dtype=torch.long, device=device)
        has_pad[by_key[b * h * w :] // n] = 1
        pad_prefix = (0, *torch.cumsum(has_pad, 0).tolist())
        real = (key != b * h * w).view(1, -1, 1, n).expand(3, -1, heads, -1).reshape(-1)  # per gathered row
        source_heads = torch.empty(b * h * w * 3 * heads, dtype=torch.long, device=device)
        source_heads[gather_heads[real]] = torch.arange(gather_heads.numel(), device=device)[real]
        pad_rows_heads = (dest_heads < 0).nonzero().view(-1)
        if max(b * h * w * 3 * heads, gather.numel() * heads) < 2**31:
            gather_heads, scatter_heads = gather_heads.int(), scatter_heads.int()
            source_heads = source_heads.int()
    return Layout(
        gather=gather,
        scatter=scatter,
        pad_slots=by_key[b * h * w :],
        groups=tuple(groups),
        grouped=grouped,
        gather_heads=gather_heads,
        scatter_heads=scatter_heads.reshape(-1) if scatter_heads is not None else None,
        dest_heads=dest_heads,
        pad_prefix=pad_prefix,
        source_heads=source_heads,
        pad_rows_heads=pad_rows_heads,
    )


_layout_cached = compile_safe_cache(maxsize=128)(_layout)


def layout(call: AttentionCall, batch: int) -> Layout:
    """The `Layout` of `batch` maps of `call`'s size, cached."""
    (wh, ww), heads = call.window_size, call.num_heads
    nw = (call.padded[0] // wh) * (call.padded[1] // ww)
    full_mask_bytes = nw * heads * (wh * ww) ** 2 * call.qkv.element_size()
    limit = FULL_MASK_MAX_BYTES
    if batch == 1 and call.qkv.device.type == "cpu":
        limit *= ONE_IMAGE_FULL_MASK_FACTOR  # nothing to share the groups' masks over
    grouped = call.shifted and full_mask_bytes > limit
    return _layout_cached(
        batch, *call.size, wh, ww, *call.shift_size, grouped, call.qkv.device, heads
    )


# Inference reuses the masks built from a bias table while the table keeps its values: an
# entry holds a copy of the (small) table and is used only if the table still equals it, so
# in-place updates, `.data` assignments and `load_state_dict` are all seen.
_MASK_CACHE: dict[tuple, tuple[Tensor | None, list[Tensor | None]]] = {}
_MASK_CACHE_SIZE = 64


def cached_group_masks(call: AttentionCall, lay: Layout) -> list[Tensor | None]:
    """`group_masks`, reused across inference calls with the same bias values and geometry."""
    source = call.bias_table if call.bias_table is not None else call.bias
    if call.needs_grad or torch.is_inference_mode_enabled():
        return group_masks(call, lay)
    key = (
        call.window_size, call.shift_size, call.padded, lay.grouped, call.num_heads,
        call.qkv.dtype, call.qkv.device, None if source is None else id(source),
        call.bias_table is None,
    )
    hit = _MASK_CACHE.get(key)
    if hit is not None and (source is None or torch.equal(hit[0], source)):
        return hit[1]
    masks = group_masks(call, lay)
    if len(_MASK_CACHE) >= _MASK_CACHE_SIZE:
        _MASK_CACHE.pop(next(iter(_MASK_CACHE)))
    _MASK_CACHE[key] = (None if source is None else source.detach().clone(), masks)
    return masks


def group_masks(call: AttentionCall, lay: Layout) -> list[Tensor | None]:
    """Relative position bias plus shift mask for each group of `lay`: `(1, heads, N, N)`
    (or `(1, 1, N, N)` without bias) for a group sharing one mask, `(nW, heads, N, N)` for
    the single group of an ungrouped shifted layout, None when there is nothing to add."""
    bias = call.dense_bias()  # (heads, N, N) or None
    bias = None if bias is None else bias.contiguous()[None]  # (1, heads, N, N)
    if not call.shifted:
        return [bias]
    shift = cached_mask(call.padded, call.window_size, call.shift_size, call.qkv.device)
    shift = shift.to(call.qkv.dtype)[:, None]  # (nW, 1, N, N)
    if lay.grouped:
        shift = shift[[window for _, window in lay.groups]]  # (G, 1, N, N)
    masks = shift if bias is None else bias + shift  # (G or nW, heads or 1, N, N)
    return [masks[g : g + 1] for g in range(len(lay.groups))] if lay.grouped else [masks]


def _attention_matmul(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, call: AttentionCall, images: int
) -> Tensor:
    """Attention as matmul, softmax, matmul: q, k, v `(windows, heads, N, d)` ->
    `(windows, heads, N, d)`. Used on the CPU, in training and inference alike.

    A mask of one window (`(1, heads or 1, N, N)`) is broadcast over the windows; a mask per
    window of one image (`(nW, heads or 1, N, N)`) is broadcast over the `images`.

    On the CPU, PyTorch's SDPA picks a different kernel depending on whether the bias needs a
    gradient (the fused flash kernel without, the math path with), so its results would
    depend on the grad mode: an encoder run under `no_grad` and a decoder run with grad enabled
    would disagree in the last bits, which breaks entropy decoding. Measured with
    `benchmarks/attention.py` on 2 cores, this path is as fast as the flash kernel for windows
    of 16 to 64 tokens, and faster than the math path in training.
    """
    if q.dtype in (torch.float16, torch.bfloat16):
        # logits in float32, as SDPA accumulates them: in float16 they overflow (65504) where
        # the attention itself is well defined, and bfloat16 would round them to 8 bits
        q, k = q.float(), k.float()
    logits = q @ k.transpose(-2, -1)  # (windows, heads, N, N)
    if mask is None:
        logits = logits * call.scale
    elif mask.shape[0] > 1 and images > 1:  # a mask per window, the same for every image
        per_image = logits.view(images, -1, *logits.shape[1:])  # (images, nW, heads, N, N)
        logits = torch.add(mask, per_image, alpha=call.scale).reshape(logits.shape)
    else:
        logits = torch.add(mask, logits, alpha=call.scale)
    weights = logits.softmax(-1).to(v.dtype)
    if call.dropout_p > 0:
        weights = F.dropout(weights, p=call.dropout_p, training=True)
    return weights @ v  # (windows, heads, N, d)


class _Rows(torch.autograd.Function):
    """`src.index_select(0, index)` where `index` is a permutation of rows, some of them
    repeated for padding slots whose values do not matter. Its backward reads the gradient
    back through the inverse permutation, one `index_select` (`inverse`), and zeroes the rows
    `zero` (the gradient of rows nothing real was read from), instead of `index_select`'s
    own backward, which scatters with `index_add_` into a zeroed buffer and on the CPU costs
    several times the forward."""

    @staticmethod
    def forward(src: Tensor, index: Tensor, inverse: Tensor, zero: Tensor | None) -> Tensor:  # type: ignore[override]
        return src.index_select(0, index)

    @staticmethod
    def setup_context(ctx: object, inputs: tuple, output: Tensor) -> None:  # type: ignore[override]
        ctx.inverse, ctx.zero = inputs[2], inputs[3]  # type: ignore[attr-defined]

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        out = grad.index_select(0, ctx.inverse)  # type: ignore[attr-defined]
        if ctx.zero is not None and ctx.zero.numel():  # type: ignore[attr-defined]
            out.index_fill_(0, ctx.zero, 0)  # type: ignore[attr-defined]
        return out, None, None, None


def _select_rows(src: Tensor, index: Tensor, inverse: Tensor, zero: Tensor | None = None) -> Tensor:
    """`src.index_select(0, index)`, differentiated through `_Rows` when autograd records."""
    if torch.is_grad_enabled() and src.requires_grad:
        return _Rows.apply(src, index, inverse, zero)
    return src.index_select(0, index)


def _attend_cpu(
    flat: Tensor, call: AttentionCall, lay: Layout, masks: list[Tensor | None],
    out: Tensor | None = None,
) -> Tensor:
    """`_attend` on the CPU: one gather straight into q, k, v `(3, windows, heads, N, d)` and
    one gather straight back from `(windows, heads, N, d)`, rows of `head_dim` values, so
    that no copy rearranges the heads."""
    b, hw, _ = flat.shape
    heads, d = call.num_heads, call.head_dim
    n = call.window_size[0] * call.window_size[1]
    windows = lay.gather.numel() // n
    rows = flat.reshape(-1, d)  # (b*H*W*3*heads, d)
    qkv = _select_rows(rows, lay.gather_heads, lay.source_heads).view(3, windows, heads, n, d)
    if lay.pad_slots.numel():
        pad = flat.new_zeros(3 * heads * d) if call.pad_qkv is None else call.pad_qkv.to(flat.dtype)
        slots = lay.pad_slots
        qkv[:, slots // n, :, slots % n] = pad.view(3, heads, d)  # (P, 3, heads, d): padding tokens
    # one split into groups (its backward is one cat, where a slice per group would each
    # backward into a zeroed buffer of the whole qkv)
    parts = qkv.split([b * count for count, _ in lay.groups], dim=1) if len(lay.groups) > 1 else (qkv,)
    outs = []
    for part, mask in zip(parts, masks):
        q, k, v = part.unbind(0)  # each (group's windows, heads, N, d)
        outs.append(_attention_matmul(q, k, v, mask, call, b))
    res = (outs[0] if len(outs) == 1 else torch.cat(outs)).view(-1, d)  # (windows*heads*N, d)
    if out is None:
        if not (torch.is_grad_enabled() and res.requires_grad):
            return res.index_select(0, lay.scatter_heads).view(b * hw, heads * d)  # (b*H*W, C)
        inverse = lay.dest_heads.clamp(min=0)  # padding slots read row 0, then are zeroed
        return _select_rows(res, lay.scatter_heads, inverse, lay.pad_rows_heads).view(b * hw, heads * d)
    torch.index_select(res, 0, lay.scatter_heads, out=out.view(-1, d))
    return out  # (b*H*W, C)


def _attend_cpu_chunked(
    flat: Tensor, call: AttentionCall, lay: Layout, masks: list[Tensor | None],
    out: Tensor | None = None,
) -> Tensor:
    """`_attend_cpu` for eager inference, a few windows at a time: gather their q, k, v, attend
    and write their rows of the output, so that the logits and weights of every chunk stay in
    cache instead of being allocated (and their pages faulted in) for a whole map. Each window
    is computed by the same operations as in `_attend_cpu`."""
    b, hw, _ = flat.shape
    heads, d = call.num_heads, call.head_dim
    n = call.window_size[0] * call.window_size[1]
    windows = lay.gather.numel() // n
    rows = flat.reshape(-1, d)  # (b*H*W*3*heads, d)
    index = lay.gather_heads.view(3, windows, heads * n)
    if out is None:
        out = flat.new_empty(b * hw, heads * d)
    dest = out.view(-1, d)  # (b*H*W*heads, d)
    step = max(1, LOGITS_CHUNK_BYTES // (heads * n * n * max(flat.element_size(), 4)))
    pad = None
    first = 0
    for (count, _), mask in zip(lay.groups, masks):
        per_window = mask is not None and mask.shape[0] > 1  # (count, heads, N, N), one image's
        spans = [(i, i + count) for i in range(first, first + b * count, count)] if per_window else [(first, first + b * count)]
        for a, z in ((a, min(a + step, end)) for start, end in spans for a in range(start, end, step)):
            window_mask = mask[(a - first) % count : (a - first) % count + z - a] if per_window else mask
            qkv = rows.index_select(0, index[:, a:z].reshape(-1)).view(3, z - a, heads, n, d)
            target = lay.dest_heads[a * heads * n : z * heads * n]  # (wc*heads*N,)
            if lay.pad_prefix[z] > lay.pad_prefix[a]:  # padding slots in these windows
                if pad is None:
                    pad = flat.new_zeros(3 * heads * d) if call.pad_qkv is None else call.pad_qkv.to(flat.dtype)
                slots = lay.pad_slots[(lay.pad_slots >= a * n) & (lay.pad_slots < z * n)] - a * n
                qkv[:, slots // n, :, slots % n] = pad.view(3, heads, d)
            q, k, v = qkv.unbind(0)  # each (wc, heads, N, d)
            res = _attention_matmul(q, k, v, window_mask, call, 1).view(-1, d)  # (wc*heads*N, d)
            if lay.pad_prefix[z] > lay.pad_prefix[a]:
                real = target >= 0
                res, target = res[real], target[real]
            dest.index_copy_(0, target, res)
        first += b * count
    return out  # (b*H*W, C)


def _chunk_windows(call: AttentionCall, lay: Layout, masks: list[Tensor | None]) -> bool:
    """Whether `_attend_cpu_chunked` applies: eager inference on the CPU, with logits larger
    than two chunks."""
    if lay.dest_heads is None or call.needs_grad or call.dropout_p > 0:
        return False
    if torch.is_autocast_enabled("cpu"):  # the result dtype is autocast's
        return False
    n = call.window_size[0] * call.window_size[1]
    logits = lay.gather.numel() // n * call.num_heads * n * n * 4
    return logits > 2 * LOGITS_CHUNK_BYTES


def _attend(
    flat: Tensor, call: AttentionCall, lay: Layout, masks: list[Tensor | None],
    out: Tensor | None = None,
) -> Tensor:
    """`(b, H * W, 3C)` qkv -> `(b * H * W, C)` attention output in map order (written into
    `out` when given: inference only)."""
    if lay.gather_heads is not None:
        if _chunk_windows(call, lay, masks):
            return _attend_cpu_chunked(flat, call, lay, masks, out)
        return _attend_cpu(flat, call, lay, masks, out)
    b, hw, c3 = flat.shape
    heads, d = call.num_heads, call.head_dim
    n = call.window_size[0] * call.window_size[1]
    windows = flat.reshape(b * hw, c3).index_select(0, lay.gather)  # (b*nW*N, 3C)
    if lay.pad_slots.numel():
        pad = flat.new_zeros(c3) if call.pad_qkv is None else call.pad_qkv.to(flat.dtype)
        windows[lay.pad_slots] = pad.expand(lay.pad_slots.shape[0], c3)  # padding tokens
    outs, first = [], 0
    for (count, _), mask in zip(lay.groups, masks):
        rows = b * count * n
        part = windows[first : first + rows].view(b * count, n, 3, heads, d)
        if mask is not None and mask.shape[0] > 1 and b > 1:  # a mask per window
            mask = mask.expand(b, *mask.shape).reshape(b * count, *mask.shape[1:])
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


def fold_cosine(call: AttentionCall) -> AttentionCall:
    """Swin-V2's scaled cosine attention as dot-product attention: q becomes
    `unit(q) * cosine_scale` (a per-head scale is not a scalar `scale=`, so it goes into q),
    k becomes `unit(k)`, and the call's scale 1. The padding token's qkv is folded the same
    way.

    One multiply of qkv by a factor per row of `head_dim` values (`scale / |q|`, `1 / |k|`,
    1 for v), the norms taken in (at least) float32 with `F.normalize`'s `eps`: at the first
    stage of `swin_v2_t` this costs half as much as normalising q and k apart and stacking.
    """
    heads, d = call.num_heads, call.head_dim
    scale = call.cosine_scale().to(torch.promote_types(call.qkv.dtype, torch.float32))
    one, zero = torch.ones_like(scale), torch.zeros_like(scale)
    mult = torch.stack((scale, one, zero))[:, :, None]  # (3, heads, 1): q, k, v
    add = torch.stack((zero, zero, one))[:, :, None]  # (3, heads, 1): v kept as is

    def fold(t: Tensor) -> Tensor:
        x = t.unflatten(-1, (3, heads, d))  # (..., 3, heads, d)
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=scale.dtype)  # (..., 3, heads, 1)
        factor = torch.addcdiv(add, mult, norm.clamp_min(1e-12))  # (..., 3, heads, 1)
        return (x * factor.to(t.dtype)).flatten(-3)  # (..., 3C)

    pad = None if call.pad_qkv is None else fold(call.pad_qkv)
    return dataclasses.replace(call, qkv=fold(call.qkv), pad_qkv=pad, scale=1.0, logit_scale=None)


def sdpa_window_attention(call: AttentionCall) -> Tensor:
    if call.cosine:
        call = fold_cosine(call)
    qkv = call.qkv
    if torch.compiler.is_compiling():
        # A `Layout` is built by Python loops over the windows, which the symbolic sizes of a
        # dynamic-shape compile cannot drive (and the compiler cannot tell us whether sizes
        # are symbolic); the reference's pad, roll and rearrange trace with any sizes, and
        # the compiler fuses them into one copy each way.
        return reference_window_attention(call)
    b, h, w, c3 = qkv.shape
    c = c3 // 3
    flat = qkv.reshape(b, h * w, c3)  # (B, H*W, 3C)
    chunk = max(1, CHUNK_BYTES // (h * w * c3 * qkv.element_size()))  # images per chunk
    if (
        chunk >= b
        or call.needs_grad
        or torch.is_autocast_enabled(qkv.device.type)  # the result dtype is autocast's
    ):
        lay = layout(call, b)
        return _attend(flat, call, lay, cached_group_masks(call, lay)).view(b, h, w, c)
    # Eager inference, a few images at a time: temporaries stay small enough for the
    # allocator to reuse them from call to call.
    out = qkv.new_empty(b, h * w, c)  # (B, H*W, C)
    for i in range(0, b, chunk):
        part = flat[i : i + chunk]  # (chunk, H*W, 3C)
        lay = layout(call, part.shape[0])
        masks = cached_group_masks(call, lay)
        _attend(part, call, lay, masks, out=out[i : i + chunk].view(-1, c))
    return out.view(b, h, w, c)  # (B, H, W, C)


class SdpaBackend(Backend):
    """`scaled_dot_product_attention` with an additive float mask; every device, every dtype."""

    name = "sdpa"

    def forward(self, call: AttentionCall) -> Tensor:
        return sdpa_window_attention(call)
