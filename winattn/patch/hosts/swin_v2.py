# SPDX-License-Identifier: Apache-2.0
"""Swin-V2 blocks: timm's `SwinTransformerV2Block` and torchvision's `SwinTransformerBlockV2`.

Both compute Swin-V2's scaled cosine attention with a continuous position bias
(`logit_scale`, `cpb_mlp`, `relative_coords_table`) in a post-norm block,
`x + norm1(attn(x))`, `x + norm2(mlp(x))`. The swapped blocks keep the host's parameters and
buffers (see `SwappedBlock`) and run the attention as one `window_attention` call with
`logit_scale=` and the bias table `continuous_position_bias(cpb_mlp, relative_coords_table)`.

Where the two hosts differ:

* qkv bias: timm keeps `q_bias`, `v_bias` and a zero, non-persistent `k_bias`; torchvision
  keeps one `qkv.bias` and zeroes its k third at every call (so a stored k bias has no
  effect, and no gradient).
* geometry: timm rolls, then pads (as its Swin-v1 block; the same per-axis correction as
  `winattn.patch.hosts.timm` makes one call see its layout), with the window and shift it
  fixed for its input resolution; torchvision pads, then rolls (winattn's order), and turns
  the shift off on an axis whose window covers the padded map, per call.
* buffers: timm's `relative_coords_table` and `relative_position_index` `(N, N)` are
  non-persistent; torchvision saves both, its index flattened `(N * N,)`. They are adopted
  as they are, so the state-dict keys stay the host's.
* torchvision normalises the relative coordinates by `window - 1` and has no pretrained
  window size; timm by `max(pretrained window - 1, 1)`. The host's table is used as built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from winattn._utils import Pair, to_pair
from winattn.functional import (
    continuous_position_bias,
    padded_size,
    relative_position_index,
    window_attention,
)
from winattn.patch.hosts.base import Swap, SwappedBlock, dropout_p
from winattn.patch.hosts.timm import TimmSwinBlock

__all__ = [
    "SwappedTimmSwinV2Block",
    "SwappedTorchvisionSwinV2Block",
    "TimmSwinV2Block",
    "TorchvisionSwinV2Block",
    "is_swin_v2_attention",
]


def is_swin_v2_attention(m: nn.Module) -> bool:
    """Whether `m` is a Swin-V2 window attention: `qkv`, `proj`, `logit_scale`, `cpb_mlp` and
    a `relative_coords_table`."""
    return (
        isinstance(getattr(m, "qkv", None), nn.Linear)
        and isinstance(getattr(m, "proj", None), nn.Linear)
        and isinstance(getattr(m, "logit_scale", None), nn.Parameter)
        and isinstance(getattr(m, "cpb_mlp", None), nn.Module)
        and isinstance(getattr(m, "relative_coords_table", None), Tensor)
        and hasattr(m, "num_heads")
    )


def _has_children(m: nn.Module, prefix: str, children: tuple[str, ...]) -> bool:
    return (
        type(m).__module__.startswith(prefix)
        and set(dict(m.named_children())) == set(children)
        and is_swin_v2_attention(m.attn)
    )


def _check_attention(attn: nn.Module, path: str, window: Pair, window_size: Pair | None) -> tuple[int, int]:
    """`(dim, num_heads)` of a Swin-V2 attention whose weights and buffers fit `window`.

    Raises:
        ValueError: `window_size` differs from the host's, the projections do not map
            `dim -> dim`, or the host's coordinates table or index is not for `window`.
    """
    if window_size is not None and tuple(window_size) != window:
        raise ValueError(
            f"window_size={window_size} does not fit {path!r}, whose window is {window}; pass "
            f"window_size=None to swap."
        )
    dim, num_heads = attn.qkv.in_features, int(attn.num_heads)
    if attn.qkv.out_features != 3 * dim or attn.proj.in_features != dim or attn.proj.out_features != dim:
        raise ValueError(
            f"{path!r} projects {dim} channels to qkv of {attn.qkv.out_features} and back from "
            f"{attn.proj.in_features}; winattn needs qkv: dim -> 3 * dim and proj: dim -> dim."
        )
    wh, ww = window
    table = attn.relative_coords_table
    index = getattr(attn, "relative_position_index", None)
    ours = relative_position_index(window, device=table.device)
    if tuple(table.shape) != (1, 2 * wh - 1, 2 * ww - 1, 2) or (
        index is not None and (index.numel() != ours.numel() or not torch.equal(index.reshape(-1), ours.reshape(-1)))
    ):
        raise ValueError(
            f"{path!r} has a relative_coords_table of shape {tuple(table.shape)} or a "
            f"relative_position_index that is not Swin's for its window {window}; it is not "
            f"swapped."
        )
    return dim, num_heads


class SwappedSwinV2Block(SwappedBlock):
    """Base of the swapped Swin-V2 blocks: the attention of `self.attn` on a map as one
    `window_attention` call."""

    def attend_v2(self, x: Tensor, qkv_bias: Tensor | None, shift: Pair, attn_drop: float) -> Tensor:
        """`(B, H, W, C)` -> `(B, H, W, C)`, the attention before the output projection."""
        attn = self.attn
        return window_attention(
            F.linear(x, attn.qkv.weight, qkv_bias),  # (B, H, W, 3C)
            self.num_heads,
            self.window_size,
            shift,
            bias_table=continuous_position_bias(attn.cpb_mlp, attn.relative_coords_table, self.num_heads),
            logit_scale=attn.logit_scale,
            pad_qkv=qkv_bias,
            dropout_p=attn_drop if self.training else 0.0,
            backend=self.backend,
        )


def _swap(
    cls: type[SwappedSwinV2Block], m: nn.Module, geometry: nn.Module, path: str,
    window_size: Pair | None, backend: str | None, note: str,
) -> Swap:
    """The `Swap` of block `m` by `cls`, with the window and shift that `geometry` holds."""
    window = to_pair(tuple(geometry.window_size), "window_size")
    shift = to_pair(tuple(geometry.shift_size), "shift_size", allow_zero=True)
    dim, num_heads = _check_attention(m.attn, f"{path}.attn", window, window_size)
    new = cls(m, num_heads, window, shift, 1.0, backend)  # scale unused: logit_scale is per head
    return Swap(new, "block", dim, window, shift, f"cosine attention; {note}")


_TIMM_CHILDREN = ("attn", "norm1", "drop_path1", "mlp", "norm2", "drop_path2")


class TimmSwinV2Block:
    """timm's `SwinTransformerV2Block`."""

    name = "timm SwinTransformerV2Block"
    # a static mask serves only the block's input resolution, as in timm's Swin-v1 block
    probe_sizes = TimmSwinBlock.probe_sizes

    def matches(self, m: nn.Module) -> bool:
        return (
            _has_children(m, "timm.", _TIMM_CHILDREN)
            and hasattr(m, "window_size")
            and hasattr(m, "shift_size")
            and hasattr(m.attn, "q_bias")
        )

    def build(self, m: nn.Module, path: str, window_size: Pair | None, backend: str | None) -> Swap:
        if m.attn.qkv.bias is not None:
            raise ValueError(f"{path}.attn.qkv has a bias of its own, which timm's Swin-V2 never builds.")
        # timm fixes the window and shift for its input resolution on the block
        return _swap(SwappedTimmSwinV2Block, m, m, path, window_size, backend, "rolls then pads, as timm")


class SwappedTimmSwinV2Block(SwappedSwinV2Block):
    """timm's `SwinTransformerV2Block` with its attention path as one `window_attention` call.

    Shapes:
        x: `(B, H, W, C)` -> `(B, H, W, C)`.
    """

    def forward(self, x: Tensor) -> Tensor:
        """Args:
            x: `(B, H, W, C)`.

        Returns:
            `(B, H, W, C)`.
        """
        b, h, w, c = x.shape
        x = x + self.drop_path1(self.norm1(self._attn(x)))
        x = x.reshape(b, h * w, c)  # (B, HW, C)
        x = x + self.drop_path2(self.norm2(self.mlp(x)))
        return x.reshape(b, h, w, c)

    def _attn(self, x: Tensor) -> Tensor:
        h, w = x.shape[1], x.shape[2]
        hp, wp = padded_size((h, w), self.window_size)
        # Axes that are shifted and padded: timm rolls before padding there (its padding
        # tokens then sit inside the map, after the wrapped tokens).
        sh = self.shift_size[0] if hp != h else 0
        sw = self.shift_size[1] if wp != w else 0
        if sh or sw:
            x = F.pad(torch.roll(x, (-sh, -sw), dims=(1, 2)), (0, 0, 0, wp - w, 0, hp - h))  # (B, Hp, Wp, C)
            x = torch.roll(x, (sh, sw), dims=(1, 2))
        attn = self.attn
        bias = None if attn.q_bias is None else torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))  # (3C,)
        out = attn.proj_drop(attn.proj(self.attend_v2(x, bias, self.shift_size, attn.attn_drop.p)))
        if sh or sw:
            out = torch.roll(out, (-sh, -sw), dims=(1, 2))[:, :h, :w]  # (B, H, W, C)
            out = torch.roll(out, (sh, sw), dims=(1, 2))
        return out


_TORCHVISION_CHILDREN = ("norm1", "attn", "stochastic_depth", "norm2", "mlp")


class TorchvisionSwinV2Block:
    """torchvision's `SwinTransformerBlockV2` (its attention is `ShiftedWindowAttentionV2`)."""

    name = "torchvision SwinTransformerBlockV2"

    def matches(self, m: nn.Module) -> bool:
        return (
            _has_children(m, "torchvision", _TORCHVISION_CHILDREN)
            and hasattr(m.attn, "window_size")
            and hasattr(m.attn, "shift_size")
        )

    def build(self, m: nn.Module, path: str, window_size: Pair | None, backend: str | None) -> Swap:
        note = "shift off where the window covers the map"
        return _swap(SwappedTorchvisionSwinV2Block, m, m.attn, path, window_size, backend, note)


class SwappedTorchvisionSwinV2Block(SwappedSwinV2Block):
    """torchvision's `SwinTransformerBlockV2` with its attention as one `window_attention` call.

    Shapes:
        x: `(B, H, W, C)` -> `(B, H, W, C)`.
    """

    def forward(self, x: Tensor) -> Tensor:
        """Args:
            x: `(B, H, W, C)`.

        Returns:
            `(B, H, W, C)`.
        """
        x = x + self.stochastic_depth(self.norm1(self._attn(x)))
        return x + self.stochastic_depth(self.norm2(self.mlp(x)))

    def _attn(self, x: Tensor) -> Tensor:
        attn = self.attn
        hp, wp = padded_size((x.shape[1], x.shape[2]), self.window_size)
        (wh, ww), (sh, sw) = self.window_size, self.shift_size
        shift = (0 if wh >= hp else sh, 0 if ww >= wp else sw)  # torchvision's rule
        bias = attn.qkv.bias
        if bias is not None:  # torchvision zeroes the k third of the bias at every call
            c = bias.shape[0] // 3
            bias = torch.cat((bias[:c], torch.zeros_like(bias[c : 2 * c]), bias[2 * c :]))  # (3C,)
        out = self.attend_v2(x, bias, shift, dropout_p(attn.attention_dropout))
        return F.dropout(attn.proj(out), p=dropout_p(attn.dropout), training=self.training)
