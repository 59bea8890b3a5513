# SPDX-License-Identifier: Apache-2.0
"""replace: CompressAI's `AttentionBlock` (cheng2020-attn, ELIC) becomes a
`WindowAttentionBlock` at the same key."""

from __future__ import annotations

import torch
from torch import nn

from winattn.modules import WindowAttentionBlock
from winattn.patch.options import Options, check_heads
from winattn.patch.plan import Plan
from winattn.patch.report import PatchEntry
from winattn.patch.transforms import Transform, count, factory, first_conv, modules_outside_winattn

__all__ = ["is_attention_block", "plan_replace"]


def is_attention_block(m: nn.Module) -> bool:
    """CompressAI's `AttentionBlock` (cheng2020-attn, ELIC), recognised without importing it."""
    cls = type(m)
    return cls.__name__ == "AttentionBlock" and cls.__module__.startswith("compressai")


def _latent_positions(transforms: list[Transform]) -> set[tuple[int, str]]:
    """(id of a Sequential, key) pairs of children that sit at the latent's resolution."""
    latent = set()
    for t in transforms:
        stages = t.stage_indices()
        if t.direction == "analysis":
            keys = [s.name for s in t.steps[stages[-1] + 1 :]]
        else:
            keys = [s.name for s in t.steps[: stages[0]]]
        latent.update((id(t.seq), k) for k in keys)
    return latent


def carry_attention_block_weights(old: nn.Module, new: WindowAttentionBlock) -> None:
    """Migration of an `AttentionBlock`'s weights into a `WindowAttentionBlock` (init="identity").

    Both blocks compute `x + conv_a(x) * sigmoid(conv_b(x))` with the same residual units
    (1x1, 3x3, 1x1 convs): `conv_a.{0,1,2}` keep their keys; `AttentionBlock.conv_b.{0,1,2}` (three
    units) and `conv_b.3` (the 1x1 conv) move to `conv_b.{1,2,3}` and `conv_b.4`, behind the new
    window attention `conv_b.0`, whose output projection is zeroed (weight and bias) so that
    `conv_b.0` starts as an exact identity. The one difference left is GELU in place of ReLU.
    """
    state = {}
    for key, value in old.state_dict().items():
        if key.startswith("conv_b."):
            index, rest = key[len("conv_b.") :].split(".", 1)
            key = f"conv_b.{int(index) + 1}.{rest}"
        state[key] = value
    attn = new.attn
    state["conv_b.0.attn.proj.weight"] = torch.zeros_like(attn.proj.weight)
    state["conv_b.0.attn.proj.bias"] = torch.zeros_like(attn.proj.bias)
    missing, unexpected = new.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("conv_b.0.attn.") for k in missing):
        raise RuntimeError(f"AttentionBlock layout not understood: {missing=}, {unexpected=}")


def plan_replace(plan: Plan, model: nn.Module, transforms: list[Transform], opts: Options) -> None:
    """Builds a `WindowAttentionBlock` for every `AttentionBlock` and plans it at the same key."""
    latent = _latent_positions(transforms)
    for path, parent in list(modules_outside_winattn(model)):
        for key, child in list(parent.named_children()):
            if not is_attention_block(child):
                continue
            full = f"{path}.{key}" if path else key
            channels = first_conv(child).in_channels
            check_heads(channels, full, opts)
            window, shift = opts.window((id(parent), key) in latent)
            block = WindowAttentionBlock(
                channels, opts.num_heads, window, shift, backend=opts.backend, **factory(child)
            )
            note = "AttentionBlock -> WindowAttentionBlock"
            if opts.init == "identity":
                carry_attention_block_weights(child, block)
                note += ", conv weights kept, attention output zeroed"
            added = count(block) - count(child)
            host = f"{type(child).__module__}.{type(child).__qualname__}"
            plan.set_child(parent, key, block, PatchEntry(full, "replace", channels, window, shift, added, note, "block", host))
