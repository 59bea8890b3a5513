# SPDX-License-Identifier: Apache-2.0
"""`patch_model`: window attention for an existing codec, in one line.

Three actions, each a rule on the model's structure (not a table of known models), each in its
own file:

* **swap** (`swap.py`, adapters in `hosts/`, one file per host family): window attention
  already in the model (timm's and torchvision's Swin blocks, the official STF code, CompressAI's
  `WMSA` and the blocks built on it, TCM's and DCAE's `WMSA`) is taken over by winattn. Where the
  host block pads, rolls, partitions, attends, reverses, rolls back and crops, the whole block is
  swapped and that path becomes one `window_attention` call (on CUDA, one fused kernel). The new
  module adopts the host's parameters, so state-dict keys, weights and outputs stay the same.
* **replace** (`replace.py`): CompressAI's `AttentionBlock` becomes a `WindowAttentionBlock` at
  the same key.
* **insert** (`insert.py`): `GatedWindowAttentionBlock`s are added to the analysis and synthesis
  transforms of a CNN codec where the paper's WACNN has them (see `winattn.patch.insert`).

Every call is a transaction (`plan.py`): all new modules are built first, then set at once; an
insert whose blocks the model's `forward` does not call, or that breaks it, is rolled back. A
call that raises leaves the model as it was. Calls on the same model are serialised (a lock per
model): a second thread waits, then finds the model patched.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Literal

from torch import nn

from winattn._utils import to_pair
from winattn.modules import GatedWindowAttentionBlock
from winattn.patch.hosts import is_winattn
from winattn.patch.insert import LATENT_NAME, STAGE_NAME, plan_insert, verify
from winattn.patch.options import LATENT_WINDOW, STAGE_WINDOW, Options
from winattn.patch.plan import Plan
from winattn.patch.replace import is_attention_block, plan_replace
from winattn.patch.report import PatchEntry, PatchReport
from winattn.patch.swap import find_hosts, foreign_attention, plan_swap
from winattn.patch.transforms import MIN_STAGES, find_transforms

__all__ = [
    "LATENT_NAME",
    "LATENT_WINDOW",
    "STAGE_NAME",
    "STAGE_WINDOW",
    "GatedWindowAttentionBlock",
    "PatchEntry",
    "PatchReport",
    "patch_model",
]

Mode = Literal["auto", "insert", "replace", "swap"]
Init = Literal["identity", "paper"]
MODES: tuple[str, ...] = ("auto", "insert", "replace", "swap")
INITS: tuple[str, ...] = ("identity", "paper")


def _check_options(
    model: Any, mode: Any, window_size: Any, num_heads: Any, init: Any, backend: Any
) -> Options:
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        raise TypeError(
            f"patch_model got a {type(model).__name__}-wrapped model: the new parameters would be "
            f"unknown to the wrapper and its replicas would drift apart. Patch before wrapping: "
            f"patch_model(model), then {type(model).__name__}(model, ...)."
        )
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"patch_model expects a torch.nn.Module, got model={type(model).__name__} "
            f"({model!r:.60}); pass the model instance, e.g. patch_model(bmshj2018_hyperprior(3))."
        )
    if type(model).__hash__ is None:
        raise TypeError(
            f"patch_model cannot walk {type(model).__name__}: it defines __eq__ without __hash__, "
            f"and torch's named_modules() keeps the modules it has seen in a set. Add "
            f"`__hash__ = nn.Module.__hash__` to the class (identity hashing, as nn.Module has)."
        )
    if mode not in MODES:
        raise ValueError(f"unknown mode={mode!r}; use one of {MODES}.")
    if init not in INITS:
        raise ValueError(f"unknown init={init!r}; use one of {INITS}.")
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int, got num_heads={num_heads!r}.")
    window = None
    if window_size is not None:
        try:
            window = to_pair(window_size, "window_size")
        except (TypeError, ValueError) as exc:
            raise type(exc)(
                f"window_size={window_size!r} does not fit: it must be None (the paper's 8 and 4), "
                f"a positive int or an (h, w) pair of positive ints."
            ) from exc
    if backend is not None:
        from winattn.modules import _check_backend

        _check_backend(backend)
    return Options(window, num_heads, backend, init)


def patch_model(
    model: nn.Module,
    *,
    mode: Mode = "auto",
    window_size: int | tuple[int, int] | None = None,
    num_heads: int = 8,
    backend: str | None = None,
    init: Init = "identity",
) -> nn.Module:
    """Swaps, replaces or adds window attention, in place, and returns the model.

    A transaction: every new module is built before the model changes, and a call that raises
    leaves the model as it was.

    Args:
        model: any `nn.Module`, e.g. a CompressAI codec (not wrapped in `DataParallel` or
            `DistributedDataParallel`: patch first, then wrap).
        mode: `"swap"`, `"replace"`, `"insert"`, or `"auto"`: swap every window attention that
            passes the probe (see `winattn.patch.probe`) and replace CompressAI
            `AttentionBlock`s; insert only into a model that has no attention at all. Swap and
            auto leave what cannot be swapped as it is and list it in the report's notes. Auto
            never adds blocks to, or replaces blocks of, a model with attention it cannot swap,
            and raises, naming that attention, when it can swap nothing. A model that already
            holds winattn modules only gets its remaining hosts swapped (a no-op if none).
        window_size: window of every new block; None uses the paper's (8 after the 2nd stage,
            4 on the latent). The shift is always half the window. For swap, the window is
            fixed by the weights: a different value raises.
        num_heads: attention heads of every new block (must divide the channels).
        backend: winattn backend for the new modules; None follows the global choice.
        init: `"identity"`: inserted blocks start as an exact identity (gate zero) and replaced
            blocks keep the `AttentionBlock`'s convolutions with a zero attention output;
            `"paper"`: PyTorch's default initialisation, as in the paper, gate one.

    Returns:
        `model`, patched, with the report in `model.winattn_report` (a `PatchReport`,
        printable): one `PatchEntry` per module touched, with `path`, `action`, `level`
        (`"block"` or `"window"`), `host` (the replaced class), `channels`, `window_size`,
        `shift_size` (the real shift), `params_added`, `note` and, for swaps, `max_delta` (the
        probe's largest difference; 0.0 when bit-exact); and `notes` (attention left as it
        was, and why; hooks that no longer fire).

    Raises:
        TypeError: `model` is not an `nn.Module`, or is wrapped for data parallelism.
        ValueError: an unknown `mode` or `init`; a `window_size` or `num_heads` that does not
            fit (an explicit `window_size` must fit every host); in auto mode, attention that
            cannot be swapped and nothing that can; an insert that the model's forward does not run;
            nothing to patch (the message says what was looked for and what was found).

    Example:
        >>> from compressai.models import ScaleHyperprior
        >>> model = patch_model(ScaleHyperprior(N=32, M=48))
        >>> [e.path for e in model.winattn_report.entries]
        ['g_a.winattn_stage2', 'g_a.winattn_latent', 'g_s.winattn_latent', 'g_s.winattn_stage2']
    """
    opts = _check_options(model, mode, window_size, num_heads, init, backend)
    with _lock_of(model):
        return _patch(model, mode, opts)


#: One lock per live model, keyed by `id(model)`: a model need not be hashable, and models whose
#: `__eq__`/`__hash__` compare values do not share a lock. The entry goes when the model does.
_LOCKS: dict[int, threading.Lock] = {}
_LOCKS_LOCK = threading.Lock()


def _lock_of(model: nn.Module) -> threading.Lock:
    """The lock that serialises `patch_model` calls on `model` (one per model)."""
    key = id(model)
    with _LOCKS_LOCK:
        lock = _LOCKS.get(key)
        if lock is None:
            lock = _LOCKS[key] = threading.Lock()
            # runs when the model is collected, before its id can be reused
            weakref.finalize(model, _LOCKS.pop, key, None)
        return lock


def _patch(model: nn.Module, mode: str, opts: Options) -> nn.Module:
    report = PatchReport(mode=mode, init=opts.init)
    previous = getattr(model, "winattn_report", None)
    earlier = list(previous.entries) if isinstance(previous, PatchReport) else []
    already = [p for p, m in model.named_modules() if is_winattn(m)]
    hosts = list(find_hosts(model))
    if already and not hosts:
        report.notes.append(
            f"already patched ({len(already)} winattn module(s), e.g. {already[0]!r}, and no "
            f"module left that winattn can swap): no-op."
        )
        report.entries = earlier
        model.winattn_report = report
        return model

    attention_blocks = [p for p, m in model.named_modules() if is_attention_block(m)]
    foreign = foreign_attention(model)
    if already:  # a partly patched model: only swap what is left
        do_swap, do_replace, do_insert = mode in ("auto", "swap"), False, False
    else:
        do_swap = mode == "swap" or (mode == "auto" and bool(hosts))
        do_replace = mode == "replace" or (mode == "auto" and bool(attention_blocks) and not foreign)
        do_insert = mode == "insert" or (mode == "auto" and not hosts and not attention_blocks)
    if mode == "auto" and foreign and not hosts and not already:
        raise ValueError(_foreign_only(model, foreign))
    transforms = find_transforms(model)[0] if do_replace or do_insert else []

    plan = Plan()
    left: list[str] = []
    if do_swap:
        left = plan_swap(plan, model, opts)
    if mode == "auto" and not plan and left and (foreign or not attention_blocks):
        raise ValueError(_foreign_only(model, left + foreign))  # the refused hosts and why, first
    if do_replace:
        plan_replace(plan, model, transforms, opts)
    if do_insert:
        plan_insert(plan, transforms, opts)
    if not plan:
        raise ValueError(_nothing_found(model, mode, hosts, attention_blocks, foreign, left))
    plan.apply()
    if do_insert:
        problem = verify(model, plan)
        if problem is not None:
            plan.undo()
            raise ValueError(
                f"patch_model(mode={mode!r}) rolled back its insert into {type(model).__name__}: "
                f"{problem}. Its forward does not run its transforms as a plain nn.Sequential "
                f"would; the model was left unchanged."
            )
    report.entries = earlier + list(plan.entries)
    report.notes += left
    if foreign:
        report.notes.append(f"left as it is (winattn cannot swap it): {', '.join(foreign)}")
    model.winattn_report = report
    return model


def _foreign_only(model: nn.Module, foreign: list[str]) -> str:
    return (
        f"patch_model(mode='auto') left {type(model).__name__} unchanged: it has attention "
        f"that winattn cannot swap: {'; '.join(f.rstrip('.') for f in foreign[:8])}"
        f"{f' and {len(foreign) - 8} more' if len(foreign) > 8 else ''}. Adding or replacing "
        f"blocks would change its architecture; use mode='insert' (or mode='replace') to do "
        f"that anyway."
    )


def _nothing_found(
    model: nn.Module, mode: str, hosts: list, attention_blocks: list[str], foreign: list[str], left: list[str]
) -> str:
    _, rejected = find_transforms(model)
    found = "; ".join(f"{p}: {why}" for p, why in list(rejected.items())[:6]) or "none"
    looked = {
        "swap": "Swin-v1-style window attention of a known host family (timm, torchvision, STF, CompressAI, TCM, DCAE)",
        "replace": "CompressAI AttentionBlocks",
        "insert": f"analysis/synthesis transforms (nn.Sequential with >= {MIN_STAGES} stride-2 stages)",
    }
    wanted = list(looked.values()) if mode == "auto" else [looked[mode]]
    other = ", ".join(foreign[:6]) or "none"
    refused = (
        f"{len(hosts)} module(s) of a known host family, none of which could be swapped: "
        f"{'; '.join(n.rstrip('.') for n in left[:3])}{f' and {len(left) - 3} more' if len(left) > 3 else ''}"
        if left
        else f"{len(hosts)} swappable module(s)"
    )
    return (
        f"patch_model(mode={mode!r}) found nothing it could patch in {type(model).__name__}. Looked for: "
        f"{', '.join(wanted)}. Found: {refused}; "
        f"{len(attention_blocks)} AttentionBlock(s), attention winattn cannot swap: {other}; "
        f"nn.Sequential that are not transforms: {found}."
    )
