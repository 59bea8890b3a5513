# SPDX-License-Identifier: Apache-2.0
"""How a backend of `window_attention` is chosen: the call, the backend interface, the
registry and the selection.

Every backend computes the same function, defined by `winattn.backends.reference`. A backend
says *why* it cannot run a given call (`not_supported_reasons`) and whether it has been verified
against the reference for that kind of call (`unverified_reasons`). The choice is made at call
time, in this order of precedence:

1. the `backend=` argument of the call (modules pass their own `backend=` here);
2. the innermost `use_backend(...)` block of the current thread or asynchronous context;
3. `set_backend(...)`, process-wide;
4. the `WINATTN_BACKEND` environment variable;
5. `"auto"`: the fastest backend, for the input's device, that supports the call and is
   verified for it. The reasons for every backend passed over are logged at DEBUG on the
   `winattn` logger.

Asking explicitly for a backend that cannot run the call raises `BackendUnavailableError`
with every reason; `explain(call)` gives the same reasons for every backend at once.

This module imports no backend: `winattn.backends` registers the built-in ones.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from winattn._utils import Pair, positive_int, to_pair
from winattn.geometry import (
    check_map,
    check_memory,
    check_shift,
    default_scale,
    dense_bias,
    padded_size,
)

__all__ = [
    "AUTO",
    "AUTO_ORDER",
    "ENV_VAR",
    "MAX_LOGIT_SCALE",
    "AttentionCall",
    "Backend",
    "BackendUnavailableError",
    "available_backends",
    "backend_reasons",
    "check_backend_name",
    "dispatch",
    "explain",
    "get_backend",
    "register_backend",
    "registered_backends",
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

#: Swin-V2 clamps the log of the cosine attention's per-head scale at `log(1 / 0.01)`.
MAX_LOGIT_SCALE = math.log(100.0)


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
        logit_scale: `(num_heads,)` or None. When given, the attention is Swin-V2's scaled
            cosine attention: q and k are L2-normalised per head and the logits are
            multiplied by `cosine_scale()` (`scale` is then 1 and unused).
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
    logit_scale: Tensor | None = None

    @property
    def size(self) -> Pair:
        """`(H, W)` of the map."""
        return (self.qkv.shape[1], self.qkv.shape[2])

    @property
    def padded(self) -> Pair:
        """`(Hp, Wp)`, the map size rounded up to a multiple of the window."""
        return padded_size(self.size, self.window_size)

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
    def cosine(self) -> bool:
        """Whether this is Swin-V2's scaled cosine attention (`logit_scale` given)."""
        return self.logit_scale is not None

    @property
    def needs_grad(self) -> bool:
        return torch.is_grad_enabled() and any(
            t is not None and t.requires_grad
            for t in (self.qkv, self.bias_table, self.bias, self.pad_qkv, self.logit_scale)
        )

    def cosine_scale(self) -> Tensor:
        """`exp(min(logit_scale, log(100)))` in qkv's dtype, `(num_heads,)`: the per-head
        factor of the cosine similarities, as Swin-V2 clamps it (at most 100)."""
        if self.logit_scale is None:
            raise ValueError("cosine_scale() needs a call with logit_scale (cosine attention).")
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp().to(self.qkv.dtype)

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
        logit_scale: Tensor | None = None,
    ) -> AttentionCall:
        """Checks every argument of `window_attention` and normalises it.

        Raises:
            ValueError: naming the argument, its value and the fix, for any bad argument, and
                before anything is allocated when the attention weights of one image would
                exceed the memory budget (`winattn.geometry.memory_budget`).
            TypeError: if `qkv` is not a floating-point tensor.
        """
        check_map(qkv, "qkv")
        window = to_pair(window_size, "window_size")
        shift = to_pair(shift_size, "shift_size", allow_zero=True)
        check_shift(window, shift)
        num_heads = positive_int(num_heads, "num_heads")
        c3 = qkv.shape[-1]
        if c3 == 0:
            raise ValueError(
                f"qkv has no channels (qkv.shape={tuple(qkv.shape)}); window attention needs "
                f"C >= num_heads, so qkv.shape[-1] = 3 * C >= {3 * num_heads}."
            )
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
        if logit_scale is not None:
            logit_scale = _check_logit_scale(logit_scale, scale, num_heads)
        for name, t in (
            ("bias_table", bias_table), ("bias", bias), ("pad_qkv", pad_qkv), ("logit_scale", logit_scale)
        ):
            if t is not None and t.device != qkv.device:
                raise ValueError(
                    f"{name} is on {t.device} but qkv is on {qkv.device}; move them to one "
                    f"device (module.to({str(qkv.device)!r}) moves a module's bias table)."
                )
        if not 0.0 <= dropout_p < 1.0:
            raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p=}.")
        check_memory(
            qkv.shape[1:3], window, num_heads, qkv.element_size(), shifted=any(shift),
            bias=bias_table is not None or bias is not None,
            grad=torch.is_grad_enabled()
            and any(
                t is not None and t.requires_grad
                for t in (qkv, bias_table, bias, pad_qkv, logit_scale)
            ),
            channels=c3 // 3,
        )
        if logit_scale is not None:
            scale = 1.0
        elif scale is None:
            scale = default_scale(c3 // (3 * num_heads))
        return cls(
            qkv, num_heads, window, shift, bias_table, bias, float(scale), pad_qkv, dropout_p,
            logit_scale=logit_scale,
        )

    def dense_bias(self) -> Tensor | None:
        """The relative position bias as `(num_heads, N, N)` in qkv's dtype, or None."""
        if self.bias is not None:
            return self.bias.to(self.qkv.dtype)
        if self.bias_table is None:
            return None
        return dense_bias(self.bias_table, self.window_size).to(self.qkv.dtype)  # (heads, N, N)


def _check_logit_scale(logit_scale: Tensor, scale: float | None, num_heads: int) -> Tensor:
    """`logit_scale` as `(num_heads,)`; Swin-V2 stores it as `(num_heads, 1, 1)`."""
    if scale is not None:
        raise ValueError(
            f"pass either scale (dot-product attention) or logit_scale (cosine attention), not "
            f"both; got {scale=}."
        )
    if not isinstance(logit_scale, Tensor) or logit_scale.numel() != num_heads:
        shape = tuple(logit_scale.shape) if isinstance(logit_scale, Tensor) else type(logit_scale).__name__
        raise ValueError(
            f"logit_scale must be a tensor of num_heads={num_heads} values, (num_heads,) or "
            f"(num_heads, 1, 1) as in Swin-V2, got {shape}."
        )
    return logit_scale.reshape(num_heads)


class Backend:
    """What a backend provides. Subclass it and register an instance with `register_backend`.

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
    """Adds a backend to the registry under `cls.name` (usable as a class decorator).

    Registering a class again under its name replaces the earlier instance (and moves it
    last in the registration order).

    Raises:
        ValueError: if the name is empty or `"auto"`.
    """
    if not cls.name or cls.name == AUTO:
        raise ValueError(f"a backend needs a name other than {AUTO!r}, got {cls.name!r}.")
    _REGISTRY.pop(cls.name, None)
    _REGISTRY[cls.name] = cls()
    return cls


def registered_backends() -> dict[str, Backend]:
    """The registered backends by name, in registration order (a copy)."""
    return dict(_REGISTRY)


def _known() -> list[str]:
    return [AUTO, *_REGISTRY]


def check_backend_name(name: object, where: str) -> str:
    """Returns `name` if it is `"auto"` or a registered backend.

    Raises:
        ValueError: naming `where` and the known names, otherwise (the empty string included).
    """
    if not isinstance(name, str) or name not in _known():
        raise ValueError(
            f"unknown backend {name!r} ({where}); choose one of {_known()}."
        )
    return name


# The process-wide default (set_backend), read on every call so that a change affects models
# that are already built; and the use_backend overrides of the current thread or asynchronous
# context: a tuple of (block, name), innermost last.
_global: str | None = None
_overrides: contextvars.ContextVar[tuple[tuple[object, str], ...]] = contextvars.ContextVar(
    "winattn_backend_overrides", default=()
)


def set_backend(name: str | None) -> None:
    """Sets the process-wide default backend.

    Args:
        name: a registered backend name, `"auto"`, or None to fall back to the
            `WINATTN_BACKEND` environment variable (or `"auto"`).
    """
    global _global
    _global = None if name is None else check_backend_name(name, "set_backend")


def get_backend() -> str:
    """The backend name that a call without `backend=` uses now (possibly `"auto"`)."""
    overrides = _overrides.get()
    if overrides:
        return overrides[-1][1]
    if _global is not None:
        return _global
    env = os.environ.get(ENV_VAR)
    if env:
        return check_backend_name(env, f"environment variable {ENV_VAR}")
    return AUTO


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager that makes `name` the default backend inside its block.

    The choice holds for the current thread (and `asyncio` task, or any `contextvars`
    context) only: other threads keep their own. Leaving a block removes that block's choice
    only, even when blocks of interleaved generators are left out of order.

    Example:
        >>> import winattn
        >>> with winattn.use_backend("reference"):
        ...     assert winattn.get_backend() == "reference"
    """
    entry = (object(), check_backend_name(name, "use_backend"))
    _overrides.set((*_overrides.get(), entry))
    try:
        yield
    finally:
        _overrides.set(tuple(e for e in _overrides.get() if e is not entry))


def available_backends() -> list[str]:
    """Names of the registered backends whose software is present here (triton needs the
    `triton` package). Whether one runs a given call also depends on the call; see
    `explain`."""
    return [name for name, b in _REGISTRY.items() if not b.missing_software()]


def backend_reasons(call: AttentionCall | None = None) -> dict[str, list[str]]:
    """For each registered backend, why it cannot run `call` (or, with no call, why it cannot
    run here at all). Empty lists mean it can."""
    return {
        name: b.missing_software() if call is None else _reasons(b, call)
        for name, b in _REGISTRY.items()
    }


def explain(call: AttentionCall) -> dict[str, list[str]]:
    """For each registered backend, why it cannot run `call`, or else why `"auto"` would not
    pick it (those reasons start with `"not picked by auto: "`). An empty list means the
    backend runs `call` and automatic selection may pick it.

    Example:
        >>> import torch
        >>> call = AttentionCall.build(
        ...     torch.zeros(1, 8, 8, 48), num_heads=2, window_size=4, shift_size=2,
        ...     bias_table=None, bias=None, scale=None, pad_qkv=None, dropout_p=0.0)
        >>> sorted(name for name, reasons in explain(call).items() if not reasons)
        ['reference', 'sdpa']
    """
    if not isinstance(call, AttentionCall):
        raise TypeError(
            f"explain() takes an AttentionCall, got {type(call).__name__}; build one with "
            "AttentionCall.build(qkv, num_heads=..., window_size=..., ...)."
        )
    return {
        name: _reasons(b, call)
        or [f"not picked by auto: {r}" for r in b.unverified_reasons(call)]
        for name, b in _REGISTRY.items()
    }


def _reasons(backend: Backend, call: AttentionCall) -> list[str]:
    return backend.missing_software() or backend.not_supported_reasons(call)


def select_backend(call: AttentionCall, name: str | None = None) -> Backend:
    """Resolves the backend that runs `call`, applying the precedence described above."""
    name = get_backend() if name is None else check_backend_name(name, "backend=")
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
    """Runs `call` on the backend chosen by `select_backend`. An empty batch gives an empty
    `(0, H, W, C)` output on every backend (still connected to qkv for autograd)."""
    backend = select_backend(call, name)
    if call.qkv.shape[0] == 0:
        return call.qkv[..., : call.dim] * 0  # (0, H, W, C)
    return backend.forward(call)
