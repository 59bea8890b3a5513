# SPDX-License-Identifier: Apache-2.0
"""Swapping Swin-v1-style window attention (timm, torchvision, official STF) for winattn's.

A Swin-v1 window attention is recognised by its parameters: `qkv` and `proj` linear layers and a
`relative_position_bias_table` (Swin-v2's `logit_scale`/`cpb_mlp` are not Swin-v1 and are left
alone). Two calling conventions exist, and each gets its own drop-in module, a subclass of
`winattn.WindowAttention` that reuses the original's `qkv`, `proj` and bias table (the same
`Parameter` objects, so optimisers and state-dict keys are unaffected):

* window level (timm's and STF's `WindowAttention`): the caller partitions, shifts and masks and
  calls `attn(windows, mask)` with `windows: (B * nW, N, C)` and `mask: (nW, N, N)` or None.
  `WindowLevelAttention` computes the same thing through `winattn.functional.window_attention`,
  running each window as a one-window map; windows that share a mask pattern (a shifted map has
  at most four) go through one call with the pattern added to the relative position bias.
  The caller keeps its own padding and roll order (timm 1.0 rolls, then pads), so outputs match
  for every input size.
* map level (torchvision's `ShiftedWindowAttention`): `attn(x)` with `x: (B, H, W, C)`.
  torchvision pads before the qkv projection (as winattn does), then turns the shift off on an
  axis whose window covers the padded map; `MapLevelAttention` does the same, per call.

Neither class imports timm or torchvision.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from winattn._utils import Pair, to_pair
from winattn.functional import padded_size, relative_position_index, window_attention
from winattn.modules import WindowAttention, WindowAttentionBlock

__all__ = ["MapLevelAttention", "WindowLevelAttention", "find_swappable", "swap_module"]


def is_swin_v1_attention(m: nn.Module) -> bool:
    """Whether `m` is a (foreign) Swin-v1 window attention: `qkv`, `proj` and a bias table."""
    if isinstance(m, WindowAttention):
        return False
    table = getattr(m, "relative_position_bias_table", None)
    return (
        isinstance(getattr(m, "qkv", None), nn.Linear)
        and isinstance(getattr(m, "proj", None), nn.Linear)
        and isinstance(table, nn.Parameter)
        and table.dim() == 2
        and not hasattr(m, "logit_scale")
        and not hasattr(m, "cpb_mlp")
    )


def _is_map_level(m: nn.Module) -> bool:
    return type(m).__module__.startswith("torchvision") and hasattr(m, "shift_size")


def find_swappable(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, nn.Module]]:
    """Yields `(parent_path, parent, key, module)` for every swappable module, in model order."""
    for path, parent in model.named_modules():
        if isinstance(parent, (WindowAttention, WindowAttentionBlock)):
            continue
        for key, child in parent.named_children():
            if is_swin_v1_attention(child):
                yield path, parent, key, child


def _window_of(m: nn.Module, path: str) -> Pair:
    window = getattr(m, "window_size", None)
    if window is not None:
        return to_pair(tuple(window) if not isinstance(window, int) else window, "window_size")
    rows = m.relative_position_bias_table.shape[0]
    side = (math.isqrt(rows) + 1) // 2
    if (2 * side - 1) ** 2 != rows:
        raise ValueError(
            f"cannot tell the window of {path!r}: it has no window_size attribute and its bias "
            f"table has {rows} rows, not (2w-1)^2; give the module a window_size attribute."
        )
    return (side, side)


def _dropout_p(value: Any) -> float:
    return float(value.p) if isinstance(value, nn.Dropout) else float(value or 0.0)


def swap_module(
    m: nn.Module, path: str, window_size: Pair | None = None, backend: str | None = None
) -> WindowAttention:
    """Builds the winattn module that replaces the Swin-v1 attention `m`, reusing its weights.

    Args:
        m: the module to replace (see `is_swin_v1_attention`).
        path: its dotted path, for error messages.
        window_size: the window asked for; must equal `m`'s (its weights fix it), or None.
        backend: winattn backend of the new module.

    Returns:
        a `MapLevelAttention` (torchvision) or `WindowLevelAttention` (timm, STF, others).

    Raises:
        ValueError: `window_size` differs from `m`'s window, or `m`'s projections do not map
            `dim -> dim` (timm's `head_dim` override).
    """
    window = _window_of(m, path)
    if window_size is not None and tuple(window_size) != window:
        raise ValueError(
            f"window_size={window_size} does not fit {path!r}, whose weights fix its window at "
            f"{window}; pass window_size=None to swap."
        )
    dim = m.qkv.in_features
    if m.qkv.out_features != 3 * dim or m.proj.in_features != dim or m.proj.out_features != dim:
        raise ValueError(
            f"{path!r} projects {dim} channels to qkv of {m.qkv.out_features} and back from "
            f"{m.proj.in_features}; winattn needs qkv: dim -> 3 * dim and proj: dim -> dim."
        )
    table = m.relative_position_bias_table
    num_heads = int(getattr(m, "num_heads", table.shape[1]))
    map_level = _is_map_level(m)
    cls = MapLevelAttention if map_level else WindowLevelAttention
    shift = to_pair(tuple(m.shift_size), "shift_size", allow_zero=True) if map_level else (0, 0)
    new = cls(
        dim,
        num_heads,
        window,
        shift,
        qkv_bias=m.qkv.bias is not None,
        qk_scale=float(getattr(m, "scale", (dim // num_heads) ** -0.5)),
        attn_drop=_dropout_p(getattr(m, "attention_dropout", getattr(m, "attn_drop", 0.0))),
        backend=backend,
        device="meta",
    )
    new.qkv = m.qkv
    new.proj = m.proj
    new.relative_position_bias_table = table
    # Keep the host's state-dict keys: STF saves the index (persistent), timm does not.
    persistent = "relative_position_index" in m.state_dict()
    new.register_buffer(
        "relative_position_index",
        relative_position_index(window, device=table.device),
        persistent=persistent,
    )  # (N, N)
    dropout = getattr(m, "proj_drop", None)
    new.proj_drop = dropout if isinstance(dropout, nn.Dropout) else nn.Dropout(_dropout_p(getattr(m, "dropout", 0.0)))
    new.train(m.training)
    return new


class WindowLevelAttention(WindowAttention):
    """Drop-in for a window-level Swin attention: `attn(windows, mask)`, as timm and STF call it.

    Args:
        *args: as `WindowAttention` (`shift_size` must be 0: the caller shifts).
        **kwargs: as `WindowAttention`.

    Shapes:
        x: `(B * nW, N, C)` with `N = Wh * Ww`, windows batch-major;
        mask: `(nW, N, N)` additive, or None -> `(B * nW, N, C)`.

    Example:
        >>> attn = WindowLevelAttention(dim=32, num_heads=4, window_size=4)
        >>> attn(torch.randn(6, 16, 32), mask=torch.zeros(3, 16, 16)).shape
        torch.Size([6, 16, 32])
    """

    def forward(self, x: Tensor, mask: Tensor | None = None, backend: str | None = None) -> Tensor:
        """Args:
            x: `(B * nW, N, C)`.
            mask: `(nW, N, N)` or None.
            backend: per-call backend override.

        Returns:
            `(B * nW, N, C)`.
        """
        wh, ww = self.window_size
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[1:] != (wh * ww, self.dim):
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"x must be windows of shape (B * nW, {wh * ww}, {self.dim}), got {shape}."
            )
        qkv = rearrange(self.qkv(x), "bw (wh ww) c -> bw wh ww c", wh=wh)  # (B*nW, Wh, Ww, 3C)
        if mask is None:
            out = self._attend(qkv, None, backend)  # (B*nW, Wh, Ww, C)
        else:
            out = self._attend_masked(qkv, mask, backend)
        out = rearrange(out, "bw wh ww c -> bw (wh ww) c")  # (B*nW, N, C)
        return self.proj_drop(self.proj(out))

    def _attend(self, qkv: Tensor, bias: Tensor | None, backend: str | None) -> Tensor:
        return window_attention(
            qkv,
            self.num_heads,
            self.window_size,
            0,
            bias_table=self.relative_position_bias_table if bias is None else None,
            bias=bias,
            scale=self.scale,
            dropout_p=self.attn_drop if self.training else 0.0,
            backend=backend or self.backend,
        )

    def _dense_bias(self, dtype: torch.dtype) -> Tensor:
        n = self.window_size[0] * self.window_size[1]
        if self.relative_position_bias_table is None:
            return torch.zeros(self.num_heads, n, n, dtype=dtype, device=self.qkv.weight.device)
        table = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        return table.reshape(n, n, self.num_heads).permute(2, 0, 1).to(dtype)  # (heads, N, N)

    def _attend_masked(self, qkv: Tensor, mask: Tensor, backend: str | None) -> Tensor:
        nw, n = mask.shape[0], qkv.shape[1] * qkv.shape[2]
        if mask.shape != (nw, n, n) or qkv.shape[0] % nw:
            raise ValueError(
                f"mask must be (nW, {n}, {n}) with nW dividing the {qkv.shape[0]} windows, "
                f"got mask.shape={tuple(mask.shape)}."
            )
        qkv = rearrange(qkv, "(b nw) wh ww c -> b nw wh ww c", nw=nw)  # (B, nW, Wh, Ww, 3C)
        patterns, inverse = torch.unique(mask.reshape(nw, n * n), dim=0, return_inverse=True)
        dense = self._dense_bias(qkv.dtype)  # (heads, N, N)
        outs, order = [], []
        for i, pattern in enumerate(patterns):
            sel = (inverse == i).nonzero().squeeze(1)  # (g,)
            group = rearrange(qkv[:, sel], "b g wh ww c -> (b g) wh ww c")  # (B*g, Wh, Ww, 3C)
            bias = dense + pattern.reshape(1, n, n).to(dense.dtype)  # (heads, N, N)
            out = self._attend(group, bias, backend)  # (B*g, Wh, Ww, C)
            outs.append(rearrange(out, "(b g) wh ww c -> b g wh ww c", g=sel.numel()))
            order.append(sel)
        out = torch.cat(outs, dim=1)[:, torch.argsort(torch.cat(order))]  # (B, nW, Wh, Ww, C)
        return rearrange(out, "b nw wh ww c -> (b nw) wh ww c")  # (B*nW, Wh, Ww, C)


class MapLevelAttention(WindowAttention):
    """Drop-in for torchvision's `ShiftedWindowAttention`: shifted window attention on a map.

    As torchvision does, the shift is turned off on an axis whose window covers the padded map;
    otherwise this is `WindowAttention`.

    Shapes:
        x: `(B, H, W, C)` -> `(B, H, W, C)`.

    Example:
        >>> attn = MapLevelAttention(dim=32, num_heads=4, window_size=7, shift_size=3)
        >>> attn(torch.randn(1, 5, 20, 32)).shape
        torch.Size([1, 5, 20, 32])
    """

    def _shift_for(self, size: tuple[int, int]) -> tuple[int, int]:
        hp, wp = padded_size(size, self.window_size)
        (wh, ww), (sh, sw) = self.window_size, self.shift_size
        return (0 if wh >= hp else sh, 0 if ww >= wp else sw)
