# SPDX-License-Identifier: Apache-2.0
"""Finding a codec's analysis and synthesis transforms, for insert and replace.

A transform is a plain `nn.Sequential` with at least `MIN_STAGES` stride-2 stages, found by
running it on a dummy input and recording the spatial size after every child.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from winattn._utils import to_pair
from winattn.patch.hosts import is_winattn

__all__ = ["MIN_STAGES", "Transform", "find_transforms", "first_conv", "modules_outside_winattn"]

#: A transform has at least this many stride-2 stages (hyper-transforms have fewer).
MIN_STAGES = 4


@dataclass(frozen=True)
class Step:
    """One child of a transform, with the sizes it maps between."""

    name: str  # key of the child in the Sequential
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    in_channels: int
    out_channels: int

    @property
    def kind(self) -> str:
        if self.out_size[0] < self.in_size[0] and self.out_size[1] < self.in_size[1]:
            return "down"
        if self.out_size[0] > self.in_size[0] and self.out_size[1] > self.in_size[1]:
            return "up"
        return "same"


@dataclass(frozen=True)
class Transform:
    """An analysis or synthesis transform of the model."""

    path: str
    seq: nn.Sequential
    direction: str  # "analysis" or "synthesis"
    steps: tuple[Step, ...]

    def stage_indices(self) -> list[int]:
        kind = "down" if self.direction == "analysis" else "up"
        return [i for i, s in enumerate(self.steps) if s.kind == kind]


def first_conv(module: nn.Module) -> nn.Module | None:
    """The first `Conv2d` or `ConvTranspose2d` in `module`, or None."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            return m
    return None


def factory(module: nn.Module) -> dict[str, Any]:
    """`device` and `dtype` of `module`'s first parameter, as constructor arguments."""
    p = next(module.parameters(), None)
    return {} if p is None else {"device": p.device, "dtype": p.dtype}


def count(module: nn.Module) -> int:
    """Number of parameters of `module`."""
    return sum(p.numel() for p in module.parameters())


_RESAMPLERS = (nn.PixelShuffle, nn.PixelUnshuffle, nn.Upsample, nn.MaxPool2d, nn.AvgPool2d)


def _strided_layers(module: nn.Module) -> int:
    """Layers that may change the spatial size: a cheap bound on the stages, checked before tracing."""
    n = 0
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            n += max(to_pair(m.stride, "stride")) > 1
        else:
            n += isinstance(m, _RESAMPLERS)
    return n


def _is_plain_sequential(m: nn.Module) -> bool:
    return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward


@torch.no_grad()
def _run_steps(seq: nn.Sequential, x: Tensor) -> tuple[Step, ...]:
    steps = []
    for name, child in seq.named_children():
        y = child(x)
        if not isinstance(y, Tensor) or y.dim() != 4:
            raise TypeError(f"child {name} does not map NCHW to NCHW")
        steps.append(Step(name, tuple(x.shape[-2:]), tuple(y.shape[-2:]), x.shape[1], y.shape[1]))
        x = y
    return tuple(steps)


def _trace(path: str, seq: nn.Sequential) -> Transform | str:
    """Traces `seq` on dummy inputs. Returns the transform, or why it is not one."""
    conv = first_conv(seq)
    if conv is None:
        return "no convolution"
    if _strided_layers(seq) < MIN_STAGES:
        return f"fewer than {MIN_STAGES} strided or resampling layers"
    weight = conv.weight
    modes = {m: m.training for m in seq.modules()}
    seq.eval()
    try:
        probe = _run_steps(seq, weight.new_zeros(1, conv.in_channels, 4, 4))
        kinds = [s.kind for s in probe if s.kind != "same"]
        if not kinds:
            return "no stride-2 stage"
        if kinds[0] == "down":
            steps = _run_steps(seq, weight.new_zeros(1, conv.in_channels, 32, 32))
            direction = "analysis"
        else:
            steps, direction = probe, "synthesis"
    except Exception as exc:  # a Sequential that cannot run on a plain NCHW map is no transform
        return f"cannot run on a dummy NCHW map ({type(exc).__name__})"
    finally:
        for m, mode in modes.items():
            m.training = mode
    transform = Transform(path, seq, direction, steps)
    n = len(transform.stage_indices())
    if n < MIN_STAGES:
        return f"{direction} with {n} stride-2 stage(s), fewer than {MIN_STAGES}"
    return transform


def find_transforms(model: nn.Module) -> tuple[list[Transform], dict[str, str]]:
    """The transforms of `model`, and for every other plain `nn.Sequential`, why it is none."""
    found, rejected = [], {}
    for path, m in modules_outside_winattn(model):
        if not _is_plain_sequential(m) or len(m) == 0:
            continue
        result = _trace(path, m)
        if isinstance(result, str):
            rejected[path or "<model>"] = result
        else:
            found.append(result)
    return found, rejected


def modules_outside_winattn(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """`named_modules()`, without descending into winattn's own modules."""
    yield prefix, model
    for name, child in model.named_children():
        if is_winattn(child):
            continue
        yield from modules_outside_winattn(child, f"{prefix}.{name}" if prefix else name)
