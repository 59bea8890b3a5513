# SPDX-License-Identifier: Apache-2.0
"""swap: window attention already in the model, of a known host family, replaced by winattn's.

The adapters (`winattn.patch.hosts`) recognise host modules by structure. Where the host is a
whole block (it pads, rolls, partitions, attends, reverses, rolls back and crops), the block is
swapped whole (level `"block"`); a Swin-v1 attention inside a module of no known family is
swapped alone (level `"window"`), only where that can pay off (CUDA). Either way the new module
keeps the host's parameters and state-dict keys, and its outputs: every swap is checked on a
random probe (`winattn.patch.probe`) before it is planned, and a module that fails is left as it
is, with a note that says why.

`foreign_attention` lists the attention modules no adapter covers, so that `mode="auto"` can
refuse to change the architecture of a model that already has attention of its own.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import replace

from torch import nn

from winattn._utils import Pair, to_pair
from winattn.patch.hosts import HOSTS, Host, is_winattn
from winattn.patch.hosts.base import HOOK_DICTS, Swap, class_name
from winattn.patch.hosts.swin_v1 import SwinV1Attention, attention_parts, is_swin_v1_attention
from winattn.patch.options import Options
from winattn.patch.plan import Plan
from winattn.patch.probe import ProbeResult, probe_swap
from winattn.patch.replace import is_attention_block
from winattn.patch.report import PatchEntry
from winattn.patch.transforms import count

__all__ = ["find_hosts", "foreign_attention", "plan_swap"]

#: Class or child names that say "attention" (or a transformer built on it).
_ATTENTION_NAME = re.compile(r"attn|attention|msa|transformer|swin", re.IGNORECASE)
#: Names of the children that project queries, keys and values (any one set of them).
_QKV_NAMES = (
    {"queries", "keys", "values"},
    {"query", "key", "value"},
    {"q", "k", "v"},
    {"to_q", "to_k", "to_v"},
    {"qkv"},
    {"qkv_proj"},
    {"to_qkv"},
)


_CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.Sequential)


def _host_of(m: nn.Module) -> Host | None:
    return next((h for h in HOSTS if h.matches(m)), None)


def find_hosts(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, nn.Module, Host]]:
    """Yields `(parent_path, parent, key, module, host)` for every host module, in model order.

    The search does not descend into a host module, nor into winattn's own modules.
    """

    def walk(path: str, parent: nn.Module) -> Iterator[tuple[str, nn.Module, str, nn.Module, Host]]:
        for key, child in parent.named_children():
            if is_winattn(child):
                continue
            host = _host_of(child)
            if host is not None:
                yield path, parent, key, child, host
            else:
                yield from walk(f"{path}.{key}" if path else key, child)

    yield from walk("", model)


def _shift_of(block: nn.Module) -> Pair:
    shift = getattr(block, "shift_size", 0)
    return to_pair(tuple(shift) if not isinstance(shift, int) else shift, "shift_size", allow_zero=True)


def _has_hooks(m: nn.Module) -> bool:
    return any(getattr(m, name, None) for name in HOOK_DICTS)


def _window_level_pays(attn: nn.Module) -> bool:
    """Whether a window-level swap of `attn` can be faster than the host's own attention.

    Only the attention on already partitioned windows is replaced there, and the windows of
    each mask pattern are gathered and scattered around the call: on the CPU this measured
    slower than the host's attention (host time over swapped time 0.79-0.97 for windows of 4,
    7 and 8 with 96-192 channels; 0.70-0.89 on SwinT-ChARM-like models). So it is done only on
    CUDA, where the fused kernel runs.
    """
    return any(p.is_cuda for p in attn.parameters())


#: The probe's verdicts of one `plan_swap` call, by structure (see `_structure`), with the path
#: of the module that was probed.
Verdicts = dict[tuple, tuple[ProbeResult, str]]

_PLAIN = (bool, int, float, str, tuple, list, type(None))
#: Dropout and stochastic depth: the identity in eval mode, where the probe runs, so their rates
#: (timm's and torchvision's grow block by block) do not set a block's structure apart.
_DROP = re.compile(r"drop|stochastic", re.IGNORECASE)


def _structure(host: Host, m: nn.Module, swap: Swap) -> tuple:
    """What decides the probe's verdict on `m`, short of its weights: the adapter, the classes
    and `extra_repr` of `m` and its submodules (norm epsilons, activations, ...; dropout rates
    aside), the names,
    shapes and dtypes of its parameters and buffers, its plain attributes (`input_resolution`,
    calling convention, ...), and the swap's geometry."""
    tensors = itertools.chain(m.named_parameters(), m.named_buffers())
    return (
        type(host),
        swap.level,
        swap.channels,
        swap.window_size,
        swap.shift_size,
        swap.note,
        getattr(swap.module, "num_heads", None),
        tuple((type(s), "" if _DROP.search(type(s).__name__) else s.extra_repr()) for s in m.modules()),
        tuple((name, tuple(t.shape), t.dtype, t.device.type) for name, t in tensors),
        tuple(
            sorted(
                (k, repr(v))
                for k, v in vars(m).items()
                if not k.startswith("_") and k != "training" and not _DROP.search(k) and isinstance(v, _PLAIN)
            )
        ),
    )


def _checked(
    host: Host, m: nn.Module, path: str, opts: Options, shift: Pair, verdicts: Verdicts
) -> tuple[Swap, ProbeResult]:
    """Builds the swap of `m` and probes it, or reuses the verdict on a module of the same
    structure (probed on that module's weights). Raises `ValueError` where it cannot be built."""

    def build(module: nn.Module, backend: str | None) -> Swap:
        if isinstance(host, SwinV1Attention):  # window level: the shift is the calling block's
            return host.build(module, path, opts.window_size, backend, shift)
        return host.build(module, path, opts.window_size, backend)

    swap = build(m, opts.backend)
    key = _structure(host, m, swap)
    if key in verdicts:
        result, probed = verdicts[key]
        problem = result.problem and f"{result.problem} (probed on {probed!r}, of the same structure)"
        return swap, replace(result, problem=problem, representative=probed)
    result = probe_swap(host, m, lambda module: build(module, None).module, swap.channels, swap.window_size)
    verdicts[key] = result, path
    return swap, result


def _window_level(
    m: nn.Module, path: str, opts: Options, shift: Pair, verdicts: Verdicts
) -> tuple[Swap | None, ProbeResult | None, str]:
    """The window-level swap of the Swin-v1 attention `m`, or None and why not."""
    if not _window_level_pays(m):
        return None, None, "a window-level swap would be slower than its own attention on the CPU"
    host = SwinV1Attention()
    swap, result = _checked(host, m, path, opts, shift, verdicts)
    return (swap, result, "") if result.ok else (None, result, f"window level: {result.problem}")


def plan_swap(plan: Plan, model: nn.Module, opts: Options) -> list[str]:
    """Builds, probes and plans the replacement of every host module at the same key.

    A host module whose swap cannot be built or fails the probe (`winattn.patch.probe`) is left
    as it is (or, for a block, its attention is swapped at window level where that pays off),
    and the returned notes say which and why. Modules of the same structure (`_structure`: the
    same adapter, classes, shapes, geometry and calling convention) are probed once, on the
    weights of the first of them; the others reuse its verdict, and their notes say so.

    Raises:
        ValueError: an explicit `window_size` that a host module's weights do not fit.
    """
    notes: list[str] = []
    verdicts: Verdicts = {}
    for path, parent, key, child, host in find_hosts(model):
        full = f"{path}.{key}" if path else key
        what = f"{full!r} ({type(child).__qualname__})"
        window_level = isinstance(host, SwinV1Attention)
        try:
            if window_level:
                attention_parts(child, full, opts.window_size)  # raises on projections that do not fit
            if window_level and not _window_level_pays(child):
                notes.append(
                    f"{what} left as it is: a window-level swap would be slower than its own "
                    f"attention on the CPU (its block is of no family winattn can swap whole)."
                )
                continue
            swap, result = _checked(host, child, full, opts, _shift_of(parent), verdicts)
        except ValueError as exc:
            if opts.window_size is not None:
                raise
            notes.append(f"{what} left as it is: {exc}")
            continue
        target, name = child, key
        if not result.ok:
            why = f"{what} not swapped at block level: {result.problem}"
            attn = getattr(child, "attn", None)
            if window_level or not is_swin_v1_attention(attn):
                notes.append(f"{what} left as it is: {result.problem}")
                continue
            swap, result, problem = _window_level(attn, f"{full}.attn", opts, _shift_of(child), verdicts)
            if swap is None:
                notes.append(f"{why}; left as it is ({problem})")
                continue
            notes.append(f"{why}; its attention swapped at window level")
            parent, target, name, full = child, attn, "attn", f"{full}.attn"
        if swap.level == "block" and _has_hooks(getattr(target, "attn", nn.Module())):
            notes.append(
                f"forward hooks on {full + '.attn'!r} no longer fire: the swapped block runs its "
                f"attention in one call; register them on {full!r} (its hooks are kept)."
            )
        if result.skipped is not None:
            exact = result.skipped
        elif result.max_delta == 0:
            exact = "bit-exact on the probe"
        else:
            exact = f"within {result.max_delta:.1g} on the probe"
        if result.representative is not None and result.skipped is None:
            exact += f" of {result.representative!r} (same structure; probed on that module's weights)"
        entry = PatchEntry(
            full,
            "swap",
            swap.channels,
            swap.window_size,
            swap.shift_size,
            count(swap.module) - count(target),
            f"{SwinV1Attention.name if swap.level == 'window' else host.name}, weights kept, {exact}; {swap.note}",
            swap.level,
            class_name(target),
            result.max_delta,
        )
        plan.set_child(parent, name, swap.module, entry)
    return notes


def foreign_attention(model: nn.Module) -> list[str]:
    """Attention modules that no swap adapter and no replace covers, as `"path (Class)"`.

    A module counts as attention when it is an `nn.MultiheadAttention`, or its class name or
    its name in the parent says so (attn, attention, msa, transformer, swin), or it has
    query/key/value projections (children `queries`/`keys`/`values`, `q`/`k`/`v`, `qkv`, ...) or
    a softmax, or it holds a relative position bias; unless it contains a host module (then
    the host is what counts). A container (`ModuleList`, `ModuleDict`, `Sequential`) is never
    listed itself: the attention modules inside it are.
    The model itself is never listed (a model class may be named after its attention).
    """
    found: list[str] = []

    def covered(m: nn.Module) -> bool:
        return is_winattn(m) or is_attention_block(m) or _host_of(m) is not None

    def contains_host(m: nn.Module) -> bool:
        return any(covered(d) for d in m.modules())

    def looks_like_attention(key: str, m: nn.Module) -> bool:
        return (
            isinstance(m, nn.MultiheadAttention)
            or bool(_ATTENTION_NAME.search(type(m).__name__))
            or bool(_ATTENTION_NAME.search(key))
            or any("relative_position" in name for name, _ in m.named_parameters(recurse=False))
            or any(isinstance(c, nn.Softmax) for c in m.children())
            or any(names <= set(m._modules) for names in _QKV_NAMES)
        )

    def walk(path: str, parent: nn.Module) -> None:
        for key, child in parent.named_children():
            full = f"{path}.{key}" if path else key
            if covered(child):
                continue
            if isinstance(child, _CONTAINERS) and len(child):
                # DCAE's `attn` ModuleList: name the attention classes inside, not the container
                before = len(found)
                walk(full, child)
                if len(found) == before and _ATTENTION_NAME.search(key) and not contains_host(child):
                    kinds = ", ".join(dict.fromkeys(type(c).__qualname__ for c in child.children()))
                    found.append(f"{full} ({type(child).__qualname__} of {kinds})")
                continue
            if looks_like_attention(key, child) and not contains_host(child):
                found.append(f"{full} ({type(child).__qualname__})")
                continue
            walk(full, child)

    walk("", model)
    return found
