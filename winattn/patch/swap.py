# SPDX-License-Identifier: Apache-2.0
"""swap: window attention already in the model, of a known host family, replaced by winattn's.

The adapters (`winattn.patch.hosts`) recognise host modules by structure. Where the host is a
whole block (it pads, rolls, partitions, attends, reverses, rolls back and crops), the block is
swapped whole (level `"block"`); a Swin-v1 attention inside a block of no known family is
swapped alone (level `"window"`). Either way the new module keeps the host's parameters and
state-dict keys, and its outputs.

`foreign_attention` lists the attention modules no adapter covers, so that `mode="auto"` can
refuse to change the architecture of a model that already has attention of its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from torch import nn

from winattn._utils import to_pair
from winattn.patch.hosts import HOSTS, Host, is_winattn
from winattn.patch.hosts.base import class_name
from winattn.patch.hosts.swin_v1 import SwinV1Attention
from winattn.patch.options import Options
from winattn.patch.plan import Plan
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


def plan_swap(plan: Plan, model: nn.Module, opts: Options) -> None:
    """Builds the replacement of every host module and plans it at the same key.

    Raises:
        ValueError: a host module cannot be swapped (the message says which and why).
    """
    for path, parent, key, child, host in find_hosts(model):
        full = f"{path}.{key}" if path else key
        if isinstance(host, SwinV1Attention):
            # window level: the shift is the calling block's
            shift = getattr(parent, "shift_size", 0)
            shift = to_pair(tuple(shift) if not isinstance(shift, int) else shift, "shift_size", allow_zero=True)
            swap = host.build(child, full, opts.window_size, opts.backend, shift)
        else:
            swap = host.build(child, full, opts.window_size, opts.backend)
        note = f"{host.name}, weights kept; {swap.note}"
        entry = PatchEntry(
            full,
            "swap",
            swap.channels,
            swap.window_size,
            swap.shift_size,
            count(swap.module) - count(child),
            note,
            swap.level,
            class_name(child),
        )
        plan.set_child(parent, key, swap.module, entry)


def foreign_attention(model: nn.Module) -> list[str]:
    """Attention modules that no swap adapter and no replace covers, as `"path (Class)"`.

    A module counts as attention when it is an `nn.MultiheadAttention`, or its class name or
    its name in the parent says so (attn, attention, msa, transformer, swin), or it has
    query/key/value projections (children `queries`/`keys`/`values`, `q`/`k`/`v`, `qkv`, ...) or
    a softmax, or it holds a relative position bias; unless it contains a host module (then
    the host is what counts).
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
            if looks_like_attention(key, child) and not contains_host(child):
                found.append(f"{full} ({type(child).__qualname__})")
                continue
            walk(full, child)

    walk("", model)
    return found
