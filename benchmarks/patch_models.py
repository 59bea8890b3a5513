# SPDX-License-Identifier: Apache-2.0
"""`patch_model` on CompressAI's transformer codecs: unpatched vs swapped, timed in one run.

Runs in the environment with CompressAI's development line (`.ci/compressai_dev.sh` builds it as
`.venv-dev`). Two sections, each printed as a table and written to one JSON file under
`benchmarks/results/` (machine, date, load average, versions, every sample's summary):

* `transforms` (the default on the CPU): g_a, g_s, h_a and h_s of STF, WACNN, TCM and DCAE at
  their paper configurations, and the whole entropy model (`latent_codec`: h_a, h_s and, in
  TCM, the channel context's attention blocks), eval mode, `torch.no_grad()`, one image per size. The unpatched
  and the patched model run the same inputs, interleaved call by call, so both see the same load.
* `model` (the default on CUDA): the whole forward (no_grad) and one training step (forward,
  rate-distortion loss, backward, Adam step) of STF and TCM, a batch of 8 256x256 images under
  `torch.autocast` in bf16, unpatched and patched interleaved.

`--models charm-like` times a SwinT-ChARM-like model whose Swin blocks are classes of its own
(`benchmarks/swin_hosts.py`, swapped by structure), and `--models swin_v2_t` torchvision's
Swin-V2 classifier (the whole forward, `--what forward`); neither needs CompressAI, so they also
run in the main environment.

Usage (from the repository root):

    .venv-dev/bin/python benchmarks/patch_models.py                      # CPU transforms
    .venv-dev/bin/python benchmarks/patch_models.py --device cuda        # GPU model section
    .venv-dev/bin/python benchmarks/patch_models.py --section model --quick   # CPU smoke test
    PYTHONPATH=. python benchmarks/patch_models.py --models charm-like --what g_a g_s
    PYTHONPATH=. python benchmarks/patch_models.py --models swin_v2_t --what forward --sizes 256x256
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import importlib
import importlib.metadata
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
try:
    import winattn
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(ROOT))
    import winattn

from winattn import patch_model  # noqa: E402

#: Paper configurations (the zoo's defaults), as `module:Class`.
MODELS = {
    "stf": "compressai.models.stf:SymmetricalTransFormer",
    "stf-wacnn": "compressai.models.stf:WACNN",
    "tcm": "compressai.models.tcm:TCM",
    "dcae": "compressai.models.dcae:DCAE",
    # Swin blocks of their own classes, built for one image size (`benchmarks/swin_hosts.py`)
    "charm-like": "swin_hosts:SwinTCharmLike",
    # Swin-V2 classifiers (random weights, no download): the whole forward is timed
    "swin_v2_t": "torchvision.models:swin_v2_t",
}
#: Models that are not codecs: only their whole forward (`forward`) is timed.
WHOLE = {"swin_v2_t"}
#: Models built for one image size (their blocks hold a fixed `input_resolution`).
SIZED = {"charm-like"}
TRANSFORMS = ("g_a", "g_s", "h_a", "h_s", "latent_codec", "forward")


def build(name: str, seed: int = 0, size: tuple[int, int] | None = None) -> nn.Module:
    """The model `name` at its paper configuration, random weights from `seed`; a model of
    `SIZED` is built for images of `size`."""
    module, cls = MODELS[name].split(":")
    torch.manual_seed(seed)
    return getattr(importlib.import_module(module), cls)(*([size] if name in SIZED else []))


def transforms(model: nn.Module) -> dict[str, Callable[[Tensor], Any]]:
    """g_a, g_s, h_a, h_s and the entropy model (`latent_codec`, on the latent) of a
    development-zoo codec as functions of one tensor; `forward` alone for a model that is not
    a codec."""
    if not hasattr(model, "latent_codec"):
        return {"forward": model}
    codec = model.latent_codec
    if hasattr(model, "_analysis_transform"):  # STF: token layout between its stages

        def g_a(x: Tensor) -> Tensor:
            return model._analysis_transform(x)[0]

        def g_s(y: Tensor) -> Tensor:
            return model._synthesis_transform(y, *y.shape[-2:])

    else:
        g_a, g_s = model.g_a, model.g_s
    return {"g_a": g_a, "g_s": g_s, "h_a": codec.h_a, "h_s": codec.h_s, "latent_codec": codec}


def transform_inputs(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """The input each transform sees when the codec encodes `x` (latents rounded)."""
    fns = transforms(model)
    if "g_a" not in fns:
        return {"forward": x}
    with torch.no_grad():
        y = fns["g_a"](x)
        z = fns["h_a"](y)
    return {"g_a": x, "g_s": torch.round(y), "h_a": y, "h_s": torch.round(z), "latent_codec": y}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - start) * 1e3


def _summary(samples: list[float]) -> dict[str, float]:
    return {"min_ms": min(samples), "median_ms": statistics.median(samples), "n": len(samples)}


@dataclass
class Pair:
    """One thing timed twice: unpatched (`before`) and patched (`after`)."""

    model: str
    what: str
    size: str
    before: Callable[[], Any]
    after: Callable[[], Any]


def interleaved(pairs: Sequence[Pair], repeats: int, warmup: int, device: torch.device, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Times every pair round by round, before and after alternating (and their order flipping
    every round), so that load changes hit both alike."""
    for p in pairs:
        for _ in range(warmup):
            p.before()
            p.after()
    samples: list[tuple[list[float], list[float]]] = [([], []) for _ in pairs]
    for r in range(repeats):
        for p, (before, after) in zip(pairs, samples):
            if r % 2:
                after.append(_time(p.after, device))
                before.append(_time(p.before, device))
            else:
                before.append(_time(p.before, device))
                after.append(_time(p.after, device))
        log(f"round {r + 1}/{repeats}")
    rows = []
    for p, (before, after) in zip(pairs, samples):
        b, a = _summary(before), _summary(after)
        rows.append(
            {
                "model": p.model,
                "what": p.what,
                "size": p.size,
                "unpatched": b,
                "patched": a,
                "ratio_median": a["median_ms"] / b["median_ms"],
                "ratio_min": a["min_ms"] / b["min_ms"],
            }
        )
    return rows


def swaps(model: nn.Module) -> list[dict[str, Any]]:
    """The report of a patched model, as JSON rows."""
    return [
        {
            "path": e.path,
            "action": e.action,
            "level": getattr(e, "level", ""),
            "host": getattr(e, "host", ""),
            "window": list(e.window_size),
            "shift": list(e.shift_size),
            "max_delta": getattr(e, "max_delta", None),
        }
        for e in model.winattn_report.entries
    ]


def transform_pairs(names: Sequence[str], sizes: Sequence[tuple[int, int]], device: torch.device, log: Callable[[str], None], what: Sequence[str] = TRANSFORMS) -> tuple[list[Pair], dict[str, Any]]:
    pairs, reports = [], {}
    for name in names:
        for h, w in sizes:
            if name in SIZED or name not in reports:  # others are built once, for every size
                before = build(name, size=(h, w)).eval().to(device)
                after = patch_model(copy.deepcopy(before))
                reports[name] = swaps(after)
                log(f"{name}: {len(reports[name])} swaps")
                fb, fa = transforms(before), transforms(after)
            x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)).to(device)
            inputs = transform_inputs(before, x)
            for t in [t for t in what if t in inputs]:

                def run(fn: Callable[[Tensor], Any] = fb[t], inp: Tensor = inputs[t]) -> Any:
                    with torch.no_grad():
                        return fn(inp)

                def run_after(fn: Callable[[Tensor], Any] = fa[t], inp: Tensor = inputs[t]) -> Any:
                    with torch.no_grad():
                        return fn(inp)

                pairs.append(Pair(name, t, f"{h}x{w}", run, run_after))
    return pairs, reports


def _rd_loss(out: dict[str, Any], x: Tensor, lmbda: float = 0.013) -> Tensor:
    pixels = x.shape[0] * x.shape[2] * x.shape[3]
    bpp = sum(torch.log(lk.float()).sum() for lk in out["likelihoods"].values()) / (-torch.log(torch.tensor(2.0)) * pixels)
    return lmbda * 255**2 * nn.functional.mse_loss(out["x_hat"].float(), x) + bpp


def model_pairs(names: Sequence[str], size: tuple[int, int], batch: int, dtype: torch.dtype, device: torch.device, log: Callable[[str], None]) -> tuple[list[Pair], dict[str, Any]]:
    pairs, reports = [], {}
    x = torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(0)).to(device)
    label = f"{batch}x{size[0]}x{size[1]}"
    for name in names:
        before = build(name).to(device)
        after = patch_model(copy.deepcopy(before))
        reports[name] = swaps(after)
        log(f"{name}: {len(reports[name])} swaps")
        optimizers = {id(m): torch.optim.Adam(m.parameters(), lr=1e-6) for m in (before, after)}

        def forward(model: nn.Module) -> Callable[[], Any]:
            def fn() -> Any:
                model.eval()
                with torch.no_grad(), torch.autocast(device.type, dtype=dtype):
                    return model(x)["x_hat"]

            return fn

        def train_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> Callable[[], Any]:
            def fn() -> None:
                model.train()
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=dtype):
                    out = model(x)
                _rd_loss(out, x).backward()
                optimizer.step()

            return fn

        pairs.append(Pair(name, "forward", label, forward(before), forward(after)))
        pairs.append(Pair(name, "train step", label, train_step(before, optimizers[id(before)]), train_step(after, optimizers[id(after)])))
    return pairs, reports


def machine(device: torch.device) -> dict[str, Any]:
    """CPU model and instruction set, cores, threads, platform, GPU and load average
    (`winattn._bench.machine_info`, whose package versions are left to `versions()`)."""
    from winattn._bench import machine_info

    info = machine_info(device)
    for key in ("packages", "torch"):
        info.pop(key, None)
    return info


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"winattn": getattr(winattn, "__version__", None), "winattn_path": str(Path(winattn.__file__).parent)}
    for dist in ("torch", "compressai-temp", "compressai", "timm", "triton"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def table(rows: list[dict[str, Any]]) -> str:
    head = ("model", "what", "size", "unpatched ms", "patched ms", "ratio (median)", "ratio (min)")
    lines = [head]
    for r in rows:
        lines.append(
            (
                r["model"],
                r["what"],
                r["size"],
                f"{r['unpatched']['median_ms']:.1f}",
                f"{r['patched']['median_ms']:.1f}",
                f"{r['ratio_median']:.2f}",
                f"{r['ratio_min']:.2f}",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) if i > 2 else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))) for line in lines)


def markdown(document: dict[str, Any]) -> str:
    """The docs table of a `transforms` result: per model and size, what was swapped at which
    level, and the median time of each transform before -> after (ratio of the medians and
    of the minima)."""
    columns = [t for t in TRANSFORMS if any(r["what"] == t for r in document["results"])]
    rows = ["| model | swapped (level, host: count, window/shift) | size | " + " | ".join(columns) + " |"]
    rows.append("|---|---|---|" + "---|" * len(columns))
    by_key: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in document["results"]:
        by_key.setdefault((r["model"], r["size"]), {})[r["what"]] = r
    for (model, size), cells in by_key.items():
        groups: dict[tuple[str, str], set[str]] = {}
        counts: dict[tuple[str, str], int] = {}
        for e in document["swaps"][model]:
            key = (e["level"], e["host"].rsplit(".", 1)[-1])
            groups.setdefault(key, set()).add(f"{e['window'][0]}/{e['shift'][0]}")
            counts[key] = counts.get(key, 0) + 1
        swapped = "<br>".join(f"{level}, `{host}`: {counts[(level, host)]}, {' '.join(sorted(ws))}" for (level, host), ws in groups.items())
        times = [
            f"{c['unpatched']['median_ms']:.0f} → {c['patched']['median_ms']:.0f} ms ({c['ratio_median']:.2f}x, min {c['ratio_min']:.2f}x)" if (c := cells.get(t)) else "–"
            for t in columns
        ]
        rows.append(f"| {model} | {swapped} | {size} | " + " | ".join(times) + " |")
    return "\n".join(rows)


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 256x256, got {text!r}") from None
    if h < 64 or w < 64 or h % 64 or w % 64:
        raise argparse.ArgumentTypeError(f"size {text!r}: both sides must be multiples of 64 (the hyperprior's stride), e.g. 256x256")
    return h, w


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--section", choices=("transforms", "model"), help="default: transforms on the CPU, model on CUDA")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), help="default: the four CompressAI models (transforms), stf and tcm (model); charm-like needs no CompressAI")
    parser.add_argument("--sizes", nargs="+", type=_size, default=None, help="transforms: image sizes HxW (default: 256x256 512x768)")
    parser.add_argument("--what", nargs="+", choices=TRANSFORMS, default=list(TRANSFORMS), help="transforms: which to time (default: all)")
    parser.add_argument("--size", type=_size, default=(256, 256), help="model: image size HxW (default: 256x256)")
    parser.add_argument("--batch", type=int, default=8, help="model: batch (default: 8)")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16", help="model: autocast dtype (default: bf16)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (default: 7)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: 1)")
    parser.add_argument("--quick", action="store_true", help="a smoke test: one small size, batch 1, 2 rounds")
    parser.add_argument("--out", help="JSON path (default: benchmarks/results/patch_models_<device>_<date>.json)")
    parser.add_argument("--no-json", action="store_true", help="print only")
    parser.add_argument("--markdown", metavar="JSON", help="print the docs table of a transforms result and exit")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text(encoding="utf-8"))))
        return 0

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible; run on a GPU machine or use --device cpu")
    torch.set_num_threads(args.threads)
    section = args.section or ("model" if device.type == "cuda" else "transforms")
    if args.quick:
        args.sizes, args.size, args.batch, args.repeats, args.warmup = [(64, 128)], (64, 128), 1, 2, 0

    def log(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    log(f"winattn {getattr(winattn, '__version__', '?')} from {Path(winattn.__file__).parent}")
    info = machine(device)
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    if section == "transforms":
        names = args.models or [n for n in MODELS if n not in SIZED | WHOLE]
        sizes = args.sizes or [(256, 256), (512, 768)]
        pairs, reports = transform_pairs(names, sizes, device, log, list(dict.fromkeys(args.what)))
        settings = {"section": section, "device": str(device), "dtype": "float32", "batch": 1, "sizes": [f"{h}x{w}" for h, w in sizes], "mode": "eval, torch.no_grad()"}
    else:
        names = args.models or ["stf", "tcm"]
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
        pairs, reports = model_pairs(names, args.size, args.batch, dtype, device, log)
        settings = {"section": section, "device": str(device), "autocast": args.dtype, "batch": args.batch, "size": "x".join(map(str, args.size)), "train_step": "forward, MSE + bpp loss, backward, Adam step"}
    settings.update(threads=args.threads, repeats=args.repeats, warmup=args.warmup, timing="wall clock per call, ms; unpatched and patched interleaved, order flipped every round")
    rows = interleaved(pairs, args.repeats, args.warmup, device, log)
    if hasattr(os, "getloadavg"):
        info["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    print(table(rows))
    print(f"load average: start {info.get('load_average_at_start')}, end {info.get('load_average_at_end')}")
    if not args.no_json:
        path = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"patch_models_{device.type}_{now:%Y%m%d-%H%M%S}.json"
        document = {
            "benchmark": "patch_model on CompressAI-dev transformer codecs",
            "date": now.isoformat(),
            "command": " ".join(["benchmarks/patch_models.py", *(argv if argv is not None else sys.argv[1:])]),
            "machine": info,
            "versions": versions(),
            "settings": settings,
            "swaps": reports,
            "results": rows,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
