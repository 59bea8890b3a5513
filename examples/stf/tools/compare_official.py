# SPDX-License-Identifier: Apache-2.0
"""Compares `examples.stf` with the official STF code: outputs and CPU time.

Needs a checkout of github.com/Googolxx/STF (only five of its files are read:
`compressai/models/{stf,cnn,base}.py`, `compressai/layers/{layers,win_attention}.py`). They
are copied into a temporary folder, their imports are pointed at the installed CompressAI
1.2.8 (the official code bundles an older, modified CompressAI), and both official models
are built with random weights. The weights are copied into our models through
`examples.stf.loader.convert_official_state_dict` and a strict load; then, in eval mode:

* forward on a random 256x256 image: max |difference| of `x_hat`, `likelihoods["y"]`
  and `likelihoods["z"]`;
* after `update()`: whether both codecs write the same bytes, whether our decode equals our
  forward's clamped `x_hat` exactly, and max |difference| between the two decoders;
* CPU time of a forward, a compress and a decompress of a 512x768 image, official and ours
  in the same process with the same weights and the same number of threads (2 by default),
  interleaved over `--repeat` rounds: the JSON keeps every sample, their median and best,
  the speed-ups (official time over ours) against the targets, the machine, the date and the
  load average before and after;
* with `--profile N`: the N operators that take most of the time of each step of each code
  (`torch.profiler`), the explanation to look at when a speed-up misses its target, and each
  step's bound: the share of our time spent in convolutions and matrix products
  (`DENSE_OPS`, the same arithmetic as in the official code), that share of our median time,
  and the largest speed-up left if everything else took no time at all.

Run from the repository root (no network, nothing downloaded):

    python examples/stf/tools/compare_official.py --official /path/to/STF [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a file: import it as part of its package (PEP 366)
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    __package__ = "examples.stf.tools"

#: Speed-ups (official time / ours) the codecs aim for on the CPU at 512x768.
TARGETS = {"forward": 1.5, "compress": 1.3, "decompress": 1.3}

#: Operators doing a model's convolutions and matrix products: both codes run the same ones,
#: with the same arithmetic (transposed convolutions run inside `aten::_convolution`).
DENSE_OPS = frozenset({
    "aten::mkldnn_convolution", "aten::_convolution", "aten::_slow_conv2d_forward",
    "aten::slow_conv_transpose2d", "aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm",
    "mkldnn::_linear_pointwise",
})

_FILES = {
    "models/stf.py": [
        ("from .utils import conv, update_registered_buffers, deconv",
         "from compressai.models.utils import conv, update_registered_buffers, deconv"),
        ("from compressai.ops import ste_round", "from compressai.ops import quantize_ste as ste_round"),
        ("from timm.models.layers import", "from timm.layers import"),
    ],
    "models/cnn.py": [
        ("from .utils import conv, deconv, update_registered_buffers",
         "from compressai.models.utils import conv, deconv, update_registered_buffers"),
        ("from compressai.ops import ste_round", "from compressai.ops import quantize_ste as ste_round"),
        ("from compressai.layers import conv3x3, subpel_conv3x3, Win_noShift_Attention",
         "from compressai.layers import conv3x3, subpel_conv3x3\nfrom .layers import Win_noShift_Attention"),
    ],
    "models/base.py": [
        ("from .utils import update_registered_buffers",
         "from compressai.models.utils import update_registered_buffers"),
    ],
    "layers/layers.py": [],
    "layers/win_attention.py": [("from timm.models.layers import", "from timm.layers import")],
}


def import_official(checkout: Path, workdir: Path) -> tuple[type, type]:
    """Copies the official model files into `workdir/stf_official/`, patches their imports
    for CompressAI 1.2.8 and returns `(SymmetricalTransFormer, WACNN)`."""
    package = workdir / "stf_official"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for rel, patches in _FILES.items():
        source = checkout / "compressai" / rel
        if not source.is_file():
            raise FileNotFoundError(f"--official must be a checkout of Googolxx/STF; missing {source}.")
        text = source.read_text()
        for old, new in patches:
            if old not in text:
                raise RuntimeError(f"unexpected official source: {old!r} not found in {source}.")
            text = text.replace(old, new)
        (package / Path(rel).name).write_text(text)
    sys.path.insert(0, str(workdir))
    stf = importlib.import_module("stf_official.stf")
    cnn = importlib.import_module("stf_official.cnn")
    return stf.SymmetricalTransFormer, cnn.WACNN


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _profile(fn: Callable[[], Any], rows: int) -> tuple[list[dict[str, Any]], float]:
    """The `rows` operators with the most self CPU time in one call of `fn`, with their
    share, and the share of all self CPU time spent in `DENSE_OPS`."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    dense = sum(e.self_cpu_time_total for e in events if e.key in DENSE_OPS) / total
    top = [
        {"op": e.key, "self_cpu_s": e.self_cpu_time_total / 1e6, "share": e.self_cpu_time_total / total, "calls": e.count}
        for e in events[:rows]
    ]
    return top, dense


def bound(dense_share: float, ours_s: float, official_s: float, target: float) -> dict[str, float]:
    """What a step's convolutions and matrix products leave for a speed-up.

    Args:
        dense_share: share of our step's self CPU time in `DENSE_OPS`.
        ours_s, official_s: median times of the step in both codes.
        target: the step's target speed-up.

    Returns:
        `{"dense_share", "dense_s", "max_speedup", "rest_s", "rest_budget_s"}`: the dense ops'
        share of our median time in seconds; official time over that (the speed-up if all
        other work took no time); our time outside them; and the time the target speed-up
        leaves for that other work (negative: out of reach unless the dense ops get faster).
    """
    dense_s = dense_share * ours_s
    return {
        "dense_share": dense_share,
        "dense_s": dense_s,
        "max_speedup": official_s / dense_s if dense_s > 0 else float("inf"),
        "rest_s": ours_s - dense_s,
        "rest_budget_s": official_s / target - dense_s,
    }


def _steps(models: dict[str, torch.nn.Module], x: torch.Tensor) -> dict[str, Callable[[torch.nn.Module], Any]]:
    """`{step: fn(model)}` for forward, compress and decompress of `x` (encoded once here)."""
    encoded = {m: m.compress(x) for m in models.values()}
    return {
        "forward": lambda m: m(x),
        "compress": lambda m: m.compress(x),
        "decompress": lambda m: m.decompress(encoded[m]["strings"], encoded[m]["shape"]),
    }


def time_codecs(
    models: dict[str, torch.nn.Module],
    x: torch.Tensor,
    repeat: int,
    steps: dict[str, Callable[[torch.nn.Module], Any]] | None = None,
) -> dict[str, Any]:
    """Times forward, compress and decompress of every model on `x`, interleaved.

    Each round runs every step of every model once, so that on a shared machine all of them
    see the same conditions, and the models take turns at going first (a step run right
    after the other model's tends to be a few percent faster); one untimed round warms the
    caches first.

    Returns:
        `{"samples_s": {model: {step: [...]}}, "median_s": ..., "best_s": ...,
        "speedup_median": {step: official / ours}, "speedup_best": ..., "speedup_paired": ...}`;
        `speedup_paired` is the median over rounds of each round's official / ours, which
        cancels drifts of the machine's speed between rounds. `steps` is `_steps(models, x)`
        when given (the caller's, encoded once).
    """
    steps = _steps(models, x) if steps is None else steps
    for m in models.values():  # warm-up round
        for step in steps.values():
            step(m)
    samples = {name: {step: [] for step in steps} for name in models}
    order = list(models.items())
    for r in range(repeat):
        for step, fn in steps.items():
            for name, m in order if r % 2 == 0 else order[::-1]:
                samples[name][step].append(_timed(lambda m=m, fn=fn: fn(m)))
    median = {n: {s: statistics.median(v) for s, v in per.items()} for n, per in samples.items()}
    best = {n: {s: min(v) for s, v in per.items()} for n, per in samples.items()}

    def ratios(t: dict[str, dict[str, float]]) -> dict[str, float]:
        return {s: t["official"][s] / t["ours"][s] for s in steps}

    return {
        "samples_s": samples,
        "median_s": median,
        "best_s": best,
        "speedup_median": ratios(median),
        "speedup_best": ratios(best),
        "speedup_paired": {
            s: statistics.median(o / u for o, u in zip(samples["official"][s], samples["ours"][s])) for s in steps
        },
        "meets_targets": {s: ratios(median)[s] >= TARGETS[s] for s in steps},
    }


@torch.no_grad()
def compare(
    official_cls: type,
    ours_cls: type,
    size: tuple[int, int],
    time_size: tuple[int, int],
    repeat: int,
    profile_rows: int = 0,
) -> dict[str, Any]:
    from ..loader import convert_official_state_dict

    torch.manual_seed(0)
    official = official_cls().eval()
    ours = ours_cls().eval()
    ours.load_state_dict(convert_official_state_dict(official.state_dict()), strict=True)

    x = torch.rand(1, 3, *size)
    a, b = official(x), ours(x)
    result: dict[str, Any] = {
        "forward_max_abs_diff": {
            "x_hat": _max_diff(a["x_hat"], b["x_hat"]),
            "likelihoods_y": _max_diff(a["likelihoods"]["y"], b["likelihoods"]["y"]),
            "likelihoods_z": _max_diff(a["likelihoods"]["z"], b["likelihoods"]["z"]),
        }
    }
    official.update()
    ours.update()
    enc_a, enc_b = official.compress(x), ours.compress(x)
    dec_a = official.decompress(enc_a["strings"], enc_a["shape"])["x_hat"]
    dec_b = ours.decompress(enc_b["strings"], enc_b["shape"])["x_hat"]
    result["same_bytes"] = enc_a["strings"][0][0] == enc_b["strings"][0][0] and list(enc_a["strings"][1]) == list(enc_b["strings"][1])
    result["bytes"] = len(enc_b["strings"][0][0]) + len(enc_b["strings"][1][0])
    result["ours_decode_equals_forward"] = bool(torch.equal(dec_b, b["x_hat"].clamp(0, 1)))
    result["decode_max_abs_diff"] = _max_diff(dec_a, dec_b)

    models = {"official": official, "ours": ours}
    xt = torch.rand(1, 3, *time_size)
    steps = _steps(models, xt)
    result["time"] = time_codecs(models, xt, repeat, steps)
    if profile_rows:
        median = result["time"]["median_s"]
        result["profile"], result["bound"] = {}, {}
        for step, fn in steps.items():
            runs = {name: _profile(lambda m=m, fn=fn: fn(m), profile_rows) for name, m in models.items()}
            result["profile"][step] = {name: top for name, (top, _) in runs.items()}
            result["bound"][step] = bound(
                runs["ours"][1], median["ours"][step], median["official"][step], TARGETS[step]
            )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="checkout of github.com/Googolxx/STF")
    parser.add_argument("--arch", choices=("stf", "cnn", "both"), default="both")
    parser.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"))
    parser.add_argument("--time-size", type=int, nargs=2, default=(512, 768), metavar=("H", "W"))
    parser.add_argument("--repeat", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of both codes")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="also record the top N ops of each step, and each step's bound")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    if args.repeat < 1 or args.threads < 1 or args.profile < 0:
        parser.error(
            f"--repeat and --threads must be >= 1 and --profile >= 0, got --repeat {args.repeat} "
            f"--threads {args.threads} --profile {args.profile}."
        )
    torch.set_num_threads(args.threads)
    from winattn import get_backend
    from winattn._bench import machine_info

    from ..models import WACNN, SymmetricalTransFormer

    workdir = Path(tempfile.mkdtemp(prefix="stf_official_"))
    try:
        official_stf, official_cnn = import_official(args.official, workdir)
        pairs = {"stf": (official_stf, SymmetricalTransFormer), "cnn": (official_cnn, WACNN)}
        arches = list(pairs) if args.arch == "both" else [args.arch]
        import compressai

        report: dict[str, Any] = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(torch.device("cpu")),
            "torch": torch.__version__,
            "compressai": compressai.__version__,
            "threads": torch.get_num_threads(),
            "winattn_backend": get_backend(),
            "cpu_load_average_at_start": list(os.getloadavg()),
            "size": list(args.size),
            "time_size": list(args.time_size),
            "repeat": args.repeat,
            "targets_speedup": TARGETS,
        }
        report["results"] = {
            a: compare(*pairs[a], tuple(args.size), tuple(args.time_size), args.repeat, args.profile) for a in arches
        }
        report["cpu_load_average_at_end"] = list(os.getloadavg())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
