# SPDX-License-Identifier: Apache-2.0
"""`patch_model`: window attention for an existing codec, in one line.

Three actions, each a rule on the model's structure (not a table of known classes):

* **swap**: a Swin-v1-style window attention already in the model (a module with `qkv`, `proj`
  and `relative_position_bias_table`, as in timm, torchvision and the official STF code) is
  replaced by winattn's implementation. The new module reuses the original's parameters, so its
  state-dict keys, its weights and its outputs stay the same (see `winattn.integrations.swin`).
* **replace**: CompressAI's `AttentionBlock` is replaced by a `WindowAttentionBlock` at the same
  key.
* **insert**: `GatedWindowAttentionBlock`s are added to the analysis and synthesis transforms of
  a CNN codec where the paper's WACNN has them. A transform is an `nn.Sequential` with at least
  four stride-2 stages, found by running it on a dummy input and recording the spatial size
  after every child. In an analysis transform a block goes after the 2nd downsampling stage
  (window 8, shift 4) and on the latent (window 4, shift 2); in a synthesis transform, before
  the first layer (window 4, shift 2) and after the 2nd upsampling stage (window 8, shift 4).

Inserted blocks are added as new named children (`winattn_stage2`, `winattn_latent`) of the host
`nn.Sequential`, which runs its children in insertion order. The existing keys `"0".."n"` keep
their names, so the state-dict keys of the original model are unchanged and pretrained weights
load with `strict=False`, the missing keys being exactly those of the new blocks. Note that
integer indexing (`g_a[4]`) of a patched `nn.Sequential` counts the new children too; index by
key (`g_a._modules["4"]`) when you need the original numbering.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from winattn._utils import to_pair
from winattn.modules import WindowAttention, WindowAttentionBlock

__all__ = [
    "GatedWindowAttentionBlock",
    "PatchEntry",
    "PatchReport",
    "patch_model",
]

Mode = Literal["auto", "insert", "replace", "swap"]
Init = Literal["identity", "paper"]
MODES: tuple[str, ...] = ("auto", "insert", "replace", "swap")
INITS: tuple[str, ...] = ("identity", "paper")

#: Windows of the paper's WACNN: 8x8 (shift 4) on N-channel features, 4x4 (shift 2) on the latent.
STAGE_WINDOW = 8
LATENT_WINDOW = 4
#: A transform has at least this many stride-2 stages (hyper-transforms have fewer).
MIN_STAGES = 4
#: Names of the inserted children. Never use "downsample": CompressAI's loaders rewrite it.
STAGE_NAME = "winattn_stage2"
LATENT_NAME = "winattn_latent"


class GatedWindowAttentionBlock(WindowAttentionBlock):
    """`WindowAttentionBlock` whose output branch is scaled by a learned per-channel gate.

    `x + gate * conv_a(x) * sigmoid(conv_b(x))`. With the gate at zero the block is an exact
    identity (`x + 0 == x` in floating point), so inserting it into a pretrained codec changes
    nothing, bit for bit, until fine-tuning moves the gate; with the gate at one it is the
    paper's block. The state dict is that of `WindowAttentionBlock` plus `gate`.

    Args:
        dim: channels `C`.
        num_heads: attention heads.
        window_size: `Wh` or `(Wh, Ww)`.
        shift_size: `sh` or `(sh, sw)`.
        gate: initial value of the gate, 0.0 (identity) or 1.0 (the paper's block).
        **kwargs: the other arguments of `WindowAttentionBlock`.

    Shapes:
        x: `(B, C, H, W)` -> `(B, C, H, W)`.

    Example:
        >>> block = GatedWindowAttentionBlock(32, num_heads=4, window_size=8, shift_size=4)
        >>> x = torch.randn(1, 32, 12, 20)
        >>> torch.equal(block(x), x)
        True
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        window_size: int | tuple[int, int] = 8,
        shift_size: int | tuple[int, int] = 0,
        gate: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(dim, num_heads, window_size, shift_size, **kwargs)
        factory = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        self.gate = nn.Parameter(torch.full((dim,), float(gate), **factory))  # (C,)

    def forward(self, x: Tensor) -> Tensor:
        """Args:
            x: `(B, C, H, W)`.

        Returns:
            `(B, C, H, W)`.
        """
        self._check_input(x)
        gate = self.gate.view(1, -1, 1, 1)  # (1, C, 1, 1)
        return x + gate * (self.conv_a(x) * torch.sigmoid(self.conv_b(x)))


# ---------------------------------------------------------------------------------------------
# The report.


@dataclass(frozen=True)
class PatchEntry:
    """One module that `patch_model` touched.

    Attributes:
        path: dotted path of the new module in the model (its state-dict prefix).
        action: `"insert"`, `"replace"` or `"swap"`.
        channels: channels the module works on.
        window_size: `(Wh, Ww)`.
        shift_size: `(sh, sw)`.
        params_added: parameters the model gained (negative when it lost some).
        note: anything else worth knowing (what was replaced, what was kept).
    """

    path: str
    action: str
    channels: int
    window_size: tuple[int, int]
    shift_size: tuple[int, int]
    params_added: int
    note: str = ""


@dataclass
class PatchReport:
    """What `patch_model` did; attached to the model as `model.winattn_report`.

    Attributes:
        mode: the mode asked for.
        init: the initialisation asked for.
        entries: every module touched, in model order.
        notes: remarks, e.g. that the model was already patched.

    Example:
        >>> import torch.nn as nn
        >>> from winattn import patch_model
        >>> model = nn.Sequential(*[m for _ in range(4) for m in (nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU())])
        >>> print(patch_model(model).winattn_report.entries[0].path)
        winattn_stage2
    """

    mode: str
    init: str
    entries: list[PatchEntry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def params_added(self) -> int:
        """Total parameters added (negative if the model shrank)."""
        return sum(e.params_added for e in self.entries)

    @property
    def actions(self) -> list[str]:
        """The distinct actions taken, in order of first use."""
        return list(dict.fromkeys(e.action for e in self.entries))

    def __str__(self) -> str:
        head = f"winattn patch (mode={self.mode!r}, init={self.init!r})"
        rows = [("path", "action", "channels", "window", "shift", "params", "note")]
        for e in self.entries:
            rows.append(
                (
                    e.path,
                    e.action,
                    str(e.channels),
                    "x".join(map(str, e.window_size)),
                    "x".join(map(str, e.shift_size)),
                    f"{e.params_added:+,}",
                    e.note,
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [head]
        if self.entries:
            lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
            lines.append(f"total parameters added: {self.params_added:+,}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Finding transforms: trace the spatial size through an nn.Sequential.


@dataclass(frozen=True)
class _Step:
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
class _Transform:
    path: str
    seq: nn.Sequential
    direction: str  # "analysis" or "synthesis"
    steps: tuple[_Step, ...]

    def stage_indices(self) -> list[int]:
        kind = "down" if self.direction == "analysis" else "up"
        return [i for i, s in enumerate(self.steps) if s.kind == kind]


def _first_conv(module: nn.Module) -> nn.Module | None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            return m
    return None


_RESAMPLERS = (
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.Upsample,
    nn.MaxPool2d,
    nn.AvgPool2d,
)


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
def _run_steps(seq: nn.Sequential, x: Tensor) -> tuple[_Step, ...]:
    steps = []
    for name, child in seq.named_children():
        y = child(x)
        if not isinstance(y, Tensor) or y.dim() != 4:
            raise TypeError(f"child {name} does not map NCHW to NCHW")
        steps.append(
            _Step(name, tuple(x.shape[-2:]), tuple(y.shape[-2:]), x.shape[1], y.shape[1])
        )
        x = y
    return tuple(steps)


def _trace(path: str, seq: nn.Sequential) -> _Transform | str:
    """Traces `seq` on dummy inputs. Returns the transform, or why it is not one."""
    conv = _first_conv(seq)
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
    transform = _Transform(path, seq, direction, steps)
    n = len(transform.stage_indices())
    if n < MIN_STAGES:
        return f"{direction} with {n} stride-2 stage(s), fewer than {MIN_STAGES}"
    return transform


def _find_transforms(model: nn.Module) -> tuple[list[_Transform], dict[str, str]]:
    found, rejected = [], {}
    for path, m in _named_modules_outside_winattn(model):
        if not _is_plain_sequential(m) or len(m) == 0:
            continue
        result = _trace(path, m)
        if isinstance(result, str):
            rejected[path or "<model>"] = result
        else:
            found.append(result)
    return found, rejected


def _named_modules_outside_winattn(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """`named_modules()`, without descending into winattn's own modules."""
    yield prefix, model
    for name, child in model.named_children():
        if _is_winattn(child):
            continue
        yield from _named_modules_outside_winattn(child, f"{prefix}.{name}" if prefix else name)


def _is_winattn(m: nn.Module) -> bool:
    return isinstance(m, (WindowAttention, WindowAttentionBlock))


# ---------------------------------------------------------------------------------------------
# The three actions. Each returns the entries of the report.


@dataclass(frozen=True)
class _Options:
    window_size: tuple[int, int] | None
    num_heads: int
    backend: str | None
    init: str

    def window(self, latent: bool) -> tuple[tuple[int, int], tuple[int, int]]:
        if self.window_size is not None:
            wh, ww = self.window_size
        else:
            wh = ww = LATENT_WINDOW if latent else STAGE_WINDOW
        return (wh, ww), (wh // 2, ww // 2)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _factory(module: nn.Module) -> dict[str, Any]:
    p = next(module.parameters(), None)
    return {} if p is None else {"device": p.device, "dtype": p.dtype}


def _check_heads(channels: int, path: str, opts: _Options) -> None:
    if channels % opts.num_heads or channels % 2:
        raise ValueError(
            f"num_heads={opts.num_heads} does not fit the {channels} channels at {path!r}: the "
            f"channels must be even and divisible by num_heads; pick num_heads among the "
            f"divisors of {channels}."
        )


def _insert(transforms: list[_Transform], opts: _Options) -> list[PatchEntry]:
    entries = []
    for t in transforms:
        stages = t.stage_indices()
        if t.direction == "analysis":
            # before the 3rd downsampling child, and after the last child (the latent)
            plan = [(stages[2], STAGE_NAME, False), (len(t.steps), LATENT_NAME, True)]
        else:
            plan = [(0, LATENT_NAME, True), (stages[2], STAGE_NAME, False)]
        new: dict[int, tuple[str, nn.Module]] = {}
        for index, name, latent in plan:
            channels = t.steps[index].in_channels if index < len(t.steps) else t.steps[-1].out_channels
            path = f"{t.path}.{name}" if t.path else name
            _check_heads(channels, path, opts)
            window, shift = opts.window(latent)
            block = GatedWindowAttentionBlock(
                channels,
                opts.num_heads,
                window,
                shift,
                gate=0.0 if opts.init == "identity" else 1.0,
                backend=opts.backend,
                **_factory(t.seq),
            )
            new[index] = (name, block)
            where = "on the latent" if latent else "after the 2nd stride-2 stage"
            entries.append(
                PatchEntry(path, "insert", channels, window, shift, _count(block), f"{t.direction}, {where}")
            )
        children = list(t.seq.named_children())
        for key in list(t.seq._modules):
            del t.seq._modules[key]
        for i in range(len(children) + 1):
            if i in new:
                t.seq.add_module(*new[i])
            if i < len(children):
                t.seq.add_module(*children[i])
    return entries


def _is_attention_block(m: nn.Module) -> bool:
    """CompressAI's `AttentionBlock` (cheng2020-attn, ELIC), recognised without importing it."""
    cls = type(m)
    return cls.__name__ == "AttentionBlock" and cls.__module__.startswith("compressai")


def _latent_positions(transforms: list[_Transform]) -> set[tuple[int, str]]:
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


def _carry_attention_block_weights(old: nn.Module, new: WindowAttentionBlock) -> None:
    """Migration of an `AttentionBlock`'s weights into a `WindowAttentionBlock` (init="identity").

    Both blocks compute `x + conv_a(x) * sigmoid(conv_b(x))` with the same residual units
    (1x1, 3x3, 1x1 convs): `conv_a.{0,1,2}` keep their keys; `AttentionBlock.conv_b.{0,1,2}` (three
    units) and `conv_b.3` (the 1x1 conv) move to `conv_b.{1,2,3}` and `conv_b.4`, behind the new
    window attention `conv_b.0`, whose output projection is zeroed so that `conv_b.0` starts as
    an exact identity. The one difference left is GELU in place of ReLU.
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


def _replace(model: nn.Module, transforms: list[_Transform], opts: _Options) -> list[PatchEntry]:
    latent = _latent_positions(transforms)
    entries = []
    for path, parent in list(_named_modules_outside_winattn(model)):
        for key, child in list(parent.named_children()):
            if not _is_attention_block(child):
                continue
            full = f"{path}.{key}" if path else key
            channels = _first_conv(child).in_channels
            _check_heads(channels, full, opts)
            window, shift = opts.window((id(parent), key) in latent)
            block = WindowAttentionBlock(
                channels, opts.num_heads, window, shift, backend=opts.backend, **_factory(child)
            )
            note = "AttentionBlock -> WindowAttentionBlock"
            if opts.init == "identity":
                _carry_attention_block_weights(child, block)
                note += ", conv weights kept, attention output zeroed"
            added = _count(block) - _count(child)
            setattr(parent, key, block)
            entries.append(PatchEntry(full, "replace", channels, window, shift, added, note))
    return entries


def _swap(model: nn.Module, opts: _Options) -> list[PatchEntry]:
    from winattn.integrations.swin import find_swappable, swap_module

    # Build every replacement before changing anything: a module that cannot be swapped
    # raises here and leaves the model as it was.
    planned = []
    for path, parent, key, child in find_swappable(model):
        full = f"{path}.{key}" if path else key
        planned.append((full, parent, key, child, swap_module(child, full, opts.window_size, opts.backend)))
    entries = []
    for full, parent, key, child, new in planned:
        setattr(parent, key, new)
        entries.append(
            PatchEntry(
                full,
                "swap",
                new.dim,
                new.window_size,
                new.shift_size,
                _count(new) - _count(child),
                f"{type(child).__module__}.{type(child).__qualname__} -> {type(new).__name__}, weights kept",
            )
        )
    return entries


# ---------------------------------------------------------------------------------------------
# The entry point.


def _check_options(
    model: Any, mode: Any, window_size: Any, num_heads: Any, init: Any
) -> _Options:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"patch_model expects a torch.nn.Module, got model={type(model).__name__} "
            f"({model!r:.60}); pass the model instance, e.g. patch_model(bmshj2018_hyperprior(3))."
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
    return _Options(window, num_heads, None, init)


def patch_model(
    model: nn.Module,
    *,
    mode: Mode = "auto",
    window_size: int | tuple[int, int] | None = None,
    num_heads: int = 8,
    backend: str | None = None,
    init: Init = "identity",
) -> nn.Module:
    """Adds, replaces or swaps in window attention, in place, and returns the model.

    Args:
        model: any `nn.Module`, e.g. a CompressAI codec.
        mode: `"swap"`, `"replace"`, `"insert"`, or `"auto"`: swap where Swin-style window
            attention exists and replace where CompressAI `AttentionBlock`s exist; insert when
            neither does.
        window_size: window of every new block; None uses the paper's (8 after the 2nd stage,
            4 on the latent). The shift is always half the window. For swap, the window is
            fixed by the weights: a different value raises.
        num_heads: attention heads of every new block (must divide the channels).
        backend: winattn backend for the new modules; None follows the global choice.
        init: `"identity"`: inserted blocks start as an exact identity (gate zero) and replaced
            blocks keep the `AttentionBlock`'s convolutions with a zero attention output;
            `"paper"`: PyTorch's default initialisation, as in the paper, gate one.

    Returns:
        `model`, patched, with the report in `model.winattn_report` (printable).

    Raises:
        TypeError: `model` is not an `nn.Module`.
        ValueError: an unknown `mode` or `init`; a `window_size` or `num_heads` that does not
            fit; nothing to patch (the message says what was looked for and what was found).

    Example:
        >>> from compressai.models import ScaleHyperprior
        >>> model = patch_model(ScaleHyperprior(N=32, M=48))
        >>> [e.path for e in model.winattn_report.entries]
        ['g_a.winattn_stage2', 'g_a.winattn_latent', 'g_s.winattn_latent', 'g_s.winattn_stage2']
    """
    opts = _check_options(model, mode, window_size, num_heads, init)
    if backend is not None:
        from winattn.modules import _check_backend

        _check_backend(backend)
        opts = _Options(opts.window_size, opts.num_heads, backend, opts.init)
    report = PatchReport(mode=mode, init=init)

    already = [p for p, m in model.named_modules() if _is_winattn(m)]
    if already:
        report.notes.append(
            f"already patched ({len(already)} winattn module(s), e.g. {already[0]!r}): no-op."
        )
        previous = getattr(model, "winattn_report", None)
        if isinstance(previous, PatchReport):
            report.entries = list(previous.entries)
        model.winattn_report = report
        return model

    from winattn.integrations.swin import find_swappable

    swappable = list(find_swappable(model))
    attention_blocks = [p for p, m in model.named_modules() if _is_attention_block(m)]
    do_swap = mode == "swap" or (mode == "auto" and bool(swappable))
    do_replace = mode == "replace" or (mode == "auto" and bool(attention_blocks))
    do_insert = mode == "insert" or (mode == "auto" and not swappable and not attention_blocks)
    transforms = _find_transforms(model)[0] if do_replace or do_insert else []
    if do_swap:
        report.entries += _swap(model, opts)
    if do_replace:
        report.entries += _replace(model, transforms, opts)
    if do_insert:
        report.entries += _insert(transforms, opts)
    if not report.entries:
        raise ValueError(_nothing_found(model, mode, swappable, attention_blocks))
    model.winattn_report = report
    return model


def _nothing_found(model: nn.Module, mode: str, swappable: list, attention_blocks: list[str]) -> str:
    _, rejected = _find_transforms(model)
    found = "; ".join(f"{p}: {why}" for p, why in list(rejected.items())[:6]) or "no nn.Sequential"
    looked = {
        "swap": "Swin-v1 window attention (modules with qkv, proj and relative_position_bias_table)",
        "replace": "CompressAI AttentionBlocks",
        "insert": f"analysis/synthesis transforms (nn.Sequential with >= {MIN_STAGES} stride-2 stages)",
    }
    wanted = list(looked.values()) if mode == "auto" else [looked[mode]]
    return (
        f"patch_model(mode={mode!r}) found nothing to patch in {type(model).__name__}. Looked for: "
        f"{', '.join(wanted)}. Found: {len(swappable)} Swin-style attention module(s), "
        f"{len(attention_blocks)} AttentionBlock(s), and these nn.Sequential that are not "
        f"transforms: {found}."
    )
