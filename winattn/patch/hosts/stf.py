# SPDX-License-Identifier: Apache-2.0
"""The official STF code (Zou et al., CVPR 2022): `SwinTransformerBlock` of its `BasicLayer`,
and WACNN's `WinBasedAttention`.

Both pad (the block only) and then roll, with Swin's mask on the padded map: winattn's own
geometry, so the whole path is one `window_attention` call. Recognised by structure:

* the block: children `norm1`, `attn` (Swin-v1), `drop_path`, `norm2`, `mlp`, and the `H`, `W`
  attributes its `BasicLayer` sets before calling `block(x, mask)` on `(B, H * W, C)` tokens
  (the mask argument is recomputed inside, as `BasicLayer` computes it);
* `WinBasedAttention`: children `attn` (Swin-v1) and `drop_path` only, on NCHW maps, without
  padding (like the original, it refuses maps that are not multiples of the window).
"""

from __future__ import annotations

from torch import Tensor, nn

from winattn._utils import Pair, to_pair
from winattn.functional import padded_size, shifted_window_mask
from winattn.patch.hosts.base import Swap, SwappedBlock
from winattn.patch.hosts.swin_v1 import attention_parts, is_swin_v1_attention

__all__ = ["StfSwinBlock", "StfWinBasedAttention", "SwappedStfSwinBlock", "SwappedStfWinBasedAttention"]


def _children(m: nn.Module) -> set[str]:
    return set(dict(m.named_children()))


def _build(m: nn.Module, path: str, window_size: Pair | None, backend: str | None, cls: type) -> Swap:
    parts = attention_parts(m.attn, f"{path}.attn", window_size)
    shift = to_pair(m.shift_size, "shift_size", allow_zero=True)
    new = cls(m, parts.num_heads, parts.window_size, shift, parts.scale, backend)
    return Swap(new, "block", parts.dim, parts.window_size, shift, "pads then rolls, as STF")


def _attention_path(block: SwappedBlock, x: Tensor) -> Tensor:
    """Window attention of the block's Swin-v1 `attn` on a map. `(B, H, W, C)` -> `(B, H, W, C)`."""
    attn = block.attn
    out = block.attend(attn.qkv(x), attn.relative_position_bias_table, attn.qkv.bias, attn.attn_drop.p)
    return attn.proj_drop(attn.proj(out))


class StfSwinBlock:
    """The official STF `SwinTransformerBlock` (called by `BasicLayer` as `block(x, mask)`)."""

    name = "official STF SwinTransformerBlock"

    def matches(self, m: nn.Module) -> bool:
        return (
            _children(m) == {"norm1", "attn", "drop_path", "norm2", "mlp"}
            and is_swin_v1_attention(m.attn)
            and hasattr(m, "H")
            and hasattr(m, "W")
            and isinstance(getattr(m, "shift_size", None), int)
        )

    def build(self, m: nn.Module, path: str, window_size: Pair | None, backend: str | None) -> Swap:
        return _build(m, path, window_size, backend, SwappedStfSwinBlock)

    def probe_call(self, m: nn.Module, x: Tensor) -> Tensor:
        """Calls `m` as STF's `BasicLayer` does: `H`, `W` set, Swin's mask on the padded map."""
        b, h, w, c = x.shape
        m.H, m.W = h, w
        window = to_pair(m.window_size, "window_size")
        mask = shifted_window_mask(padded_size((h, w), window), window, m.shift_size, device=x.device)
        return m(x.reshape(b, h * w, c), mask)  # (B, HW, C)


class SwappedStfSwinBlock(SwappedBlock):
    """The official STF `SwinTransformerBlock`, its attention path as one `window_attention` call.

    Shapes:
        x: `(B, H * W, C)` with `H, W` set as attributes by the caller; `mask_matrix` is ignored
        (it is Swin's mask, which the call rebuilds) -> `(B, H * W, C)`.
    """

    H: int | None = None
    W: int | None = None

    def forward(self, x: Tensor, mask_matrix: Tensor | None = None) -> Tensor:
        """Args:
            x: `(B, H * W, C)`.
            mask_matrix: unused; STF's `BasicLayer` passes the shifted-window mask.

        Returns:
            `(B, H * W, C)`.
        """
        b, length, c = x.shape
        h, w = self.H, self.W
        if h is None or w is None or length != h * w:
            raise ValueError(
                f"set block.H and block.W to the map size before calling, with H * W == {length} "
                f"tokens (got H={h}, W={w}), as STF's BasicLayer does."
            )
        out = _attention_path(self, self.norm1(x).view(b, h, w, c))  # (B, H, W, C)
        x = x + self.drop_path(out.reshape(b, length, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class StfWinBasedAttention:
    """The official STF/WACNN `WinBasedAttention`: `x + drop_path(attn(x))` on NCHW maps."""

    name = "official STF WinBasedAttention"

    def matches(self, m: nn.Module) -> bool:
        return (
            _children(m) == {"attn", "drop_path"}
            and is_swin_v1_attention(m.attn)
            and isinstance(getattr(m, "window_size", None), int)
            and isinstance(getattr(m, "shift_size", None), int)
        )

    def build(self, m: nn.Module, path: str, window_size: Pair | None, backend: str | None) -> Swap:
        return _build(m, path, window_size, backend, SwappedStfWinBasedAttention)

    def probe_call(self, m: nn.Module, x: Tensor) -> Tensor:
        return m(x.permute(0, 3, 1, 2))  # (B, C, H, W)


class SwappedStfWinBasedAttention(SwappedBlock):
    """The official `WinBasedAttention`, its attention path as one `window_attention` call.

    Shapes:
        x: `(B, C, H, W)`, `H` and `W` multiples of the window -> `(B, C, H, W)`.
    """

    def forward(self, x: Tensor) -> Tensor:
        """Args:
            x: `(B, C, H, W)`.

        Returns:
            `(B, C, H, W)`.
        """
        (wh, ww), (h, w) = self.window_size, x.shape[-2:]
        if h % wh or w % ww:
            raise ValueError(
                f"WinBasedAttention needs H, W that are multiples of the window {(wh, ww)}, got "
                f"{(h, w)}; pad the input first, as the original module requires."
            )
        out = _attention_path(self, x.permute(0, 2, 3, 1))  # (B, H, W, C)
        return x + self.drop_path(out.permute(0, 3, 1, 2))  # (B, C, H, W)
