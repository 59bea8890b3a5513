# SPDX-License-Identifier: Apache-2.0
"""The numerical check every swap passes before it is planned.

A host module and the module built to take its place run on the same small random maps, in
fp32, in eval mode and without gradients, on CPU copies with the backend picked automatically
there (the model is not touched: no buffer, training flag, hook or RNG state changes; the copies
have no hooks, and what the model's hooks refer to is not copied). The probe
checks that the swap computes what the host computes; the backends themselves are tested
against the reference elsewhere, and on CUDA agree with it within their own tolerances. The maps need padding where the host pads and are
larger than the window, so the shift applies. The swap is kept only where every map the host
accepts gives outputs within `ATOL` times the largest host output (at least 1); the largest difference is recorded (0.0: bit-exact).

A module whose parameters or buffers are on the meta device holds no values to run, and its
buffers (relative position index, attention mask) cannot be recomputed for every host family
alike; it is not probed, and the report's entry says so ("not probed: meta tensors").
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from winattn._utils import Pair
from winattn.patch.hosts.base import Host, probe_sizes

__all__ = ["ATOL", "ProbeResult", "probe_swap"]

#: Largest difference (fp32) a swap may have against its host on the probe, relative to the
#: host's output where that exceeds 1: `max|actual - expected| <= ATOL * max(1, max|expected|)`.
#: fp32 rounding grows with the values, so a fixed bound would refuse blocks whose outputs are
#: large (LayerNorm weights of 4); a block that computes something else (rolls before it pads
#: where the host pads first) differs by about 0.3 on outputs of about 1, far above it.
ATOL = 1e-5


@dataclass(frozen=True)
class ProbeResult:
    """`max_delta`: the largest difference seen (None if nothing ran); `problem`: why the swap
    fails the check, or None when it passes; `skipped`: why nothing ran although the swap is
    kept (a module on the meta device), or None; `representative`: the path of the module of the
    same structure whose probe this verdict reuses, or None where this module was probed."""

    max_delta: float | None
    problem: str | None
    skipped: str | None = None
    representative: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def _default_call(m: nn.Module, x: Tensor) -> Tensor:
    return m(x)


def _default_sizes(m: nn.Module, window: Pair) -> list[tuple[int, int]]:
    return probe_sizes(window)


def _hookless_memo(m: nn.Module) -> dict[int, Any]:
    """A `copy.deepcopy` memo that maps every hook dictionary of `m` and its submodules (forward,
    pre-forward, backward, state-dict and load-state-dict hooks: each attribute whose name holds
    `hooks` and is a dict) to a fresh empty one, so that the copy has no hooks and whatever the
    hooks refer to (a bound method of the whole model, an object holding a lock) is never copied.
    """
    return {
        id(value): type(value)()
        for sub in m.modules()
        for name, value in vars(sub).items()
        if "hooks" in name and isinstance(value, dict)
    }


def _quiet_copy(m: nn.Module, without_mlp: bool = False) -> nn.Module:
    """A float32, eval-mode deep copy of `m` on the CPU, without hooks; with `without_mlp`, its
    `mlp` child is an `nn.Identity` (not copied)."""
    memo = _hookless_memo(m)
    if without_mlp:
        memo[id(m.mlp)] = nn.Identity()
    return copy.deepcopy(m, memo).to("cpu", torch.float32).eval()


def probe_swap(
    host: Host, m: nn.Module, build: Callable[[nn.Module], nn.Module], channels: int, window: Pair
) -> ProbeResult:
    """Runs `m` and `build(copy of m)` on random maps and compares their outputs.

    Args:
        host: the adapter; its optional `probe_call`/`probe_sizes` say how to call `m`.
        m: the host module (not changed).
        build: builds the replacement of a module like `m` (with the automatic backend).
        channels: channels of the maps `(B, H, W, C)`.
        window: `(Wh, Ww)` of `m`.
    """
    if any(t.is_meta for t in itertools.chain(m.parameters(), m.buffers())):
        return ProbeResult(None, None, "not probed: meta tensors")
    call = getattr(host, "probe_call", _default_call)
    sizes = getattr(host, "probe_sizes", _default_sizes)(m, window)
    # Where the host has an `mlp` child and the replacement reuses it unchanged (swapped blocks
    # adopt the host's children), both copies get an `nn.Identity` in its place: the probe
    # checks the attention path, the norms and the residual layout, which is what a swap
    # changes, and copies and runs no MLP, most of a block's weights and time.
    without_mlp = isinstance(getattr(m, "mlp", None), nn.Module)
    try:
        reference, source = _quiet_copy(m, without_mlp), _quiet_copy(m, without_mlp)
    except Exception as exc:  # noqa: BLE001 (any failure means: not swapped)
        return ProbeResult(None, f"the host could not be copied for the probe ({type(exc).__name__}: {exc})")
    try:
        candidate = build(source)
        if without_mlp and getattr(candidate, "mlp", None) is not source.mlp:  # an MLP of its own
            reference, candidate = _quiet_copy(m), build(_quiet_copy(m))
        candidate = candidate.to("cpu", torch.float32).eval()
    except Exception as exc:  # noqa: BLE001 (any failure means: not swapped)
        return ProbeResult(None, f"its replacement could not be built ({type(exc).__name__}: {exc})")
    generator = torch.Generator().manual_seed(0)
    delta, refused = None, []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        for size in sizes:
            x = torch.randn(1, *size, channels, generator=generator)  # (B, H, W, C)
            try:
                expected = call(reference, x.clone())
            except Exception as exc:  # noqa: BLE001 (the host does not take this size)
                refused.append(f"{size}: {type(exc).__name__}: {exc}")
                continue
            try:
                actual = call(candidate, x.clone())
            except Exception as exc:  # noqa: BLE001
                return ProbeResult(delta, f"the swap raised on a {size} map ({type(exc).__name__}: {exc})")
            if not isinstance(expected, Tensor) or not isinstance(actual, Tensor) or expected.shape != actual.shape:
                return ProbeResult(delta, f"on a {size} map its output is not the host's shape")
            d = (actual - expected).abs().max().item()
            delta = d if delta is None else max(delta, d)
            bound = ATOL * max(1.0, expected.abs().max().item())
            if not d <= bound:
                return ProbeResult(
                    delta,
                    f"on a {size} map its output differs by {d:.2g} from the host's (allowed: "
                    f"{ATOL:g} x max(1, largest output) = {bound:.2g})",
                )
    if delta is None:
        return ProbeResult(None, f"its forward does not run as a window attention on the probe ({'; '.join(refused)[:300]})")
    return ProbeResult(delta, None)
