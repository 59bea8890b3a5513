# SPDX-License-Identifier: Apache-2.0
"""Swin-v1 blocks of any family, recognised by what they hold: research code's own
`SwinTransformerBlock` classes (SwinT-ChARM re-implementations, Swin hyperpriors, SwinIR-style
blocks as in TIC) and bare "attention blocks" that only pad, roll, partition, attend and undo.

A block matches when it has a Swin-v1 `attn` (`qkv`, `proj`, bias table), integer or pair
`window_size` and `shift_size` attributes, and either the pre-norm Swin children (`norm1`,
`norm2`, `mlp`, optional `drop_path`/`drop_path1`/`drop_path2`) or no other child at all. How
the block is called is read from its `forward`'s signature:

* `forward(x, x_size, ...)` (SwinIR, TIC): tokens `(B, H * W, C)` and the map size;
* `forward(x, H, W, ...)`: tokens and the map size as two integers;
* `forward(x, ...)` on a block with `input_resolution` (Swin, ChARM): tokens of that size;
* otherwise `forward(x, ...)` on maps `(B, H, W, C)`.

Further arguments (a precomputed mask) are accepted and ignored: the swapped block builds
Swin's mask for the actual size, padding then shifting, winattn's geometry. Whether a block
really computes that (pre-norm residuals, pad then roll, mask on the padded map) is not
assumed: like every swap, this one is kept only where the probe (`winattn.patch.probe`) finds
the same outputs; a block that rolls before it pads, or normalises after attention, fails it.
"""

from __future__ import annotations

import inspect

from torch import Tensor, nn

from winattn._utils import Pair, to_pair
from winattn.patch.hosts.base import Swap, SwappedBlock, dropout_p, probe_sizes
from winattn.patch.hosts.swin_v1 import attention_parts, is_swin_v1_attention

__all__ = ["SwappedSwinBlock", "SwinBlock"]

_RESIDUAL = {"norm1", "norm2", "mlp"}
_DROP_PATHS = {"drop_path", "drop_path1", "drop_path2"}


def _pair(value: int | tuple[int, int], name: str, allow_zero: bool = False) -> Pair:
    return to_pair(value if isinstance(value, int) else tuple(value), name, allow_zero=allow_zero)


def calling_convention(m: nn.Module) -> str:
    """`"x_size"`, `"hw"`, `"resolution"` or `"map"`: how `m.forward` receives the map size."""
    params = list(inspect.signature(m.forward).parameters)[1:]
    if params[:1] in (["x_size"], ["size"]):
        return "x_size"
    if params[:2] == ["H", "W"]:
        return "hw"
    return "resolution" if hasattr(m, "input_resolution") else "map"


class SwinBlock:
    """A Swin-v1 block of no known family, recognised by structure (see the module docstring)."""

    name = "Swin-v1 block"

    def matches(self, m: nn.Module) -> bool:
        children = set(dict(m.named_children()))
        return (
            "attn" in children
            and is_swin_v1_attention(m.attn)
            and isinstance(getattr(m, "window_size", None), (int, tuple, list))
            and isinstance(getattr(m, "shift_size", None), (int, tuple, list))
            and (children == {"attn"} or (_RESIDUAL <= children and children <= _RESIDUAL | _DROP_PATHS | {"attn"}))
        )

    def build(self, m: nn.Module, path: str, window_size: Pair | None, backend: str | None) -> Swap:
        parts = attention_parts(m.attn, f"{path}.attn", window_size)
        window = _pair(m.window_size, "window_size")
        shift = _pair(m.shift_size, "shift_size", allow_zero=True)
        if window != parts.window_size:
            raise ValueError(
                f"{path!r} partitions windows of {window} but its attention has a bias table for "
                f"{parts.window_size}."
            )
        new = SwappedSwinBlock(m, parts.num_heads, window, shift, parts.scale, backend)
        new.convention = calling_convention(m)
        new.residual = "norm1" in dict(m.named_children())
        kind = "Swin block" if new.residual else "attention block"
        return Swap(new, "block", parts.dim, window, shift, f"{kind}, called as {new.convention!r}")

    def probe_call(self, m: nn.Module, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        convention = calling_convention(m) if not isinstance(m, SwappedSwinBlock) else m.convention
        tokens = x.reshape(b, h * w, c)  # (B, HW, C)
        if convention == "x_size":
            return m(tokens, (h, w))
        if convention == "hw":
            return m(tokens, h, w)
        return m(tokens) if convention == "resolution" else m(x)

    def probe_sizes(self, m: nn.Module, window: Pair) -> list[tuple[int, int]]:
        if calling_convention(m) == "resolution":
            return [tuple(m.input_resolution)]
        return probe_sizes(window)


class SwappedSwinBlock(SwappedBlock):
    """A Swin-v1 block of no known family with its attention path as one `window_attention` call.

    Called as the host is (`convention`, see the module docstring); a mask argument is ignored.

    Shapes:
        x: `(B, H * W, C)` tokens or `(B, H, W, C)` maps, as the host -> the same shape.
    """

    convention: str = "map"
    residual: bool = True

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        """Args:
            x: `(B, H * W, C)` or `(B, H, W, C)`, as the host takes it.
            *args: the map size where the host takes it (`x_size`, or `H, W`); a mask (unused).
            **kwargs: as `*args`, by name.

        Returns:
            The same shape as `x`.
        """
        if self.convention == "map":
            b, h, w, c = x.shape
        else:
            b, _, c = x.shape
            h, w = self._size(args, kwargs)
        shape = x.shape
        x = x.reshape(b, h * w, c)  # (B, HW, C)
        if not self.residual:
            return self._attention(x.view(b, h, w, c)).reshape(shape)
        x = x + self._drop_path(1)(self._attention(self.norm1(x).view(b, h, w, c)).reshape(b, h * w, c))
        x = x + self._drop_path(2)(self.mlp(self.norm2(x)))
        return x.reshape(shape)

    def _size(self, args: tuple, kwargs: dict) -> tuple[int, int]:
        if self.convention == "x_size":
            size = args[0] if args else kwargs.get("x_size", kwargs.get("size"))
            return int(size[0]), int(size[1])
        if self.convention == "hw":
            return (int(args[0]), int(args[1])) if len(args) >= 2 else (int(kwargs["H"]), int(kwargs["W"]))
        return tuple(self.input_resolution)

    def _drop_path(self, i: int) -> nn.Module:
        for name in (f"drop_path{i}", "drop_path"):
            if self._modules.get(name) is not None:
                return self._modules[name]
        return nn.Identity()

    def _attention(self, x: Tensor) -> Tensor:
        """`(B, H, W, C)` -> `(B, H, W, C)`."""
        attn = self.attn
        out = self.attend(
            attn.qkv(x), attn.relative_position_bias_table, attn.qkv.bias, dropout_p(getattr(attn, "attn_drop", 0.0))
        )  # (B, H, W, C)
        out = attn.proj(out)
        drop = getattr(attn, "proj_drop", None)
        return drop(out) if isinstance(drop, nn.Module) else out
