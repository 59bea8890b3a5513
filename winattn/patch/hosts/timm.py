# SPDX-License-Identifier: Apache-2.0
"""timm's Swin-v1 `SwinTransformerBlock` (also the layers of CompressAI's STF port).

timm rolls the map first and pads it afterwards, and its mask labels the three bands of each
axis on the *padded* map. Where an axis needs no padding or has no shift this is exactly
winattn's pad-then-roll geometry. Where an axis is both shifted and padded, the swapped block
rolls that axis back by the shift on the padded map before the call and forward again after it,
which makes the one `window_attention` call see timm's layout: the outputs match timm for every
input size. `always_partition` and the window/shift that timm fixed at construction are read
from the block; with or without `dynamic_mask` the mask is built for the actual input size (a
static mask only serves inputs of the size it was built for, where both agree).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from winattn._utils import Pair, to_pair
from winattn.functional import padded_size
from winattn.patch.hosts.base import Swap, SwappedBlock
from winattn.patch.hosts.swin_v1 import attention_parts, is_swin_v1_attention

__all__ = ["SwappedTimmSwinBlock", "TimmSwinBlock"]

_CHILDREN = ("norm1", "attn", "drop_path1", "norm2", "mlp", "drop_path2")


class TimmSwinBlock:
    """timm's `SwinTransformerBlock`: `norm1`, `attn`, `drop_path1`, `norm2`, `mlp`, `drop_path2`."""

    name = "timm SwinTransformerBlock"

    def matches(self, m: nn.Module) -> bool:
        return (
            type(m).__module__.startswith("timm.")
            and all(isinstance(getattr(m, k, None), nn.Module) for k in _CHILDREN)
            and is_swin_v1_attention(m.attn)
            and hasattr(m, "shift_size")
            and hasattr(m, "window_size")
            and set(dict(m.named_children())) <= set(_CHILDREN)
        )

    def build(self, m: nn.Module, path: str, window_size: Pair | None, backend: str | None) -> Swap:
        parts = attention_parts(m.attn, f"{path}.attn", window_size)
        window = to_pair(tuple(m.window_size), "window_size")
        shift = to_pair(tuple(m.shift_size), "shift_size", allow_zero=True)
        if window != parts.window_size:
            raise ValueError(
                f"{path!r} partitions windows of {window} but its attention has a bias table for "
                f"{parts.window_size}; this block cannot run as built, so it is not swapped."
            )
        new = SwappedTimmSwinBlock(m, parts.num_heads, window, shift, parts.scale, backend)
        return Swap(new, "block", parts.dim, window, shift, "rolls then pads, as timm")


    def probe_sizes(self, m: nn.Module, window: Pair) -> list[tuple[int, int]]:
        """A static mask serves only its input size; a dynamic one, sizes that need padding."""
        wh, ww = window
        if getattr(m, "attn_mask", None) is not None and not getattr(m, "dynamic_mask", False):
            return [tuple(m.input_resolution)]
        return [(2 * wh + wh // 2 + 1, 3 * ww - 1), (2 * wh, 2 * ww)]


class SwappedTimmSwinBlock(SwappedBlock):
    """timm's `SwinTransformerBlock` with its attention path as one `window_attention` call.

    State-dict keys, parameters and buffers are the host's (see `SwappedBlock`).

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
        x = x + self.drop_path1(self._attn(self.norm1(x)))
        x = x.reshape(b, h * w, c)  # (B, HW, C)
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x.reshape(b, h, w, c)

    def _attn(self, x: Tensor) -> Tensor:
        h, w = x.shape[1], x.shape[2]
        hp, wp = padded_size((h, w), self.window_size)
        # Axes that are shifted and padded: timm rolls before padding there.
        sh = self.shift_size[0] if hp != h else 0
        sw = self.shift_size[1] if wp != w else 0
        if sh or sw:
            x = torch.roll(x, (-sh, -sw), dims=(1, 2))
            x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h))  # (B, Hp, Wp, C), zeros as timm
            x = torch.roll(x, (sh, sw), dims=(1, 2))
        attn = self.attn
        out = self.attend(
            attn.qkv(x),  # (B, H', W', 3C)
            attn.relative_position_bias_table,
            attn.qkv.bias,
            attn.attn_drop.p,
        )  # (B, H', W', C)
        out = attn.proj_drop(attn.proj(out))
        if sh or sw:
            out = torch.roll(out, (-sh, -sw), dims=(1, 2))[:, :h, :w]  # (B, H, W, C)
            out = torch.roll(out, (sh, sw), dims=(1, 2))
        return out
