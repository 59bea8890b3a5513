# SPDX-License-Identifier: Apache-2.0
"""CompressAI's development line: `compressai.layers.attn.WMSA`, the one host module under its
`Block`, `SwinBlock`, `ConvTransBlock`, `SWAtten` and `WinNoShiftAttention` (so WACNN, STF's
window blocks, TCM and every other model built from them).

`WMSA` pads, rolls, masks on the padded map, partitions, calls its Swin-v1 `attn` (a timm
`WindowAttention`), reverses, rolls back, crops and applies `output_proj` (a `Linear`, or an
`Identity` in the STF/WACNN topology): winattn's own geometry, so the whole path is one
`window_attention` call. Recognised by structure: children `attn` (Swin-v1) and `output_proj`,
integer `window_size` and `shift_size`.
"""

from __future__ import annotations

from torch import Tensor, nn

from winattn._utils import Pair, to_pair
from winattn.patch.hosts.base import Swap, SwappedBlock
from winattn.patch.hosts.swin_v1 import attention_parts, is_swin_v1_attention

__all__ = ["CompressaiWMSA", "SwappedCompressaiWMSA"]


class CompressaiWMSA:
    """CompressAI's `WMSA`: `output_proj(window attention(x))` on `(B, H, W, C)` maps."""

    name = "CompressAI WMSA"

    def matches(self, m: nn.Module) -> bool:
        return (
            set(dict(m.named_children())) == {"attn", "output_proj"}
            and is_swin_v1_attention(m.attn)
            and isinstance(getattr(m, "window_size", None), int)
            and isinstance(getattr(m, "shift_size", None), int)
        )

    def build(self, m: nn.Module, path: str, window_size: Pair | None, backend: str | None) -> Swap:
        parts = attention_parts(m.attn, f"{path}.attn", window_size)
        shift = to_pair(m.shift_size, "shift_size", allow_zero=True)
        new = SwappedCompressaiWMSA(m, parts.num_heads, parts.window_size, shift, parts.scale, backend)
        proj = "with output_proj" if isinstance(m.output_proj, nn.Linear) else "no output_proj"
        return Swap(new, "block", parts.dim, parts.window_size, shift, f"pads then rolls, {proj}")


class SwappedCompressaiWMSA(SwappedBlock):
    """CompressAI's `WMSA` with its whole path as one `window_attention` call.

    Shapes:
        x: `(B, H, W, C)` -> `(B, H, W, C_out)`.
    """

    def forward(self, x: Tensor) -> Tensor:
        """Args:
            x: `(B, H, W, C)`.

        Returns:
            `(B, H, W, C_out)`.
        """
        attn = self.attn
        out = self.attend(attn.qkv(x), attn.relative_position_bias_table, attn.qkv.bias, attn.attn_drop.p)
        return self.output_proj(attn.proj_drop(attn.proj(out)))
