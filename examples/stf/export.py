# SPDX-License-Identifier: Apache-2.0
"""Exports the weights of a training checkpoint, without the optimizer states.

A training checkpoint of WACNN holds Adam's two moments next to every weight (903 MB); the
export keeps the weights and the model's name, configuration and rate point only (a third of
that in float32, a sixth in float16), and `codec.py` and `eval.py` load it like the checkpoint::

    python examples/stf/export.py runs/cnn_q3/checkpoint_best.pth.tar -o cnn_q3.pth.tar
    python examples/stf/export.py runs/cnn_q3/checkpoint_best.pth.tar -o cnn_q3_fp16.pth.tar \\
        --dtype float16

Official checkpoints are exported too (add `--quality` and `--metric` to record their rate
point). Bitstreams decode with the weights that encoded them: a file encoded with a float16
export decodes with that export.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import it as part of its package (PEP 366)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    __package__ = "examples.stf"

import torch  # noqa: E402

from . import zoo  # noqa: E402
from .cli import HelpFormatter, refuse_existing  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="training or official checkpoint")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the export to write")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="dtype of the exported parameters")
    parser.add_argument("-q", "--quality", type=int, choices=range(1, 7),
                        help="rate point to record (official checkpoints do not hold it)")
    parser.add_argument("--metric", choices=("mse", "ms-ssim"),
                        help="metric to record (official checkpoints do not hold it)")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite the output")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        refuse_existing([args.output], args.force, inputs=[args.checkpoint])
        model, info = zoo.load_model(args.checkpoint, quality=args.quality)
        if args.metric is not None:
            info.metric = args.metric
        zoo.save_weights(args.output, model, info, DTYPES[args.dtype], overwrite=args.force)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    size = args.checkpoint.stat().st_size, args.output.stat().st_size
    print(f"{args.output}: {info.name} weights in {args.dtype}, {size[1]:,} bytes "
          f"({size[0]:,} in {args.checkpoint})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
