# SPDX-License-Identifier: Apache-2.0
"""Pure functions for window attention.

Layout helpers (`window_partition`, `window_reverse`), the geometry of shifted windows
(`shifted_window_mask`, `relative_position_index`) and `window_attention`, the single entry
point through which every module's attention math goes. `window_attention` resolves the
backend at call time (see `winattn.backends`).

Conventions used throughout:

* maps are channels-last, `(B, H, W, C)`;
* a window holds `N = Wh * Ww` tokens, numbered row-major inside the window;
* windows are numbered row-major over the padded map, `nW = (Hp / Wh) * (Wp / Ww)`;
* the padded map is the input padded at the bottom and right to a multiple of the window;
* a cyclic shift by `(sh, sw)` moves the token at `(i, j)` of the padded map to
  `(i - sh, j - sw)` (modulo the padded size), as `torch.roll(x, (-sh, -sw))` does.
"""

from __future__ import annotations

import functools
import math

import torch
from einops import rearrange
from torch import Tensor

from winattn._utils import Pair, to_pair

__all__ = [
    "MASK_VALUE",
    "padded_size",
    "window_partition",
    "window_reverse",
    "relative_position_index",
    "shifted_window_mask",
    "window_attention",
]

#: Additive logit for token pairs in different regions of a shifted window, as in Swin and STF.
MASK_VALUE = -100.0


def padded_size(size: tuple[int, int], window_size: int | Pair) -> tuple[int, int]:
    """Rounds a map size up to a multiple of the window.

    Args:
        size: `(H, W)`.
        window_size: `Wh` or `(Wh, Ww)`.

    Returns:
        `(Hp, Wp)`, the smallest multiples of `(Wh, Ww)` that are at least `(H, W)`.
    """
    wh, ww = to_pair(window_size, "window_size")
    h, w = size
    return (-(-h // wh) * wh, -(-w // ww) * ww)


def window_partition(x: Tensor, window_size: int | Pair) -> Tensor:
    """Cuts a map into non-overlapping windows.

    Args:
        x: `(B, H, W, C)`, with `H` and `W` multiples of the window.
        window_size: `Wh` or `(Wh, Ww)`.

    Returns:
        `(B * nW, Wh, Ww, C)`, windows in row-major order, batch-major.

    Example:
        >>> x = torch.randn(2, 8, 12, 3)
        >>> window_partition(x, 4).shape
        torch.Size([12, 4, 4, 3])
    """
    wh, ww = to_pair(window_size, "window_size")
    _check_map(x, "x")
    _, h, w, _ = x.shape
    if h % wh or w % ww:
        raise ValueError(
            f"window_partition needs H and W to be multiples of the window, got {(h, w)=} "
            f"and window_size={(wh, ww)}; pad the map first (see padded_size)."
        )
    return rearrange(x, "b (nh wh) (nw ww) c -> (b nh nw) wh ww c", wh=wh, ww=ww)


def window_reverse(windows: Tensor, window_size: int | Pair, H: int, W: int) -> Tensor:
    """Inverse of `window_partition`.

    Args:
        windows: `(B * nW, Wh, Ww, C)`.
        window_size: `Wh` or `(Wh, Ww)`.
        H: height of the map, a multiple of `Wh`.
        W: width of the map, a multiple of `Ww`.

    Returns:
        `(B, H, W, C)`.
    """
    wh, ww = to_pair(window_size, "window_size")
    if windows.dim() != 4 or tuple(windows.shape[1:3]) != (wh, ww):
        raise ValueError(
            f"window_reverse expects windows of shape (B*nW, {wh}, {ww}, C), "
            f"got {tuple(windows.shape)}."
        )
    if H % wh or W % ww:
        raise ValueError(f"H and W must be multiples of the window, got {(H, W)=}, {(wh, ww)=}.")
    nh, nw = H // wh, W // ww
    if windows.shape[0] % (nh * nw):
        raise ValueError(
            f"{windows.shape[0]} windows cannot tile a batch of {H}x{W} maps "
            f"({nh * nw} windows each)."
        )
    return rearrange(windows, "(b nh nw) wh ww c -> b (nh wh) (nw ww) c", nh=nh, nw=nw)


def _relative_position_index(wh: int, ww: int, device: torch.device | None) -> Tensor:
    ih, iw = torch.meshgrid(
        torch.arange(wh, device=device), torch.arange(ww, device=device), indexing="ij"
    )
    ih, iw = ih.flatten(), iw.flatten()  # (N,), (N,)
    dh = ih[:, None] - ih[None, :] + (wh - 1)  # (N, N), in [0, 2Wh-2]
    dw = iw[:, None] - iw[None, :] + (ww - 1)  # (N, N), in [0, 2Ww-2]
    return dh * (2 * ww - 1) + dw


@functools.lru_cache(maxsize=64)
def _relative_position_index_cached(wh: int, ww: int, device: torch.device) -> Tensor:
    # A cached tensor outlives the call: never let it be an inference tensor, which autograd
    # could not save for a later backward.
    with torch.inference_mode(False):
        return _relative_position_index(wh, ww, device)


def relative_position_index(window_size: int | Pair, device: torch.device | str | None = None) -> Tensor:
    """Index into the relative position bias table, as in Swin.

    Entry `[i, j]` is `(dh + Wh - 1) * (2 * Ww - 1) + (dw + Ww - 1)`, where `(dh, dw)` is the
    offset from key `j` to query `i` inside the window.

    Args:
        window_size: `Wh` or `(Wh, Ww)`.
        device: where to build it.

    Returns:
        `(N, N)` int64, values in `[0, (2Wh-1)(2Ww-1))`.
    """
    wh, ww = to_pair(window_size, "window_size")
    return _relative_position_index(wh, ww, None if device is None else torch.device(device))


def _region_ids(length: int, window: int, shift: int, device: torch.device | None) -> Tensor:
    # Swin labels the shifted map in three bands per axis: [0, L-w), [L-w, L-s), [L-s, L).
    pos = torch.arange(length, device=device)
    return (pos >= length - window).long() + (pos >= length - shift).long()


def _shifted_window_mask(
    hp: int, wp: int, wh: int, ww: int, sh: int, sw: int, device: torch.device | None
) -> Tensor:
    rh = _region_ids(hp, wh, sh, device) if sh else torch.zeros(hp, dtype=torch.long, device=device)
    rw = _region_ids(wp, ww, sw, device) if sw else torch.zeros(wp, dtype=torch.long, device=device)
    region = (rh[:, None] * 3 + rw[None, :])[None, :, :, None]  # (1, Hp, Wp, 1)
    region = rearrange(
        region, "1 (nh wh) (nw ww) 1 -> (nh nw) (wh ww)", wh=wh, ww=ww
    )  # (nW, N)
    different = region[:, :, None] != region[:, None, :]  # (nW, N, N)
    return different.float() * MASK_VALUE


@functools.lru_cache(maxsize=128)
def _shifted_window_mask_cached(
    hp: int, wp: int, wh: int, ww: int, sh: int, sw: int, device: torch.device
) -> Tensor:
    with torch.inference_mode(False):  # see _relative_position_index_cached
        return _shifted_window_mask(hp, wp, wh, ww, sh, sw, device)


def shifted_window_mask(
    size: tuple[int, int],
    window_size: int | Pair,
    shift_size: int | Pair,
    device: torch.device | str | None = None,
) -> Tensor:
    """Additive attention mask of shifted windows, with Swin/STF semantics.

    After the cyclic shift, windows along the bottom and right edges hold tokens from up to
    three bands per axis that were not neighbours before the shift. Pairs of tokens from
    different bands get `MASK_VALUE` (-100); all other pairs get 0. Padding tokens are not
    masked: they belong to whatever band their position falls in, as in the official STF code.

    Args:
        size: `(Hp, Wp)`, the padded map size (multiples of the window).
        window_size: `Wh` or `(Wh, Ww)`.
        shift_size: `sh` or `(sh, sw)`, each in `[0, window)`.
        device: where to build it.

    Returns:
        `(nW, N, N)` float32 with values in `{0, -100}`.

    Example:
        >>> shifted_window_mask((8, 8), 4, 2).shape
        torch.Size([4, 16, 16])
    """
    wh, ww = to_pair(window_size, "window_size")
    sh, sw = to_pair(shift_size, "shift_size", allow_zero=True)
    hp, wp = size
    if hp % wh or wp % ww:
        raise ValueError(
            f"shifted_window_mask needs the padded size, a multiple of the window; got "
            f"size={(hp, wp)} and window_size={(wh, ww)}. Use padded_size() first."
        )
    _check_shift((wh, ww), (sh, sw))
    return _shifted_window_mask(hp, wp, wh, ww, sh, sw, None if device is None else torch.device(device))


# ---------------------------------------------------------------------------------------------
# Cached geometry for the backends. Inside torch.compile the tensors are rebuilt in the graph
# (a handful of arange ops) so that tracing never sees a Python-side cache.


def geometry_index(window_size: Pair, device: torch.device) -> Tensor:
    """Cached `relative_position_index` for the backends. `(N, N)` int64."""
    if torch.compiler.is_compiling():
        return _relative_position_index(*window_size, device)
    return _relative_position_index_cached(*window_size, device)


def geometry_mask(
    padded: tuple[int, int], window_size: Pair, shift_size: Pair, device: torch.device
) -> Tensor:
    """Cached `shifted_window_mask` for the backends. `(nW, N, N)` float32."""
    if torch.compiler.is_compiling():
        return _shifted_window_mask(*padded, *window_size, *shift_size, device)
    return _shifted_window_mask_cached(*padded, *window_size, *shift_size, device)


# ---------------------------------------------------------------------------------------------
# Validation shared by the modules and the entry point.


def _check_map(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if x.dim() != 4:
        raise ValueError(
            f"{name} must be a channels-last map of shape (B, H, W, C), got {name}.shape="
            f"{tuple(x.shape)} ({x.dim()} dims). For NCHW input use x.permute(0, 2, 3, 1) "
            f"or WindowAttentionBlock."
        )
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor, got {name}.dtype={x.dtype}; "
            f"convert with .float() (or .half()/.bfloat16())."
        )
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise ValueError(
            f"{name} has an empty spatial size (H, W)={tuple(x.shape[1:3])}; H and W must be >= 1."
        )


def _check_shift(window: Pair, shift: Pair) -> None:
    for axis, s, w in zip(("height", "width"), shift, window):
        if not 0 <= s < w:
            raise ValueError(
                f"shift_size must be in [0, window_size) on each axis, got shift_size={shift} "
                f"with window_size={window} ({axis}); use shift_size=window_size // 2 for Swin's "
                f"shifted windows or 0 for plain ones."
            )


def window_attention(
    qkv: Tensor,
    num_heads: int,
    window_size: int | Pair,
    shift_size: int | Pair = 0,
    *,
    bias_table: Tensor | None = None,
    bias: Tensor | None = None,
    scale: float | None = None,
    pad_qkv: Tensor | None = None,
    dropout_p: float = 0.0,
    backend: str | None = None,
) -> Tensor:
    """Multi-head self-attention inside (shifted) windows of a map, from its qkv projection.

    This is the one entry point through which every winattn module computes attention. It
    pads the map at the bottom and right to a multiple of the window, applies the cyclic shift
    and its mask, attends inside every window with the relative position bias, reverses the
    shift and crops back. What it computes is defined by the reference backend
    (`winattn.backends.reference`); the other backends compute the same thing faster.

    Args:
        qkv: `(B, H, W, 3 * C)`, the output of the qkv projection on the map, its last axis
            ordered `(3, num_heads, head_dim)` as Swin's `qkv` linear layer writes it.
        num_heads: number of heads; `C` must be a multiple of it.
        window_size: `Wh` or `(Wh, Ww)`.
        shift_size: `sh` or `(sh, sw)`, each in `[0, window)`. Zero means plain windows.
        bias_table: `((2Wh-1)(2Ww-1), num_heads)`, the relative position bias table.
        bias: `(num_heads, N, N)`, a precomputed bias added to the logits (instead of a table).
        scale: logit scale; defaults to `head_dim ** -0.5`.
        pad_qkv: `(3 * C,)`, the qkv of a padding token. Padding is applied to the module's
            input, before the projection, so this is the projection's bias; `None` means zeros.
        dropout_p: dropout probability on the attention weights (pass 0 in eval mode).
        backend: `"reference"`, `"sdpa"`, `"triton"` or `"auto"`; `None` uses the current
            default (see `winattn.set_backend`).

    Returns:
        `(B, H, W, C)`, the attention output before the output projection, heads concatenated.

    Example:
        >>> qkv = torch.randn(2, 10, 13, 3 * 32)
        >>> window_attention(qkv, num_heads=4, window_size=4, shift_size=2).shape
        torch.Size([2, 10, 13, 32])
    """
    from winattn.backends import AttentionCall, dispatch

    call = AttentionCall.build(
        qkv,
        num_heads=num_heads,
        window_size=window_size,
        shift_size=shift_size,
        bias_table=bias_table,
        bias=bias,
        scale=scale,
        pad_qkv=pad_qkv,
        dropout_p=dropout_p,
    )
    return dispatch(call, backend)


def default_scale(head_dim: int) -> float:
    """`head_dim ** -0.5`, the usual logit scale."""
    return 1.0 / math.sqrt(head_dim)
