# SPDX-License-Identifier: Apache-2.0
"""Command line of the window-attention ablation.

    python -m examples.ablation train    --out examples/ablation/results/RUN [options]
    python -m examples.ablation evaluate --out examples/ablation/results/RUN
    python -m examples.ablation run      --out examples/ablation/results/RUN [options]
    python -m examples.ablation export   --out examples/ablation/results/RUN --name NAME

`train` trains every (λ, unpatched/patched) model in lockstep and resumes an interrupted run of
the same config; `evaluate` compresses the held-out photographs with every trained model and
with JPEG and WebP, and writes the JSON results, the BD-rate and the RD plot; `run` does both;
`export` ships the patched models as `winattn.pretrained` weights with their model card.
A folder that holds another config, or finished results, is only overwritten with `--force`;
`train --force` deletes only what the tool wrote into a folder that carries its marker file
(`.winattn-ablation`), and refuses a folder that holds anything else. One run at a time writes
into a folder (an OS lock; a second one is refused with the owner's PID).
"""

from __future__ import annotations

import argparse
import math
import sys
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from ..stf.cli import check_run_folder, claim_run_folder, folder_lock
from .train import MARKER, TrainConfig, check_arch, is_run_file, train_models


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m examples.ablation", description=__doc__.split("\n")[0]
    )
    sub = p.add_subparsers(dest="command", required=True)
    defaults = TrainConfig()
    for name in ("train", "evaluate", "run", "export"):
        s = sub.add_parser(name)
        s.add_argument("--out", type=Path, required=True, help="folder of the run")
        s.add_argument("--force", action="store_true", help="start over / overwrite results")
        s.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
        if name == "export":
            s.add_argument("--name", required=True, help="name of the shipped model")
            s.add_argument("--dest", type=Path, default=None, help="default: winattn/pretrained")
        if name in ("evaluate", "export"):
            continue
        s.add_argument("--arch", default=defaults.arch, help="CompressAI zoo architecture")
        s.add_argument("-N", type=int, default=defaults.N, help="channels of the transforms")
        s.add_argument("-M", type=int, default=defaults.M, help="channels of the latent")
        s.add_argument("--lmbdas", type=float, nargs="+", default=list(defaults.lmbdas))
        s.add_argument("--steps", type=int, default=defaults.steps, help="steps of every model")
        s.add_argument("--crop", type=int, default=defaults.crop)
        s.add_argument("--batch-size", type=int, default=defaults.batch_size)
        s.add_argument("--lr", type=float, default=defaults.lr)
        s.add_argument("--min-lr", type=float, default=defaults.min_lr)
        s.add_argument("--seed", type=int, default=defaults.seed)
        s.add_argument(
            "--max-minutes",
            type=float,
            default=None,
            help="stop training (every model at the same step) after this long; resumable",
        )
        s.add_argument("--stop-at", type=int, default=None, help="stop at this step (resumable)")
        s.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return p


def _config(args: argparse.Namespace) -> TrainConfig:
    for name in ("steps", "crop", "batch_size", "N", "M"):
        if getattr(args, name) < 1:
            raise ValueError(
                f"--{name.replace('_', '-')}={getattr(args, name)} must be at least 1."
            )
    for name in ("lmbdas", "lr", "min_lr"):
        value = getattr(args, name)
        if not all(math.isfinite(v) and v > 0 for v in np.atleast_1d(value)):
            raise ValueError(f"--{name.replace('_', '-')}={value} must be positive and finite.")
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise ValueError(f"--max-minutes={args.max_minutes} must be positive.")
    check_arch(args.arch)
    return TrainConfig(
        arch=args.arch,
        N=args.N,
        M=args.M,
        lmbdas=tuple(sorted(args.lmbdas)),
        steps=args.steps,
        crop=args.crop,
        batch_size=args.batch_size,
        lr=args.lr,
        min_lr=args.min_lr,
        seed=args.seed,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    try:
        with ExitStack() as stack:
            if args.command in ("train", "run"):
                config = _config(args)  # every argument is checked before the folder is touched
                claim = dict(marker=MARKER, own=is_run_file, force=args.force, option="--out")
                check_run_folder(args.out, **claim)  # a refused folder keeps no lock file
                stack.enter_context(folder_lock(args.out, "--out"))
                claim_run_folder(args.out, **claim)  # checked again, under the lock
                summary = train_models(
                    config,
                    args.out,
                    max_minutes=args.max_minutes,
                    stop_at=args.stop_at,
                    progress=not args.no_progress,
                )
                print(f"trained {summary['steps']}/{config.steps} steps -> {args.out}")
                if not summary["finished"]:
                    print("stopped early; run the same command again to resume.")
                    return 0
            if args.command in ("evaluate", "run"):
                from .evaluate import evaluate_run

                if args.command == "evaluate" and args.out.is_dir():
                    stack.enter_context(folder_lock(args.out, "--out"))
                evaluate_run(args.out, force=args.force)
        if args.command == "export":
            from .export import export_run

            card = export_run(args.out, args.name, dest=args.dest, force=args.force)
            for q, e in card["qualities"].items():
                print(f"{args.name} quality {q}: {e['heldout_mean']}")
    except (ValueError, OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
