# SPDX-License-Identifier: Apache-2.0
"""Swin-v1 window attention (`qkv`, `proj`, `relative_position_bias_table`), as timm, the
official STF code and CompressAI build it: recognition, and the window-level fallback.

The block-level adapters (`timm.py`, `stf.py`, `compressai.py`, `swin_block.py`) read the
attention's weights through `attention_parts`. Where the module around such an attention is of
no family that can be swapped whole (or its swap fails the probe), the attention alone may be
swapped for `WindowLevelAttention` (level `"window"`): the host keeps its own roll, padding,
partition and mask, and calls the swapped module on the windows. `winattn.patch.swap` does that
only on CUDA: on the CPU it is slower than the host's own attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from winattn._utils import Pair, to_pair
from winattn.functional import (
    relative_position_index,
    shifted_window_mask,
    window_attention,
    window_partition,
)
from winattn.modules import WindowAttention
from winattn.patch.hosts.base import Swap, dropout_p, share_hooks

__all__ = [
    "AttentionParts",
    "SwinV1Attention",
    "WindowLevelAttention",
    "attention_from",
    "attention_parts",
    "is_swin_v1_attention",
]


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
        and not hasattr(m, "global_tokens")
    )


@dataclass(frozen=True)
class AttentionParts:
    """What a swapped block reads from a Swin-v1 attention."""

    dim: int
    num_heads: int
    window_size: Pair
    scale: float
    attn_drop: float


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


def attention_parts(m: nn.Module, path: str, window_size: Pair | None) -> AttentionParts:
    """Reads and checks a Swin-v1 attention's geometry.

    Raises:
        ValueError: `window_size` differs from `m`'s (its weights fix it), or `m`'s projections
            do not map `dim -> dim` (timm's `head_dim` override).
    """
    window = _window_of(m, path)
    if window_size is not None and tuple(window_size) != window:
        raise ValueError(
            f"window_size={window_size} does not fit {path!r}, whose weights fix its window at "
            f"{window}; pass window_size=None to swap."
        )
    dim = m.qkv.in_features
    wrong = [
        f"{name} maps {layer.in_features} -> {layer.out_features} channels (winattn needs {dim} -> {want})"
        for name, layer, want in (("qkv", m.qkv, 3 * dim), ("proj", m.proj, dim))
        if (layer.in_features, layer.out_features) != (dim, want)
    ]
    if wrong:
        raise ValueError(f"{path!r} ({type(m).__qualname__}): {'; '.join(wrong)}.")
    table = m.relative_position_bias_table
    num_heads = int(getattr(m, "num_heads", table.shape[1]))
    scale = float(getattr(m, "scale", (dim // num_heads) ** -0.5))
    drop = dropout_p(getattr(m, "attention_dropout", getattr(m, "attn_drop", 0.0)))
    return AttentionParts(dim, num_heads, window, scale, drop)


def attention_from(
    cls: type[WindowAttention], m: nn.Module, parts: AttentionParts, shift: Pair, backend: str | None
) -> WindowAttention:
    """A `cls` module with the Swin-v1 attention `m`'s projections, bias table and forward hooks
    (the same objects), and a relative position index with `m`'s state-dict key and layout: STF
    saves it as `(N, N)`, torchvision flat as `(N * N,)` (both persistent), timm not at all."""
    new = cls(
        parts.dim,
        parts.num_heads,
        parts.window_size,
        shift,
        qkv_bias=m.qkv.bias is not None,
        qk_scale=parts.scale,
        attn_drop=parts.attn_drop,
        backend=backend,
        device="meta",
    )
    new.qkv, new.proj = m.qkv, m.proj
    new.relative_position_bias_table = m.relative_position_bias_table
    index = relative_position_index(new.window_size, device=m.qkv.weight.device)  # (N, N)
    host_index = getattr(m, "relative_position_index", None)
    if isinstance(host_index, Tensor) and host_index.numel() == index.numel():
        index = index.reshape(host_index.shape)  # torchvision: (N * N,)
    new.register_buffer(
        "relative_position_index", index, persistent="relative_position_index" in m.state_dict()
    )
    share_hooks(new, m)
    new.train(m.training)
    return new


class HostIndexLayout:
    """Mixin for `WindowAttention` subclasses whose `relative_position_index` keeps the host's
    layout (`attention_from`): a checkpoint's index is checked against the module's own and
    loaded in that layout, so the host's checkpoints load strictly and the other way round."""

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        key = prefix + "relative_position_index"
        ours = self.relative_position_index
        if key in state_dict and ours is not None:
            given = state_dict[key]
            # checked against the index of the window, not the buffer: after `to_empty` (a model
            # built on the meta device) the buffer holds no index until this load fills it
            expected = relative_position_index(self.window_size).reshape(-1)  # (N * N,)
            if given.numel() != expected.numel() or not torch.equal(given.reshape(-1).cpu().long(), expected):
                raise ValueError(
                    f"{key} in the checkpoint (shape {tuple(given.shape)}) is not the index of "
                    f"this module's window {self.window_size}; build it with the checkpoint's window."
                )
            if "relative_position_index" in self._non_persistent_buffers_set:
                del state_dict[key]  # load_state_dict works on its own copy of the dict
            else:
                state_dict[key] = given.reshape(ours.shape)
        nn.Module._load_from_state_dict(self, state_dict, prefix, *args, **kwargs)


class SwinV1Attention:
    """Host family of last resort: a Swin-v1 attention inside a block of no known family."""

    name = "Swin-v1 window attention"

    def matches(self, m: nn.Module) -> bool:
        return is_swin_v1_attention(m)

    def build(
        self, m: nn.Module, path: str, window_size: Pair | None, backend: str | None, shift: Pair = (0, 0)
    ) -> Swap:
        parts = attention_parts(m, path, window_size)
        new = attention_from(WindowLevelAttention, m, parts, (0, 0), backend)
        dropout = getattr(m, "proj_drop", None)
        new.proj_drop = dropout if isinstance(dropout, nn.Dropout) else nn.Dropout(dropout_p(dropout))
        return Swap(new, "window", parts.dim, parts.window_size, shift, "the host block still pads, rolls and masks")

    def probe_call(self, m: nn.Module, x: Tensor) -> Tensor:
        """Calls `m` as a Swin block does: `attn(windows, mask)`, with a half-window shift's mask."""
        window = _window_of(m, "probe")
        windows = window_partition(x, window).flatten(1, 2)  # (B*nW, N, C)
        mask = shifted_window_mask(x.shape[1:3], window, (window[0] // 2, window[1] // 2), device=x.device)
        return m(windows, mask=mask)  # (B*nW, N, C)

    def probe_sizes(self, m: nn.Module, window: Pair) -> list[tuple[int, int]]:
        return [(2 * window[0], 3 * window[1])]


class WindowLevelAttention(HostIndexLayout, WindowAttention):
    """Drop-in for a window-level Swin attention: `attn(windows, mask)`, as timm and STF call it.

    Computes the same thing as the host's attention through `winattn.functional.window_attention`,
    running each window as a one-window map; windows that share a mask pattern (a shifted map has
    at most four) go through one call with the pattern added to the relative position bias.

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
