# SPDX-License-Identifier: Apache-2.0
"""Backends of `window_attention` and how one is chosen.

Every backend computes the same function, defined by `winattn.backends.reference`. A backend
says *why* it cannot run a given call (`not_supported_reasons`) and whether it has been verified
against the reference for that kind of call (`unverified_reasons`). The choice is made at call
time, in this order of precedence:

1. the `backend=` argument of the call (modules pass their own `backend=` here);
2. the innermost `use_backend(...)` context;
3. `set_backend(...)`;
4. the `WINATTN_BACKEND` environment variable;
5. `"auto"`: the fastest backend, for the input's device, that supports the call and is
   verified for it. The reasons for every backend passed over are logged at DEBUG on the
   `winattn` logger.

Asking explicitly for a backend that cannot run the call raises `BackendUnavailableError`
with every reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from winattn._utils import Pair, to_pair

__all__ = [
    "AttentionCall",
    "Backend",
    "BackendUnavailableError",
    "available_backends",
    "backend_reasons",
    "dispatch",
    "get_backend",
    "register_backend",
    "select_backend",
    "set_backend",
    "use_backend",
]

logger = logging.getLogger("winattn")

ENV_VAR = "WINATTN_BACKEND"
AUTO = "auto"

#: Order in which `"auto"` tries backends, per device type: fastest first, as measured by
#: `benchmarks/attention.py` (CPU) and `benchmarks/attention_gpu.py` (CUDA).
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cuda": ("triton", "sdpa", "reference"),
    "cpu": ("sdpa", "reference"),
}
_AUTO_ORDER_OTHER = ("sdpa", "reference")


class BackendUnavailableError(RuntimeError):
    """No backend, or not the one asked for, can run this call. The message lists why."""


@dataclass(frozen=True)
class AttentionCall:
    """A validated `window_attention` call, as the backends see it.

    Attributes:
        qkv: `(B, H, W, 3 * C)`.
        num_heads: heads; `head_dim = C // num_heads`.
        window_size: `(Wh, Ww)`.
        shift_size: `(sh, sw)`.
        bias_table: `((2Wh-1)(2Ww-1), num_heads)` or None.
        bias: `(num_heads, N, N)` or None.
        scale: logit scale.
        pad_qkv: `(3 * C,)` or None (zeros).
        dropout_p: attention dropout probability.
    """

    qkv: Tensor
    num_heads: int
    window_size: Pair
    shift_size: Pair
    bias_table: Tensor | None
    bias: Tensor | None
    scale: float
    pad_qkv: Tensor | None
    dropout_p: float

    @property
    def size(self) -> Pair:
        """`(H, W)` of the map."""
        return (self.qkv.shape[1], self.qkv.shape[2])

    @property
    def padded(self) -> Pair:
        """`(Hp, Wp)`, the map size rounded up to a multiple of the window."""
        (h, w), (wh, ww) = self.size, self.window_size
        return (-(-h // wh) * wh, -(-w // ww) * ww)

    @property
    def dim(self) -> int:
        """`C`, the channels of the output."""
        return self.qkv.shape[-1] // 3

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def shifted(self) -> bool:
        return any(self.shift_size)

    @property
    def needs_grad(self) -> bool:
        return torch.is_grad_enabled() and any(
            t is not None and t.requires_grad
            for t in (self.qkv, self.bias_table, self.bias, self.pad_qkv)
        )

    @classmethod
    def build(
        cls,
        qkv: Tensor,
        *,
        num_heads: int,
        window_size: int | Pair,
        shift_size: int | Pair,
        bias_table: Tensor | None,
        bias: Tensor | None,
        scale: float | None,
        pad_qkv: Tensor | None,
        dropout_p: float,
    ) -> AttentionCall:
        """Checks every argument of `window_attention` and normalises it."""
        from winattn.functional import _check_map, _check_shift, default_scale

        _check_map(qkv, "qkv")
        window = to_pair(window_size, "window_size")
        shift = to_pair(shift_size, "shift_size", allow_zero=True)
        _check_shift(window, shift)
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(f"num_heads must be a positive int, got {num_heads=}.")
        c3 = qkv.shape[-1]
        if c3 % (3 * num_heads):
            raise ValueError(
                f"qkv's last axis must be 3 * num_heads * head_dim, got qkv.shape[-1]={c3} with "
                f"{num_heads=}; qkv is the output of Linear(dim, 3 * dim) with dim divisible by "
                f"num_heads."
            )
        n = window[0] * window[1]
        if bias_table is not None and bias is not None:
            raise ValueError("pass either bias_table or bias, not both.")
        if bias_table is not None:
            rows = (2 * window[0] - 1) * (2 * window[1] - 1)
            if tuple(bias_table.shape) != (rows, num_heads):
                raise ValueError(
                    f"bias_table must have shape ((2Wh-1)(2Ww-1), num_heads) = {(rows, num_heads)} "
                    f"for window_size={window}, got {tuple(bias_table.shape)}."
                )
        if bias is not None and tuple(bias.shape) != (num_heads, n, n):
            raise ValueError(
                f"bias must have shape (num_heads, N, N) = {(num_heads, n, n)}, "
                f"got {tuple(bias.shape)}."
            )
        if pad_qkv is not None and tuple(pad_qkv.shape) != (c3,):
            raise ValueError(
                f"pad_qkv must have shape (3 * C,) = ({c3},), got {tuple(pad_qkv.shape)}."
            )
        if not 0.0 <= dropout_p < 1.0:
            raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p=}.")
        if scale is None:
            scale = default_scale(c3 // (3 * num_heads))
        return cls(qkv, num_heads, window, shift, bias_table, bias, float(scale), pad_qkv, dropout_p)

    def dense_bias(self) -> Tensor | None:
        """The relative position bias as `(num_heads, N, N)` in qkv's dtype, or None."""
        if self.bias is not None:
            return self.bias.to(self.qkv.dtype)
        if self.bias_table is None:
            return None
        from winattn.functional import geometry_index

        n = self.window_size[0] * self.window_size[1]
        index = geometry_index(self.window_size, self.qkv.device)  # (N, N)
        dense = self.bias_table[index.reshape(-1)].reshape(n, n, self.num_heads)
        return dense.permute(2, 0, 1).to(self.qkv.dtype)  # (num_heads, N, N)


class Backend:
    """What a backend provides. Subclass it and decorate with `register_backend`.

    Attributes:
        name: the name users pass as `backend=`.
    """

    name: str = ""

    def missing_software(self) -> list[str]:
        """Why this backend cannot run on this machine at all (a package missing); empty if
        its software is present. Must not import optional packages."""
        return []

    def not_supported_reasons(self, call: AttentionCall) -> list[str]:
        """Why this backend cannot run `call`; empty if it can."""
        return []

    def unverified_reasons(self, call: AttentionCall) -> list[str]:
        """Why automatic selection should not pick this backend for `call` although it can
        run it (for example: not checked against the reference on this device class)."""
        return []

    def forward(self, call: AttentionCall) -> Tensor:
        """Computes the attention. Returns `(B, H, W, C)`."""
        raise NotImplementedError


_REGISTRY: dict[str, Backend] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator that adds a backend to the registry under `cls.name`."""
    if not cls.name or cls.name == AUTO:
        raise ValueError(f"a backend needs a name other than {AUTO!r}, got {cls.name!r}.")
    _REGISTRY[cls.name] = cls()
    return cls


def _known() -> list[str]:
    return [AUTO, *_REGISTRY]


def _check_name(name: object, where: str) -> str:
    if not isinstance(name, str) or name not in _known():
        raise ValueError(
            f"unknown backend {name!r} ({where}); choose one of {_known()}."
        )
    return name


# The process-wide default (set_backend) and a stack of use_backend overrides. Plain module
# state, read on every call, so that a change affects models that are already built.
_global: str | None = None
_stack: list[str] = []


def set_backend(name: str | None) -> None:
    """Sets the process-wide default backend.

    Args:
        name: a registered backend name, `"auto"`, or None to fall back to the
            `WINATTN_BACKEND` environment variable (or `"auto"`).
    """
    global _global
    _global = None if name is None else _check_name(name, "set_backend")


def get_backend() -> str:
    """The backend name that a call without `backend=` uses now (possibly `"auto"`)."""
    if _stack:
        return _stack[-1]
    if _global is not None:
        return _global
    env = os.environ.get(ENV_VAR)
    if env:
        return _check_name(env, f"environment variable {ENV_VAR}")
    return AUTO


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager that makes `name` the default backend inside its block.

    Example:
        >>> import winattn
        >>> with winattn.use_backend("reference"):
        ...     assert winattn.get_backend() == "reference"
    """
    _stack.append(_check_name(name, "use_backend"))
    try:
        yield
    finally:
        _stack.pop()


def available_backends() -> list[str]:
    """Names of the registered backends whose software is present here (triton needs the
    `triton` package). Whether one runs a given call also depends on the call; see
    `backend_reasons`."""
    return [name for name, b in _REGISTRY.items() if not b.missing_software()]


def backend_reasons(call: AttentionCall | None = None) -> dict[str, list[str]]:
    """For each registered backend, why it cannot run `call` (or, with no call, why it cannot
    run here at all). Empty lists mean it can."""
    out = {}
    for name, b in _REGISTRY.items():
        out[name] = b.missing_software() if call is None else _reasons(b, call)
    return out


def _reasons(backend: Backend, call: AttentionCall) -> list[str]:
    return backend.missing_software() or backend.not_supported_reasons(call)


def select_backend(call: AttentionCall, name: str | None = None) -> Backend:
    """Resolves the backend that runs `call`, applying the precedence described above."""
    name = get_backend() if name is None else _check_name(name, "backend=")
    if name != AUTO:
        backend = _REGISTRY[name]
        reasons = _reasons(backend, call)
        if reasons:
            raise BackendUnavailableError(
                f"backend {name!r} cannot run this call: " + "; ".join(reasons)
            )
        return backend
    order = AUTO_ORDER.get(call.qkv.device.type, _AUTO_ORDER_OTHER)
    passed: dict[str, list[str]] = {}
    for candidate in order:
        backend = _REGISTRY.get(candidate)
        if backend is None:
            passed[candidate] = ["not registered"]
            continue
        reasons = _reasons(backend, call) or backend.unverified_reasons(call)
        if not reasons:
            if passed and not torch.compiler.is_compiling() and logger.isEnabledFor(logging.DEBUG):
                logger.debug("auto-selected backend %r; passed over %s", candidate, passed)
            return backend
        passed[candidate] = reasons
    lines = "\n".join(f"  {k}: {'; '.join(v)}" for k, v in passed.items())
    raise BackendUnavailableError(f"no backend can run this call:\n{lines}")


def dispatch(call: AttentionCall, name: str | None = None) -> Tensor:
    """Runs `call` on the backend chosen by `select_backend`."""
    return select_backend(call, name).forward(call)


def _register_builtin() -> None:
    # Imported for their @register_backend side effect.
    from winattn.backends import reference, sdpa  # noqa: F401
    from winattn.backends import triton as _triton  # noqa: F401



_register_builtin()
