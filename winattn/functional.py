# SPDX-License-Identifier: Apache-2.0
"""Pure functions for window attention.

Layout helpers (`window_partition`, `window_reverse`) and `window_attention`, the single entry
point through which every module's attention math goes. `window_attention` resolves the
backend at call time (see `winattn.backends`). The geometry of (shifted) windows
(`padded_size`, `relative_position_index`, `shifted_window_mask`, `MASK_VALUE`) lives in
`winattn.geometry` and is re-exported here; the conventions are written out there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import rearrange
from torch import Tensor

from winattn._utils import Pair, to_pair
from winattn.backends import AttentionCall, dispatch
from winattn.geometry import (
    MASK_VALUE,
    check_map,
    default_scale,
    padded_size,
    relative_coords_table,
    relative_position_index,
    shifted_window_mask,
)

__all__ = [
    "MASK_VALUE",
    "default_scale",
    "padded_size",
    "window_partition",
    "window_reverse",
    "relative_coords_table",
    "relative_position_index",
    "shifted_window_mask",
    "continuous_position_bias",
    "window_attention",
]

#: Swin-V2 bounds its continuous position bias to `(0, CPB_MAX)` with `CPB_MAX * sigmoid`.
CPB_MAX = 16.0


def window_partition(x: Tensor, window_size: int | Pair) -> Tensor:
    """Cuts a map into non-overlapping windows.

    Args:
        x: `(B, H, W, C)`, with `H` and `W` multiples of the window.
        window_size: `Wh` or `(Wh, Ww)`.

    Returns:
        `(B * nW, Wh, Ww, C)`, windows in row-major order, batch-major.

    Example:
        >>> import torch
        >>> x = torch.randn(2, 8, 12, 3)
        >>> window_partition(x, 4).shape
        torch.Size([12, 4, 4, 3])
    """
    wh, ww = to_pair(window_size, "window_size")
    check_map(x, "x")
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


def continuous_position_bias(
    cpb_mlp: Callable[[Tensor], Tensor], coords_table: Tensor, num_heads: int
) -> Tensor:
    """Swin-V2's continuous position bias as a relative position bias table.

    `16 * sigmoid(cpb_mlp(coords_table))`, one row per relative offset: pass it to
    `window_attention` as `bias_table`. (Swin-V2 applies the sigmoid after gathering the dense
    bias; the sigmoid acts on each value alone, so applying it to the table is the same.)

    Args:
        cpb_mlp: the bias MLP, 2 inputs -> `num_heads` outputs (Swin-V2's `cpb_mlp`).
        coords_table: `(1, 2Wh-1, 2Ww-1, 2)`, see `relative_coords_table`.
        num_heads: heads.

    Returns:
        `((2Wh-1)(2Ww-1), num_heads)`, values in `(0, 16)`.

    Example:
        >>> import torch
        >>> mlp = torch.nn.Linear(2, 3)
        >>> continuous_position_bias(mlp, relative_coords_table(4), 3).shape
        torch.Size([49, 3])
    """
    out = cpb_mlp(coords_table)  # (1, 2Wh-1, 2Ww-1, heads)
    if out.shape[-1] != num_heads:
        raise ValueError(
            f"cpb_mlp must map the 2 coordinates to {num_heads=} values, got output of shape "
            f"{tuple(out.shape)}."
        )
    return CPB_MAX * torch.sigmoid(out.reshape(-1, num_heads))  # ((2Wh-1)(2Ww-1), heads)


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
    logit_scale: Tensor | None = None,
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
        backend: `"reference"`, `"sdpa"`, `"triton"`, `"exact"` (fixed point, bit-identical
            on every machine; opt-in) or `"auto"`; `None` uses the current default (see `winattn.set_backend`).
        logit_scale: `(num_heads,)` or Swin-V2's `(num_heads, 1, 1)`: turns on Swin-V2's
            scaled cosine attention. q and k are L2-normalised per head and the logits are
            `cos(q, k) * exp(min(logit_scale, log(100)))`, then the bias and the mask are
            added. Differentiable; excludes `scale`. Swin-V2's continuous position bias is a
            `bias_table` (see `continuous_position_bias`).

    Returns:
        `(B, H, W, C)`, the attention output before the output projection, heads concatenated.
        An empty batch (`B = 0`) gives an empty output on every backend.

    Raises:
        ValueError: for a bad argument, naming it and the fix: among others `C = 0` (no
            channels), tensors on different devices, and a window whose attention
            would allocate more than the memory budget (`winattn.geometry.memory_budget`).
        BackendUnavailableError: if the backend asked for cannot run the call.

    Example:
        >>> import torch
        >>> qkv = torch.randn(2, 10, 13, 3 * 32)
        >>> window_attention(qkv, num_heads=4, window_size=4, shift_size=2).shape
        torch.Size([2, 10, 13, 32])
    """
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
        logit_scale=logit_scale,
    )
    return dispatch(call, backend)

