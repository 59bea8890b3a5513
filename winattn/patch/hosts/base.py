# SPDX-License-Identifier: Apache-2.0
"""What every swap adapter shares: the `Host` interface, the planned `Swap`, and `SwappedBlock`,
the base of the modules that take over a host block's whole attention path.

A `SwappedBlock` adopts the host's parameters, buffers and children (the same objects, under
the same names), so the state-dict keys, the weights, the optimiser's parameters and the
`persistent` flag of every buffer stay those of the host. Only `forward` changes: the host's
pad / roll / partition / attention / reverse / roll back / crop path becomes one
`winattn.functional.window_attention` call (on CUDA, one fused Triton kernel).

It also keeps the host's API: its plain attributes (`input_resolution`, ...), its forward hooks
and pre-hooks (the same hook dictionaries, so a handle taken before the swap still removes its
hook), and its public methods (timm's `set_input_size`), which run on the swapped block.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor, nn

from winattn._utils import Pair, to_pair
from winattn.functional import window_attention
from winattn.modules import WindowAttention, WindowAttentionBlock

__all__ = ["Host", "Swap", "SwappedBlock", "class_name", "dropout_p", "is_winattn", "probe_sizes", "share_hooks"]

#: The hook dictionaries of an `nn.Module` that a swap carries over (shared, not copied).
HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
)


def probe_sizes(window: Pair) -> list[tuple[int, int]]:
    """The default probe maps for a window: one that needs padding on both axes, one that does
    not; both larger than the window, so a shift applies."""
    wh, ww = window
    return [(2 * wh + wh // 2 + 1, 3 * ww - 1), (2 * wh, 2 * ww)]


def share_hooks(new: nn.Module, host: nn.Module) -> None:
    """Makes `new` use `host`'s forward hooks and pre-hooks (the same dictionaries)."""
    for name in HOOK_DICTS:
        if hasattr(host, name):
            setattr(new, name, getattr(host, name))


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
    why this module cannot be swapped. `build` must not change `m`.

    Every swap is checked numerically before it is planned (`winattn.patch.probe`): the host
    and its replacement run on a random map. Two optional methods tell the probe how to call a
    host; without them it calls `m(x)` on `x: (B, H, W, C)` maps of sizes that need padding:

    * `probe_call(m, x) -> Tensor`: runs `m` (host or replacement) on the map `x: (B, H, W, C)`
      in the host's calling convention;
    * `probe_sizes(m, window) -> list[tuple[int, int]]`: the map sizes to probe.
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
        for key, value in vars(host).items():  # plain attributes: input_resolution, ...
            if not key.startswith("_") and key != "training":
                self.__dict__[key] = value
        self.__dict__["_host_class"] = type(host)
        share_hooks(self, host)
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

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            # A public method of the host class (timm's `set_input_size`), run on this block.
            method = getattr(self.__dict__.get("_host_class"), name, None)
            if name.startswith("__") or not isinstance(method, types.FunctionType) or hasattr(nn.Module, name):
                raise
            return types.MethodType(method, self)

    def extra_repr(self) -> str:
        return (
            f"host={self.host}, num_heads={self.num_heads}, window_size={self.window_size}, "
            f"shift_size={self.shift_size}"
        )


def is_winattn(m: nn.Module) -> bool:
    """Whether `m` is one of winattn's own modules (never patched, never searched)."""
    return isinstance(m, (WindowAttention, WindowAttentionBlock, SwappedBlock))
