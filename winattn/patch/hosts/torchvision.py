# SPDX-License-Identifier: Apache-2.0
"""torchvision's Swin-v1 `ShiftedWindowAttention`, which does the whole path on a map itself.

torchvision pads before the qkv projection (as winattn does), then turns the shift off on an
axis whose window covers the padded map; `MapLevelAttention` does the same, per call, in one
`window_attention` call.
"""

from __future__ import annotations

from torch import nn

from winattn._utils import Pair, to_pair
from winattn.functional import padded_size
from winattn.modules import WindowAttention
from winattn.patch.hosts.base import Swap, dropout_p
from winattn.patch.hosts.swin_v1 import (
    HostIndexLayout,
    attention_from,
    attention_parts,
    is_swin_v1_attention,
)

__all__ = ["MapLevelAttention", "TorchvisionShiftedWindowAttention"]


class TorchvisionShiftedWindowAttention:
    """torchvision's `ShiftedWindowAttention`: a Swin-v1 attention that takes the map."""

    name = "torchvision ShiftedWindowAttention"

    def matches(self, m: nn.Module) -> bool:
        return (
            is_swin_v1_attention(m)
            and type(m).__module__.startswith("torchvision")
            and hasattr(m, "shift_size")
        )

    def build(self, m: nn.Module, path: str, window_size: Pair | None, backend: str | None) -> Swap:
        parts = attention_parts(m, path, window_size)
        shift = to_pair(tuple(m.shift_size), "shift_size", allow_zero=True)
        new = attention_from(MapLevelAttention, m, parts, shift, backend)
        new.proj_drop = nn.Dropout(dropout_p(getattr(m, "dropout", 0.0)))
        return Swap(new, "block", parts.dim, parts.window_size, shift, "shift off where the window covers the map")


class MapLevelAttention(HostIndexLayout, WindowAttention):
    """Drop-in for torchvision's `ShiftedWindowAttention`: shifted window attention on a map.

    As torchvision does, the shift is turned off on an axis whose window covers the padded map;
    otherwise this is `WindowAttention`.

    Shapes:
        x: `(B, H, W, C)` -> `(B, H, W, C)`.

    Example:
        >>> import torch
        >>> attn = MapLevelAttention(dim=32, num_heads=4, window_size=7, shift_size=3)
        >>> attn(torch.randn(1, 5, 20, 32)).shape
        torch.Size([1, 5, 20, 32])
    """

    def _shift_for(self, size: tuple[int, int]) -> tuple[int, int]:
        hp, wp = padded_size(size, self.window_size)
        (wh, ww), (sh, sw) = self.window_size, self.shift_size
        return (0 if wh >= hp else sh, 0 if ww >= wp else sw)
