# SPDX-License-Identifier: Apache-2.0
"""What every swap adapter shares: the `Host` interface, the planned `Swap`, and `SwappedBlock`,
the base of the modules that take over a host block's whole attention path.

A `SwappedBlock` adopts the host's parameters, buffers and children (the same objects, under
the same names), so the state-dict keys, the weights, the optimiser's parameters and the
`persistent` flag of every buffer stay those of the host. Only `forward` changes: the host's
pad / roll / partition / attention / reverse / roll back / crop path becomes one
`winattn.functional.window_attention` call (on CUDA, one fused Triton kernel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor, nn

from winattn._utils import Pair, to_pair
from winattn.functional import window_attention
from winattn.modules import WindowAttention, WindowAttentionBlock

__all__ = ["Host", "Swap", "SwappedBlock", "class_name", "dropout_p", "is_winattn"]


def class_name(m: nn.Module) -> str:
    """`module.qualname` of `m`'s class, as the report names hosts."""
    return f"{type(m).__module__}.{type(m).__qualname__}"


def dropout_p(value: Any) -> float:
    """The probability of an `nn.Dropout`, or a float given as is."""
    return float(value.p) if isinstance(value, nn.Dropout) else float(value or 0.0)


@dataclass(frozen=True)
class Swap:
    """A planned swap: the module that takes the host's place, and what the report says."""

    module: nn.Module
    level: str  # "block" or "window"
    channels: int
    window_size: Pair
    shift_size: Pair
    note: str = ""


class Host(Protocol):
    """One host family: recognises its modules and builds their replacements.

    `matches` looks at structure only (children, parameters, their shapes and the attributes
    the host's forward reads); `build` either returns the `Swap` or raises `ValueError` saying
    why this module cannot be swapped, which leaves the model unchanged.
    """

    name: str

    def matches(self, m: nn.Module) -> bool: ...

    def build(self, m: nn.Module, path: str, window_size: Pair | None, backend: str | None) -> Swap: ...


class SwappedBlock(nn.Module):
    """Base of the modules that replace a host block; see the module docstring.

    Args:
        host: the host module; its parameters, buffers and children are adopted.
        num_heads: attention heads.
        window_size: `(Wh, Ww)`.
        shift_size: `(sh, sw)`.
        scale: logit scale.
        backend: winattn backend; None follows the global choice.
    """

    def __init__(
        self,
        host: nn.Module,
        num_heads: int,
        window_size: Pair,
        shift_size: Pair,
        scale: float,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self._parameters.update(host._parameters)
        self._buffers.update(host._buffers)
        self._non_persistent_buffers_set.update(host._non_persistent_buffers_set)
        self._modules.update(host._modules)
        self.training = host.training
        self.host = class_name(host)
        self.num_heads = num_heads
        self.window_size = to_pair(window_size, "window_size")
        self.shift_size = to_pair(shift_size, "shift_size", allow_zero=True)
        self.scale = scale
        self.backend = backend

    def attend(
        self,
        qkv: Tensor,
        bias_table: Tensor | None,
        pad_qkv: Tensor | None,
        dropout_p: float = 0.0,
        shift_size: Pair | None = None,
    ) -> Tensor:
        """`window_attention` with this block's geometry. `(B, H, W, 3C)` -> `(B, H, W, C)`."""
        return window_attention(
            qkv,
            self.num_heads,
            self.window_size,
            self.shift_size if shift_size is None else shift_size,
            bias_table=bias_table,
            scale=self.scale,
            pad_qkv=pad_qkv,
            dropout_p=dropout_p if self.training else 0.0,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"host={self.host}, num_heads={self.num_heads}, window_size={self.window_size}, "
            f"shift_size={self.shift_size}"
        )


def is_winattn(m: nn.Module) -> bool:
    """Whether `m` is one of winattn's own modules (never patched, never searched)."""
    return isinstance(m, (WindowAttention, WindowAttentionBlock, SwappedBlock))
