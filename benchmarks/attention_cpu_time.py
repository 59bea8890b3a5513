# SPDX-License-Identifier: Apache-2.0
"""The default CPU backend against timm's Swin path, timed in CPU time of this process.

`benchmarks/attention.py` times wall clock, which on a shared machine (load above the core
count) measures the neighbours as much as the code. This script times the same two cases of
that benchmark (`winattn:<default>`: `WindowAttention` through the default backend, and
`timm`: `SwinTransformerBlock._attn` with the same weights), forward only, interleaved round
by round, with `time.process_time`: the CPU time this process used, which other processes do
not add to. One thread by default, so that no thread waits on another. Prints a table and
writes JSON to `benchmarks/results/`.

Usage (from the repository root):

    python benchmarks/attention_cpu_time.py                 # the codec shapes, batch 1 and 8
    python benchmarks/attention_cpu_time.py --repeats 30 --threads 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

try:
    import winattn
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import winattn

import torch

from winattn._bench import (
    DEFAULT_BATCHES,
    DEFAULT_SHAPES,
    Skipped,
    _timm_case,
    _winattn_cases,
    machine_info,
    package_versions,
)

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds (default 20)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, help="JSON file (default: benchmarks/results/)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.threads < 1:
        parser.error(f"--repeats and --threads must be >= 1, got {args.repeats} and {args.threads}")
    torch.set_num_threads(args.threads)
    device, now = torch.device("cpu"), dt.datetime.now().astimezone()
    doc = {
        "benchmark": "attention_cpu_time",
        "date": now.isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/attention_cpu_time.py", *(argv or sys.argv[1:])]),
        "machine": machine_info(device),
        "load_average_before": os.getloadavg(),
        "versions": package_versions(),
        "winattn": winattn.__file__,
        "timing": "time.process_time per forward call, cases interleaved round by round; ms",
        "results": [],
    }
    print(f"{'shape':36s} {'B':>2s} {'winattn ms':>10s} {'timm ms':>9s} {'speedup':>8s} {'(min)':>6s}")
    for shape in DEFAULT_SHAPES:
        for batch in DEFAULT_BATCHES:
            cases, _, (module, x) = _winattn_cases(shape, batch, device, torch.float32)
            timm = _timm_case(shape, module, x)
            if isinstance(timm, Skipped):
                raise SystemExit(f"timm case skipped: {timm.reason}")
            run = {"winattn": cases[0].forward, "timm": timm.forward}
            times: dict[str, list[float]] = {name: [] for name in run}
            for _ in range(2):  # warm-up
                for fn in run.values():
                    fn()
            for _ in range(args.repeats):
                for name, fn in run.items():
                    start = time.process_time()
                    fn()
                    times[name].append((time.process_time() - start) * 1e3)
            median = {k: statistics.median(v) for k, v in times.items()}
            low = {k: min(v) for k, v in times.items()}
            row = {
                "shape": shape.label, "batch": batch, "winattn_case": cases[0].name,
                "median_ms": median, "min_ms": low,
                "speedup_vs_timm_median": round(median["timm"] / median["winattn"], 3),
                "speedup_vs_timm_min": round(low["timm"] / low["winattn"], 3),
            }
            doc["results"].append(row)
            print(
                f"{shape.label:36s} {batch:2d} {median['winattn']:10.2f} {median['timm']:9.2f} "
                f"{row['speedup_vs_timm_median']:8.2f} {row['speedup_vs_timm_min']:6.2f}",
                flush=True,
            )
    doc["load_average_after"] = os.getloadavg()
    out = args.out or RESULTS / f"attention_cpu_time_{now:%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
