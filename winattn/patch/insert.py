# SPDX-License-Identifier: Apache-2.0
"""insert: `GatedWindowAttentionBlock`s added to a CNN codec's transforms, where the paper's
WACNN has them.

In an analysis transform a block goes after the 2nd downsampling stage (window 8, shift 4) and
on the latent (window 4, shift 2); in a synthesis transform, before the first layer (window 4,
shift 2) and after the 2nd upsampling stage (window 8, shift 4). Inserted blocks are new named
children (`winattn_stage2`, `winattn_latent`) of the host `nn.Sequential`, which runs its
children in insertion order; the existing keys `"0".."n"` keep their names, so pretrained
weights load with `strict=False`, the missing keys being exactly those of the new blocks.

A model's `forward` may not run its transforms as a plain `nn.Sequential` does (it may index a
child by position, or skip one), so `verify` runs the patched model once on a dummy image and
checks that every new block was called.
"""

from __future__ import annotations

import torch
from torch import nn

from winattn.modules import GatedWindowAttentionBlock
from winattn.patch.options import Options, check_heads
from winattn.patch.plan import Plan
from winattn.patch.report import PatchEntry
from winattn.patch.transforms import Transform, count, factory, first_conv

__all__ = ["LATENT_NAME", "STAGE_NAME", "plan_insert", "verify"]

#: Names of the inserted children. Never use "downsample": CompressAI's loaders rewrite it.
STAGE_NAME = "winattn_stage2"
LATENT_NAME = "winattn_latent"

#: Sizes of the dummy image `verify` tries, smallest first.
PROBE_SIZES = (64, 256)


def plan_insert(plan: Plan, transforms: list[Transform], opts: Options) -> None:
    """Builds the blocks of every transform and plans the transforms' new children."""
    for t in transforms:
        stages = t.stage_indices()
        if t.direction == "analysis":
            # before the 3rd downsampling child, and after the last child (the latent)
            where = [(stages[2], STAGE_NAME, False), (len(t.steps), LATENT_NAME, True)]
        else:
            where = [(0, LATENT_NAME, True), (stages[2], STAGE_NAME, False)]
        new: dict[int, tuple[str, nn.Module]] = {}
        entries = []
        for index, name, latent in where:
            channels = t.steps[index].in_channels if index < len(t.steps) else t.steps[-1].out_channels
            path = f"{t.path}.{name}" if t.path else name
            check_heads(channels, path, opts)
            window, shift = opts.window(latent)
            block = GatedWindowAttentionBlock(
                channels,
                opts.num_heads,
                window,
                shift,
                gate=0.0 if opts.init == "identity" else 1.0,
                backend=opts.backend,
                **factory(t.seq),
            )
            new[index] = (name, block)
            place = "on the latent" if latent else "after the 2nd stride-2 stage"
            entries.append(
                PatchEntry(path, "insert", channels, window, shift, count(block), f"{t.direction}, {place}")
            )
        children = plan.children(t.seq)
        ordered = []
        for i in range(len(children) + 1):
            if i in new:
                ordered.append(new[i])
            if i < len(children):
                ordered.append(children[i])
        plan.set_children(t.seq, ordered, entries)


def verify(model: nn.Module, plan: Plan) -> str | None:
    """Runs the patched `model` on a dummy image; says what went wrong, or None.

    Call it with the plan applied. The check only counts when the unpatched model runs on the
    dummy image (a model whose `forward` takes something else cannot be checked this way).

    Returns:
        None if every inserted block ran and the forward passed (or the check does not apply),
        else the problem, in words.
    """
    conv = first_conv(model)
    if conv is None:
        return None
    blocks = {e.path: model.get_submodule(e.path) for e in plan.entries if e.action == "insert"}
    called: set[str] = set()
    hooks = [m.register_forward_hook(lambda mod, i, o, p=p: called.add(p)) for p, m in blocks.items()]
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        for size in PROBE_SIZES:
            x = torch.rand(1, conv.in_channels, size, size, generator=torch.Generator().manual_seed(0))
            x = x.to(conv.weight)
            plan.undo()
            try:
                with torch.no_grad():
                    model(x)
            except Exception:  # the unpatched model does not take an image of this size
                continue
            finally:
                plan.apply()
            try:
                with torch.no_grad():
                    model(x)
            except Exception as exc:
                return f"the patched forward fails on a {size}x{size} image ({type(exc).__name__}: {exc})"
            missing = sorted(set(blocks) - called)
            if missing:
                return f"forward never calls the inserted block(s) {missing}"
            return None
        return None
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
