# SPDX-License-Identifier: Apache-2.0
"""Times the entropy model's two kernel choices for small maps on this CPU.

`OneDNNConv2d` sends the 3x3 convolutions of small maps (at most 20480 input elements, batch 1)
to oneDNN on CPUs with AVX-512 and leaves them to PyTorch's own kernel elsewhere
(`examples.stf.entropy._onednn_for_small_maps`). This tool measures that choice on the machine
it runs on: forward, compress and decompress of one photograph (scikit-image's astronaut,
reflected to the size asked for) with oneDNN forced on small maps and with PyTorch's choice,
same model and weights, in one process, interleaved round by round with the order flipped
every round. It prints and optionally writes JSON: every sample, the medians, the median of
the per-round ratios (oneDNN time over PyTorch's), whether both choices wrote the same bytes,
the machine and the load average. A ratio above 1 means PyTorch's kernel is faster here.

Run from the repository root (random weights; nothing downloaded):

    python examples/stf/tools/small_convs.py --arch cnn --size 128 128 --repeat 15 [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):  # run as a file: import it as part of its package (PEP 366)
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    __package__ = "examples.stf.tools"

CHOICES = ("onednn", "pytorch")


def photograph(h: int, w: int) -> torch.Tensor:
    """`(1, 3, h, w)` in [0, 1]: scikit-image's astronaut (512x512), reflected to fill `h, w`."""
    from skimage import data

    img = data.astronaut()
    img = np.pad(img, ((0, max(0, h - 512)), (0, max(0, w - 512)), (0, 0)), mode="reflect")[:h, :w]
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255


def measure(model: torch.nn.Module, x: torch.Tensor, repeat: int) -> dict[str, Any]:
    """Samples and ratios of forward, compress and decompress under both choices."""
    from .. import entropy

    def use(choice: str) -> None:
        entropy._onednn_for_small_maps = (lambda: True) if choice == "onednn" else (lambda: False)

    saved = entropy._onednn_for_small_maps
    try:
        with torch.no_grad():
            encoded = {}
            for choice in CHOICES:
                use(choice)
                encoded[choice] = model.compress(x)
            steps = {
                "forward": lambda c: model(x),
                "compress": lambda c: model.compress(x),
                "decompress": lambda c: model.decompress(encoded[c]["strings"], encoded[c]["shape"]),
            }
            samples = {step: {c: [] for c in CHOICES} for step in steps}
            for step, fn in steps.items():
                for c in CHOICES:  # warm-up
                    use(c)
                    fn(c)
                for r in range(repeat):
                    for c in CHOICES if r % 2 == 0 else CHOICES[::-1]:
                        use(c)
                        start = time.perf_counter()
                        fn(c)
                        samples[step][c].append(time.perf_counter() - start)
    finally:
        entropy._onednn_for_small_maps = saved
    return {
        "same_bytes": encoded["onednn"]["strings"] == encoded["pytorch"]["strings"],
        "samples_s": samples,
        "median_s": {s: {c: statistics.median(v) for c, v in t.items()} for s, t in samples.items()},
        "onednn_over_pytorch_paired": {
            s: statistics.median(a / b for a, b in zip(t["onednn"], t["pytorch"])) for s, t in samples.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=("stf", "cnn"), default="cnn")
    parser.add_argument("--size", type=int, nargs=2, default=(128, 128), metavar=("H", "W"))
    parser.add_argument("--repeat", type=int, default=15, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--tiny", action="store_true", help="the tiny test configuration (a smoke run)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.threads < 1 or min(args.size) < 1:
        parser.error(f"--repeat, --threads and --size must be >= 1, got {args.repeat}, {args.threads}, {args.size}.")
    torch.set_num_threads(args.threads)
    from winattn._bench import machine_info

    from .. import zoo

    torch.manual_seed(0)
    config = zoo.TINY_CONFIGS[args.arch] if args.tiny else None
    model = zoo.build_model(args.arch, config).eval()
    model.update(force=True)
    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["examples/stf/tools/small_convs.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(torch.device("cpu")),
        "cpu_load_average_at_start": list(os.getloadavg()),
        "arch": args.arch,
        "config": "tiny" if args.tiny else "paper",
        "size": list(args.size),
        "repeat": args.repeat,
    }
    report.update(measure(model, photograph(*args.size), args.repeat))
    report["cpu_load_average_at_end"] = list(os.getloadavg())
    ratios = report["onednn_over_pytorch_paired"]
    print(
        f"{args.arch} {args.size[0]}x{args.size[1]}, oneDNN time / PyTorch's (median of {args.repeat} "
        "paired rounds): " + ", ".join(f"{s} {r:.3f}" for s, r in ratios.items())
        + f"; same bytes: {report['same_bytes']}"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
