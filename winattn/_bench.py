# SPDX-License-Identifier: Apache-2.0
"""The attention benchmark behind `winattn bench` and `benchmarks/attention.py`.

It times, at the shapes learned codecs use, the forward pass and the forward + backward pass
(median and spread over repeats, after warm-up, every case interleaved round by round so that a
change in machine load hits all of them alike) and measures the peak memory of:

* `winattn:<backend>`: `winattn.WindowAttention` (qkv projection, window attention, output
  projection) on every backend available for the device; the default backend runs through
  the ordinary default path and is marked `(default)`;
* `timm`: timm 1.0's Swin path, `SwinTransformerBlock._attn` (shift, pad, `window_partition`,
  timm's `WindowAttention` with its mask, `window_reverse`, shift back), weights copied from
  the winattn module;
* `torchvision`: `torchvision.models.swin_transformer.shifted_window_attention`, same weights;
* `floor`: the bare GEMMs that the module cannot avoid at that shape, on ready-made contiguous
  operands: qkv projection, `Q K^T`, `P V`, output projection (and, for forward + backward,
  autograd through those four).

Peak memory on the CPU is the high-water mark of bytes held by PyTorch's CPU allocator during
one call, above what was held before it, read from the profiler's allocation events (RSS is
not used: it never shrinks, so it cannot be attributed to a case). On CUDA it is
`torch.cuda.max_memory_allocated` above the memory allocated before the call.

By default it times the three codec shapes at batch 1 and fits the number of rounds into a time
budget (`--budget`, 30 s after start-up); `--full` times batch 1 and 8 with 10 rounds each.
The spread of a case is the interquartile range of its rounds over their median; when the
typical spread is large, or the load average exceeds the cores, it warns that the machine is
busy. The JSON goes to the working directory, or to `--out`.

The module is imported lazily by the CLI; it imports timm and torchvision only to build
their cases, and skips a case (saying why) when its package is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DEFAULT_SHAPES", "FULL_BATCHES", "QUICK_SHAPES", "Shape", "add_arguments", "main", "run"]


@dataclass(frozen=True)
class Shape:
    """One benchmark shape: a `(B, size, size, dim)` map, heads, window and shift."""

    dim: int
    size: int
    heads: int
    window: int
    shift: int

    @property
    def label(self) -> str:
        return f"C={self.dim} {self.size}x{self.size} h{self.heads} w{self.window} s{self.shift}"


#: The shapes learned codecs use: the attention of STF's stages and of WACNN's hyper-latent.
DEFAULT_SHAPES = (
    Shape(128, 64, 4, 8, 4),
    Shape(192, 32, 6, 8, 4),
    Shape(320, 16, 8, 4, 2),
)
DEFAULT_BATCHES = (1,)
#: `--full`: the default shapes at these batches, with this many rounds.
FULL_BATCHES = (1, 8)
FULL_REPEATS = 10
#: A typical spread (median over cases of IQR / median) above this means a busy machine.
BUSY_SPREAD = 0.15
#: A tiny set that runs in seconds (`--quick`), for smoke tests.
QUICK_SHAPES = (Shape(32, 16, 2, 4, 2),)
QUICK_BATCHES = (1,)


@dataclass
class Case:
    """A callable to time; `forward` runs without autograd, `forward_backward` with it."""

    name: str
    forward: Callable[[], Any]
    forward_backward: Callable[[], Any] | None
    output: Callable[[], Tensor] | None = None


@dataclass
class Skipped:
    name: str
    reason: str


@dataclass
class Measurement:
    shape: dict[str, int]
    batch: int
    case: str
    fwd_ms: dict[str, float] = field(default_factory=dict)
    fwd_bwd_ms: dict[str, float] = field(default_factory=dict)
    fwd_peak_mib: float | None = None
    fwd_bwd_peak_mib: float | None = None
    max_abs_diff_vs_reference: float | None = None
    ratios: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Cases


def _winattn_cases(
    shape: Shape, batch: int, device: torch.device, dtype: torch.dtype
) -> tuple[list[Case], list[Skipped], Any]:
    from winattn import WindowAttention
    from winattn.backends import (
        AttentionCall,
        BackendUnavailableError,
        backend_reasons,
        select_backend,
    )

    module = WindowAttention(
        shape.dim, shape.heads, shape.window, shape.shift, device=device, dtype=dtype
    )
    x = torch.randn(batch, shape.size, shape.size, shape.dim, device=device, dtype=dtype)
    probe = AttentionCall.build(
        torch.empty(batch, shape.size, shape.size, 3 * shape.dim, device=device, dtype=dtype),
        num_heads=shape.heads,
        window_size=shape.window,
        shift_size=shape.shift,
        bias_table=module.relative_position_bias_table.detach(),
        bias=None,
        scale=None,
        pad_qkv=None,
        dropout_p=0.0,
    )
    skipped = []
    try:
        default = select_backend(probe).name
    except BackendUnavailableError as err:
        default = None
        skipped.append(Skipped("winattn (default)", str(err)))

    cases = []
    reasons = backend_reasons(probe)  # name -> why it cannot run the probe (empty: it can)
    # the same call with a table that requires grad: inference-only backends (exact) refuse it
    # and are timed forward only
    grad_reasons = backend_reasons(
        dataclasses.replace(probe, bias_table=module.relative_position_bias_table)
    )
    for name in sorted(reasons, key=lambda n: n != default):  # the default first
        if reasons[name]:
            skipped.append(Skipped(f"winattn:{name}", "; ".join(reasons[name])))
            continue
        backend = None if name == default else name  # the default runs the default path
        label = f"winattn:{name}" + (" (default)" if name == default else "")
        case = _module_case(label, lambda x, b=backend: module(x, backend=b), module, x)
        if grad_reasons[name]:
            case = dataclasses.replace(case, forward_backward=None)
        cases.append(case)
    return cases, skipped, (module, x)


def _module_case(name: str, fn: Callable[[Tensor], Tensor], module: torch.nn.Module, x: Tensor) -> Case:
    """A case that runs `fn(x)`; its backward flows into `x` and `module`'s parameters."""
    x_grad = x.detach().clone().requires_grad_(True)
    grad_out = torch.randn_like(x)
    params = list(module.parameters())

    def forward() -> Tensor:
        with torch.no_grad():
            return fn(x)

    def forward_backward() -> None:
        for p in params:
            p.grad = None
        x_grad.grad = None
        fn(x_grad).backward(grad_out)

    return Case(name, forward, forward_backward, output=forward)


def _timm_case(shape: Shape, module: torch.nn.Module, x: Tensor) -> Case | Skipped:
    try:
        from timm.models.swin_transformer import SwinTransformerBlock
    except ImportError as err:
        return Skipped("timm", f"timm is not installed ({err}); pip install 'timm>=1.0'")
    block = SwinTransformerBlock(
        shape.dim,
        input_resolution=(shape.size, shape.size),
        num_heads=shape.heads,
        window_size=shape.window,
        shift_size=shape.shift,
    ).to(device=x.device, dtype=x.dtype)
    if not hasattr(block, "_attn"):
        return Skipped("timm", "this timm has no SwinTransformerBlock._attn (timm 1.0 has)")
    block.attn.load_state_dict(module.state_dict(), strict=True)
    return _module_case("timm", block._attn, block, x)


def _torchvision_case(shape: Shape, module: Any, x: Tensor) -> Case | Skipped:
    try:
        from torchvision.models.swin_transformer import shifted_window_attention
    except ImportError as err:
        return Skipped("torchvision", f"torchvision is not installed ({err})")
    from winattn.geometry import dense_bias, relative_position_index

    window = (shape.window, shape.window)
    index = relative_position_index(window, x.device)  # (N, N)
    weights = {k: v.detach().clone() for k, v in module.state_dict().items()}
    holder = torch.nn.Module()
    for k, v in weights.items():
        holder.register_parameter(k.replace(".", "_"), torch.nn.Parameter(v))

    def fn(inp: Tensor) -> Tensor:
        # As torchvision's ShiftedWindowAttention.forward: the bias is rebuilt on every call.
        table = holder.relative_position_bias_table
        bias = dense_bias(table, window, index).contiguous()[None]  # (1, heads, N, N)
        return shifted_window_attention(
            inp,
            holder.qkv_weight,
            holder.proj_weight,
            bias,
            [shape.window, shape.window],
            shape.heads,
            [shape.shift, shape.shift],
            qkv_bias=holder.qkv_bias,
            proj_bias=holder.proj_bias,
            training=False,
        )

    return _module_case("torchvision", fn, holder, x)


def _floor_case(shape: Shape, batch: int, device: torch.device, dtype: torch.dtype) -> Case:
    c, d, n = shape.dim, shape.dim // shape.heads, shape.window * shape.window
    tokens = batch * shape.size * shape.size
    rows = batch * (shape.size // shape.window) ** 2 * shape.heads  # B * nW * heads

    def make(*size: int) -> Tensor:
        return torch.randn(*size, device=device, dtype=dtype)

    operands = {
        "x": make(tokens, c),
        "w_qkv": make(3 * c, c),
        "b_qkv": make(3 * c),
        "q": make(rows, n, d),
        "k_t": make(rows, d, n),
        "p": make(rows, n, n),
        "v": make(rows, n, d),
        "o": make(tokens, c),
        "w_proj": make(c, c),
        "b_proj": make(c),
    }
    leaves = {k: v.clone().requires_grad_(True) for k, v in operands.items()}

    def gemms(t: dict[str, Tensor]) -> list[Tensor]:
        return [
            F.linear(t["x"], t["w_qkv"], t["b_qkv"]),  # (B*H*W, 3C)
            torch.bmm(t["q"], t["k_t"]),  # (B*nW*heads, N, N)
            torch.bmm(t["p"], t["v"]),  # (B*nW*heads, N, d)
            F.linear(t["o"], t["w_proj"], t["b_proj"]),  # (B*H*W, C)
        ]

    grads = [torch.randn_like(y) for y in gemms(operands)]

    def forward() -> list[Tensor]:
        with torch.no_grad():
            return gemms(operands)

    def forward_backward() -> None:
        for leaf in leaves.values():
            leaf.grad = None
        torch.autograd.backward(gemms(leaves), grads)

    return Case("floor", forward, forward_backward)


def build_cases(
    shape: Shape, batch: int, device: torch.device, dtype: torch.dtype
) -> tuple[list[Case], list[Skipped]]:
    """Every case at one shape and batch, and the ones skipped with their reasons."""
    cases, skipped, (module, x) = _winattn_cases(shape, batch, device, dtype)
    for extra in (_timm_case(shape, module, x), _torchvision_case(shape, module, x)):
        (cases if isinstance(extra, Case) else skipped).append(extra)
    cases.append(_floor_case(shape, batch, device, dtype))
    return cases, skipped


# ---------------------------------------------------------------------------------------------
# Measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    start = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - start) * 1e3


def _peak_mib(fn: Callable[[], Any], device: torch.device) -> float:
    """Peak bytes allocated by PyTorch during one call of `fn`, above the level before it."""
    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
        key=lambda e: e.start_ns(),
    )
    held = peak = 0
    for event in events:
        held += event.nbytes()
        peak = max(peak, held)
    return peak / 2**20


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silences file descriptor 2 (the profiler's C++ start/stop log lines) in a block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    q1, _, q3 = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else (ordered[0],) * 3
    return {
        "median": round(statistics.median(ordered), 4),
        "min": round(ordered[0], 4),
        "max": round(ordered[-1], 4),
        "q1": round(q1, 4),
        "q3": round(q3, 4),
        "n": len(ordered),
    }


MIN_REPEATS = 3


class _Progress:
    """tqdm on stderr when it is installed, else a plain counter on stderr."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.enabled, self.bar = total, 0, enabled, None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self.bar = tqdm(total=total, file=sys.stderr, unit="step", leave=False)

    def step(self, text: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_description(text, refresh=False)
            self.bar.update(1)
        else:
            print(f"\r[{self.done}/{self.total}] {text:<60}", end="", file=sys.stderr, flush=True)

    def skip(self, steps: int) -> None:
        """Drops `steps` planned steps from the total (the time budget cut the rounds)."""
        self.total -= steps
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            print(file=sys.stderr)


def measure(
    shape: Shape,
    batch: int,
    args: argparse.Namespace,
    progress: _Progress,
    budget_s: float | None = None,
) -> tuple[list[Measurement], list[Skipped]]:
    """Times every case at one shape and batch, round-robin, and adds the ratios. With
    `budget_s`, the number of rounds of each mode is cut (not below 3) so that the timing of
    this shape and batch takes about `budget_s` seconds."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    cases, skipped = build_cases(shape, batch, device, dtype)
    modes = [("fwd", lambda c: c.forward)]
    if not args.no_backward:
        modes.append(("fwd_bwd", lambda c: c.forward_backward))
    samples: dict[tuple[str, str], list[float]] = {}
    for mode, pick in modes:
        runnable = [c for c in cases if pick(c) is not None]
        for case in runnable:
            for _ in range(args.warmup):
                pick(case)()
            _sync(device)
        repeats, done, started = args.repeats, 0, time.perf_counter()
        while done < repeats:
            for case in runnable:
                samples.setdefault((case.name, mode), []).append(_timed(pick(case), device))
            done += 1
            progress.step(f"{shape.label} B={batch} {mode}")
            if budget_s is not None and done == 1:
                # the rounds that fit, keeping two rounds' time for warm-up and memory
                per_round = time.perf_counter() - started
                fit = int(budget_s / len(modes) / per_round) - 2
                repeats = max(MIN_REPEATS, min(args.repeats, fit))
                progress.skip(args.repeats - repeats)

    reference = next((c for c in cases if c.name.startswith("winattn:reference")), None)
    expected = reference.output() if reference is not None and reference.output else None
    results = []
    for case in cases:
        m = Measurement(asdict(shape), batch, case.name)
        m.fwd_ms = _summary(samples[(case.name, "fwd")])
        m.fwd_peak_mib = round(_peak_mib(case.forward, device), 3)
        if not args.no_backward and case.forward_backward is not None:
            m.fwd_bwd_ms = _summary(samples[(case.name, "fwd_bwd")])
            m.fwd_bwd_peak_mib = round(_peak_mib(case.forward_backward, device), 3)
        if expected is not None and case.output is not None:
            m.max_abs_diff_vs_reference = float((case.output() - expected).abs().max())
        results.append(m)
    _add_ratios(results)
    return results, skipped


def _add_ratios(results: list[Measurement]) -> None:
    """`vs_floor`: time / floor time (lower is better, 1.0 is the floor). `speedup_vs_timm`:
    timm's time / this time (higher is better). Medians of the same run."""
    by_name = {m.case: m for m in results}
    for m in results:
        for mode in ("fwd", "fwd_bwd"):
            mine = getattr(m, f"{mode}_ms").get("median")
            if mine is None:
                continue
            for other, key, inverse in (("floor", "vs_floor", False), ("timm", "speedup_vs_timm", True)):
                ref = getattr(by_name[other], f"{mode}_ms").get("median") if other in by_name else None
                if ref:
                    m.ratios[f"{mode}_{key}"] = round(ref / mine if inverse else mine / ref, 3)


# ---------------------------------------------------------------------------------------------
# Reporting


def machine_info(device: torch.device) -> dict[str, Any]:
    """What ran the benchmark: CPU model, cores, threads, versions, GPU name."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "packages": package_versions(),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def package_versions() -> dict[str, str | None]:
    """Installed versions of winattn and the packages around it, without importing them."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in ("winattn", "torch", "numpy", "einops", "triton", "timm", "torchvision", "compressai"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    if out["winattn"] is None:  # running from a source checkout
        import winattn

        out["winattn"] = f"{winattn.__version__} (source)"
    return out


def spread(summary: dict[str, float]) -> float | None:
    """The spread of one timing summary: interquartile range / median (0.1 = 10 %)."""
    if not summary or not summary.get("median"):
        return None
    return (summary["q3"] - summary["q1"]) / summary["median"]


def format_table(results: list[Measurement]) -> str:
    """A plain-text table: one row per case, grouped by shape and batch; each time is the
    median, followed by its spread (interquartile range over the median, in %)."""
    header = (
        f"{'shape':<30} {'B':>2}  {'case':<26} {'fwd ms':>9} {'±%':>4} {'/floor':>7} {'timm/x':>7}"
        f" {'fwd+bwd ms':>11} {'±%':>4} {'/floor':>7} {'timm/x':>7} {'peak MiB':>9}"
    )
    lines = [header, "-" * len(header)]

    def num(value: float | None, fmt: str) -> str:
        width = int(fmt.split(".")[0])
        return "-".rjust(width) if value is None else format(value, fmt)

    def pct(summary: dict[str, float]) -> str:
        value = spread(summary)
        return num(None if value is None else 100 * value, "4.0f")

    last = None
    for m in results:
        key = (m.shape["dim"], m.shape["size"], m.batch)
        if last is not None and key != last:
            lines.append("")
        last = key
        label = Shape(**m.shape).label
        lines.append(
            f"{label:<30} {m.batch:>2}  {m.case:<26}"
            f" {num(m.fwd_ms.get('median'), '9.2f')} {pct(m.fwd_ms)}"
            f" {num(m.ratios.get('fwd_vs_floor'), '7.2f')}"
            f" {num(m.ratios.get('fwd_speedup_vs_timm'), '7.2f')}"
            f" {num(m.fwd_bwd_ms.get('median'), '11.2f')} {pct(m.fwd_bwd_ms)}"
            f" {num(m.ratios.get('fwd_bwd_vs_floor'), '7.2f')}"
            f" {num(m.ratios.get('fwd_bwd_speedup_vs_timm'), '7.2f')}"
            f" {num(m.fwd_peak_mib, '9.1f')}"
        )
    return "\n".join(lines)


def busy_warnings(results: list[Measurement], machine: dict[str, Any]) -> list[str]:
    """Why the times of this run should not be quoted, if the run says so: a large typical
    spread, a load average above the cores, or a module faster than its own GEMM floor."""
    out = []
    spreads = sorted(
        v for m in results for t in (m.fwd_ms, m.fwd_bwd_ms) if (v := spread(t)) is not None
    )
    typical = statistics.median(spreads) if spreads else 0.0
    if typical > BUSY_SPREAD:
        out.append(
            f"the rounds of a case vary by {100 * typical:.0f} % (typical interquartile range "
            f"over median; a quiet machine gives a few %)"
        )
    cores = machine.get("logical_cores") or 1
    load = max(machine.get("load_average_at_start", [0])[0], machine.get("load_average_at_end", [0])[0])
    if load > cores:
        out.append(f"the load average was {load:.1f} on {cores} logical cores")
    below = [
        f"{m.case} at {Shape(**m.shape).label} B={m.batch} ({mode})"
        for m in results
        for mode in ("fwd", "fwd_bwd")
        if m.case != "floor" and m.ratios.get(f"{mode}_vs_floor", 1.0) < 0.8
    ]
    if below:
        out.append(f"{len(below)} case(s) ran faster than their own GEMM floor, e.g. {below[0]}")
    return out


def find_repo_root(start: Path) -> Path | None:
    """The winattn source checkout containing `start`, if any (it has `benchmarks/` and a
    `pyproject.toml` naming the `winattn` project)."""
    for folder in (start, *start.parents):
        pyproject = folder / "pyproject.toml"
        if (folder / "benchmarks").is_dir() and pyproject.is_file():
            if 'name = "winattn"' in pyproject.read_text(encoding="utf-8", errors="replace"):
                return folder
    return None


def output_path(out: str | None, device: str, now: dt.datetime) -> Path:
    """Where the JSON goes: `--out` (a file, or a folder to put it in), else the working
    directory."""
    name = f"attention_{device}_{now.strftime('%Y%m%d-%H%M%S')}.json"
    if out is None:
        return Path.cwd() / name
    path = Path(out)
    return path / name if path.is_dir() or out.endswith(os.sep) else path


# ---------------------------------------------------------------------------------------------
# Command line


def _shape_arg(text: str) -> Shape:
    try:
        dim, size, heads, window, shift = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--shape takes DIM,SIZE,HEADS,WINDOW,SHIFT as five integers, got {text!r}; "
            f"e.g. --shape 128,64,4,8,4"
        ) from None
    return Shape(dim, size, heads, window, shift)


def add_arguments(parser: argparse.ArgumentParser, default_out: str | None = None) -> None:
    """Adds the benchmark's options to `parser` (shared by the CLI and the script); the JSON
    goes to `default_out` when `--out` is not given (None: the working directory)."""
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_true",
        help="a tiny shape, batch 1, 3 repeats: a smoke test that takes seconds",
    )
    size.add_argument(
        "--full", action="store_true",
        help=f"the whole grid: batches {' '.join(map(str, FULL_BATCHES))}, {FULL_REPEATS} rounds "
        "each, no time budget (several minutes on 2 CPU cores)",
    )
    parser.add_argument(
        "--shape", type=_shape_arg, action="append", metavar="DIM,SIZE,HEADS,WINDOW,SHIFT",
        help="a shape to time (repeatable); default: the three codec shapes "
        + ", ".join(f"{s.dim},{s.size},{s.heads},{s.window},{s.shift}" for s in DEFAULT_SHAPES),
    )
    parser.add_argument(
        "--batch", type=int, nargs="+",
        help=f"batch sizes (default: {' '.join(map(str, DEFAULT_BATCHES))}; --full: "
        f"{' '.join(map(str, FULL_BATCHES))})",
    )
    parser.add_argument(
        "--budget", type=float, default=30.0, metavar="SECONDS",
        help="seconds to fit the whole run into, by cutting the rounds (default 30; never below "
        "3 rounds a case, so a busy machine takes longer); ignored with --full, --quick or "
        "--repeats",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument(
        "--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
        help="dtype of inputs and weights (default float32)",
    )
    parser.add_argument(
        "--threads", type=int, default=2,
        help="torch.set_num_threads on the CPU (default 2; 0 leaves torch's choice)",
    )
    parser.add_argument(
        "--repeats", type=int,
        help=f"timed rounds per case (default: up to 10 within --budget; --full {FULL_REPEATS}, quick 3)",
    )
    parser.add_argument("--warmup", type=int, help="untimed calls per case first (default 1, --full 2)")
    parser.add_argument("--no-backward", action="store_true", help="time the forward pass only")
    parser.add_argument(
        "--out", default=default_out,
        help="JSON file, or folder to write attention_<device>_<date>.json in "
        "(default: the working directory)" if default_out is None
        else f"JSON file or folder (default: {default_out})",
    )
    parser.add_argument("--no-save", action="store_true", help="print the table, write no JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress indicator")


def run(
    args: argparse.Namespace, argv: Sequence[str] | None = None, prog: str = "winattn bench"
) -> dict[str, Any]:
    """Runs the benchmark described by `args` (see `add_arguments`); prints the table, writes
    the JSON unless `--no-save`, and returns the JSON document. `argv` and `prog` are recorded
    as the command."""
    shapes = args.shape or (QUICK_SHAPES if args.quick else DEFAULT_SHAPES)
    full = getattr(args, "full", False)
    batches = args.batch or (QUICK_BATCHES if args.quick else FULL_BATCHES if full else DEFAULT_BATCHES)
    budget = None if (full or args.quick or args.repeats) else args.budget
    args.repeats = args.repeats or (3 if args.quick else FULL_REPEATS)
    args.warmup = args.warmup if args.warmup is not None else (2 if full else 1)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for, but torch sees no CUDA device here.")
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    now = dt.datetime.now().astimezone()
    machine = machine_info(device)  # before the timing, so that its load average is the start's
    modes = 1 if args.no_backward else 2
    progress = _Progress(len(shapes) * len(batches) * modes * args.repeats, not args.no_progress)
    results: list[Measurement] = []
    skipped: dict[str, str] = {}
    try:
        grid = list(_grid(shapes, batches))
        deadline = time.perf_counter() + (budget or 0.0)
        for i, (shape, batch) in enumerate(grid):
            # what is left of the budget, shared by the shapes still to come
            share = None if budget is None else max(0.0, deadline - time.perf_counter()) / (len(grid) - i)
            found, passed = measure(shape, batch, args, progress, share)
            results += found
            skipped.update({s.name: s.reason for s in passed})
    finally:
        progress.close()

    document = {
        "benchmark": "winattn attention",
        "date": now.isoformat(timespec="seconds"),
        "command": " ".join([prog, *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine,
        "settings": {
            "device": args.device,
            "dtype": args.dtype,
            "threads": torch.get_num_threads(),
            "repeats": args.repeats,
            "budget_s": budget,
            "warmup": args.warmup,
            "forward": "torch.no_grad(), module in eval mode",
            "timing": "wall clock per call, cases interleaved round by round; ms; spread = "
            "(q3 - q1) / median",
            "peak_memory": "CPU: profiler allocation events of PyTorch's CPU allocator; "
            "CUDA: max_memory_allocated; MiB above the level before the call",
            "timm_fused_attn": _timm_fused_attn(),
        },
        "skipped": skipped,
        "results": [asdict(m) for m in results],
    }
    if hasattr(os, "getloadavg"):
        document["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]

    rounds = sorted({m.fwd_ms.get("n", 0) for m in results} - {0}) or [0]
    span = str(rounds[0]) if len(rounds) == 1 else f"{rounds[0]}-{rounds[-1]}"
    print(f"winattn bench: {document['machine']['cpu']}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, device {args.device}, {args.dtype}; ms: median of "
          f"{span} rounds, ±% its "
          f"spread (IQR / median); /floor = time / GEMM floor; timm/x = timm's time / this time")
    print(format_table(results))
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")
    warnings = busy_warnings(results, document["machine"])
    document["busy_warnings"] = warnings
    if warnings:
        print("warning: the machine looks busy, so these times are not for quoting: "
              + "; ".join(warnings) + ". Rerun on a quiet machine (or with --full).", file=sys.stderr)
    if not args.no_save:
        path = output_path(args.out, device.type, now)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
        document["path"] = str(path)
        print(f"wrote {path}")
    return document


def _grid(shapes: Sequence[Shape], batches: Sequence[int]) -> Iterator[tuple[Shape, int]]:
    for shape in shapes:
        for batch in batches:
            yield shape, batch


def _timm_fused_attn() -> bool | None:
    try:
        from timm.layers import use_fused_attn
    except ImportError:
        return None
    return bool(use_fused_attn(experimental=True))


def main(argv: Sequence[str] | None = None, default_out: str | None = None) -> int:
    """Entry point of `benchmarks/attention.py`, which records into `default_out`."""
    parser = argparse.ArgumentParser(
        prog="benchmarks/attention.py", description=__doc__.split("\n\n")[0]
    )
    add_arguments(parser, default_out)
    run(parser.parse_args(argv), argv, prog="python benchmarks/attention.py")
    return 0
