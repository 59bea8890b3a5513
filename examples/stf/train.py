# SPDX-License-Identifier: Apache-2.0
"""Trains an STF or WACNN codec with CompressAI's rate-distortion loss.

Single process::

    python examples/stf/train.py -m stf -d /data/openimages --quality 3 --save-dir runs/stf_q3

Several processes (one per GPU, or CPU processes with gloo)::

    torchrun --nproc_per_node=4 examples/stf/train.py -m cnn -d /data/openimages --lmbda 0.0035

A quick check of the whole loop on the bundled tiny images with a tiny model::

    python examples/stf/train.py --smoke --save-dir /tmp/stf_smoke

The dataset folder holds `train/` and `test/` subfolders (CompressAI's layout), or pass
`--train-dir` and `--val-dir`. `--batch-size` is per process.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import random
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import it as part of its package (PEP 366)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    __package__ = "examples.stf"

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402

from . import zoo  # noqa: E402
from .cli import FolderInUseError, HelpFormatter, folder_lock  # noqa: E402
from .data import (  # noqa: E402
    MIN_MS_SSIM_SIDE,
    SMOKE_DIR,
    ImageFolder,
    ResumableSampler,
)

# What --smoke changes, unless given explicitly on the command line.
SMOKE_DEFAULTS = dict(
    iterations=4, batch_size=2, patch_size=64, val_every=2, save_every=2, num_workers=0
)
FULL_DEFAULTS = dict(
    iterations=2_000_000, batch_size=16, patch_size=256, val_every=5000, save_every=5000,
)
# Settings a resumed run must share with the run it continues to repeat it exactly.
SCHEDULE_KEYS = ("iterations", "lr", "lr_drop", "aux_lr", "clip_max_norm", "batch_size",
                 "patch_size", "seed", "train_dir", "world_size")
INTERRUPTED = 130  # exit status after Ctrl-C, as shells report SIGINT (143 after SIGTERM)


def default_workers() -> int:
    """Data workers per process: one core less than this process's share, at most 4."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    per_process = (cores or 1) // max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    return max(0, min(4, per_process - 1))


class RateDistortionLoss(nn.Module):
    """CompressAI's rate-distortion loss: `lmbda * D + R`.

    `R` is the estimated bits per pixel of all latents; `D` is `255**2 * MSE` or `1 - MS-SSIM`
    on images in [0, 1].

    Args:
        lmbda: the trade-off (see `zoo.LAMBDAS`).
        metric: "mse" or "ms-ssim".

    Example:
        >>> import torch
        >>> from winattn_examples.stf.train import RateDistortionLoss
        >>> x = torch.rand(1, 3, 8, 8)
        >>> out = {"x_hat": x, "likelihoods": {"y": torch.full((1, 4, 2, 2), 0.5)}}
        >>> float(RateDistortionLoss(0.01)(out, x)["bpp_loss"])
        0.25
    """

    def __init__(self, lmbda: float, metric: str = "mse"):
        super().__init__()
        if metric not in zoo.LAMBDAS:
            raise ValueError(f"unknown {metric=}; choose one of {sorted(zoo.LAMBDAS)}.")
        self.lmbda = lmbda
        self.metric = metric

    def forward(self, output: dict, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms for `output` of a model's forward on `target: (B, 3, H, W)`."""
        batch, _, height, width = target.shape
        num_pixels = batch * height * width
        out = {
            "bpp_loss": sum(
                torch.log(likelihoods).sum() / (-math.log(2) * num_pixels)
                for likelihoods in output["likelihoods"].values()
            )
        }
        x_hat = output["x_hat"]
        out["mse_loss"] = torch.nn.functional.mse_loss(x_hat, target)
        if self.metric == "mse":
            distortion = 255**2 * out["mse_loss"]
        else:
            from pytorch_msssim import ms_ssim

            out["ms_ssim_loss"] = ms_ssim(x_hat, target, data_range=1.0)
            distortion = 1 - out["ms_ssim_loss"]
        out["loss"] = self.lmbda * distortion + out["bpp_loss"]
        return out


@dataclass
class Runtime:
    """Where this process runs: rank, world size and device.

    Example:
        >>> import torch
        >>> from winattn_examples.stf.train import Runtime
        >>> Runtime(rank=0, world_size=1, device=torch.device("cpu")).distributed
        False
    """

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("-m", "--model", default="stf", choices=sorted(zoo.MODEL_CLASSES),
                        help="stf (SymmetricalTransFormer) or cnn (WACNN)")
    parser.add_argument("-d", "--dataset", type=Path, help="folder with train/ and test/")
    parser.add_argument("--train-dir", type=Path, help="training images (overrides --dataset)")
    parser.add_argument("--val-dir", type=Path, help="validation images (overrides --dataset)")
    parser.add_argument("--metric", default="mse", choices=sorted(zoo.LAMBDAS),
                        help="distortion term of the loss")
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument("--lmbda", "--lambda", type=float,
                      help="rate-distortion trade-off (default: that of --quality)")
    rate.add_argument("-q", "--quality", type=int, choices=range(1, 7),
                      help="rate point 1..6, picks lambda (default: 3)")
    parser.add_argument("--config", type=json.loads, default=None,
                        help='model constructor arguments as JSON, e.g. \'{"N": 128}\'')
    parser.add_argument("--tiny", action="store_true", help="tiny model config (for tests)")
    parser.add_argument("--grad-checkpointing", action="store_true",
                        help="recompute activations in backward (less memory, slower)")
    parser.add_argument("--iterations", type=int,
                        help="total optimizer steps (default: 2000000; 4 with --smoke)")
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate")
    parser.add_argument("--lr-drop", type=int,
                        help="step at which the learning rate drops 10x (default: 90%% of "
                             "--iterations)")
    parser.add_argument("--aux-lr", type=float, default=1e-3, help="aux (quantiles) lr")
    parser.add_argument("--clip-max-norm", type=float, default=1.0, help="0 disables clipping")
    parser.add_argument("--batch-size", type=int,
                        help="images per step and process (default: 16; 2 with --smoke)")
    parser.add_argument("--val-batch-size", type=int, default=8, help="images per val batch")
    parser.add_argument("--patch-size", type=int,
                        help="side of the square training crops (default: 256; 64 with --smoke)")
    parser.add_argument("--num-workers", type=int,
                        help=f"data loading processes per training process (default: one less "
                             f"than the CPU cores per process, at most 4: {default_workers()} "
                             "here; 0 with --smoke)")
    parser.add_argument("--val-every", type=int,
                        help="steps between validations (default: 5000; 2 with --smoke)")
    parser.add_argument("--save-every", type=int,
                        help="steps between checkpoints (default: 5000; 2 with --smoke)")
    parser.add_argument("--save-dir", type=Path, default=Path("checkpoints"),
                        help="where checkpoint.pth.tar and checkpoint_best.pth.tar go")
    parser.add_argument("--resume", type=Path, help="continue from this checkpoint")
    parser.add_argument("--allow-schedule-change", action="store_true",
                        help="resume with other schedule settings (--iterations, --lr, --seed, "
                        "...) than the checkpoint's; the run then differs from an "
                        "uninterrupted one")
    parser.add_argument("--stop-after", type=int,
                        help="stop after this many steps of this run, saving a checkpoint to "
                        "--resume from (e.g. to fit a job's time limit)")
    parser.add_argument("--force", action="store_true",
                        help="start or resume even if --save-dir already holds another run's "
                        "checkpoints (they are overwritten)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, data and noise")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    parser.add_argument("--smoke", action="store_true",
                        help="a few steps of a tiny model on the bundled tiny images")
    args = parser.parse_args(argv)

    defaults = SMOKE_DEFAULTS if args.smoke else FULL_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.smoke:
        args.tiny = True
        args.train_dir = args.train_dir or SMOKE_DIR
        args.val_dir = args.val_dir or SMOKE_DIR
    if args.dataset is not None:
        args.train_dir = args.train_dir or args.dataset / "train"
        args.val_dir = args.val_dir or args.dataset / "test"
    if args.train_dir is None:
        parser.error("give --dataset (with train/ and test/), --train-dir, or --smoke.")
    if args.num_workers is None:
        args.num_workers = default_workers()
    if args.stop_after is not None and args.stop_after < 1:
        parser.error(f"--stop-after must be at least 1 step, got {args.stop_after}.")
    for key in ("iterations", "batch_size", "val_batch_size", "patch_size", "val_every",
                "save_every"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1, got {getattr(args, key)}.")
    if args.lr_drop is None:
        args.lr_drop = int(0.9 * args.iterations)
    if args.lmbda is None:
        args.quality = args.quality or 3
        args.lmbda = zoo.lambda_for(args.metric, args.quality)
    elif args.lmbda in zoo.LAMBDAS[args.metric]:
        args.quality = zoo.LAMBDAS[args.metric].index(args.lmbda) + 1
    if args.metric == "ms-ssim" and args.patch_size < MIN_MS_SSIM_SIDE:
        parser.error(f"--metric ms-ssim needs --patch-size >= {MIN_MS_SSIM_SIDE}, "
                     f"got {args.patch_size}.")
    return args


def setup_runtime(device: str | None) -> Runtime:
    """Joins the process group when started by torchrun (NCCL on GPUs, gloo on CPUs)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank if world_size > 1 else 0)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1:
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return Runtime(rank=rank, world_size=world_size, device=dev)


def seed_everything(seed: int, rank: int, step: int) -> None:
    """Seeds torch, numpy and Python from (seed, rank, step): ranks differ."""
    state = np.random.SeedSequence([seed, rank, step]).generate_state(3)
    torch.manual_seed(int(state[0]))
    np.random.seed(int(state[1]))
    random.seed(int(state[2]))


def rng_state() -> dict:
    """This process's random state (torch CPU and CUDA, numpy, Python) as tensors and ints,
    so that `torch.load(weights_only=True)` reads it back."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss": python_gauss},
    }


def set_rng_state(state: dict) -> None:
    """Restores what `rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"]:
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    numpy = state["numpy"]
    keys = numpy["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, numpy["pos"], numpy["has_gauss"], numpy["gauss"]))
    python = state["python"]
    internal = tuple(int(v) for v in python["internal"].tolist())
    random.setstate((python["version"], internal, python["gauss"]))


def gather_rng_states(runtime: Runtime) -> list[dict]:
    """Every process's `rng_state()`, by rank (a collective call when distributed)."""
    state = rng_state()
    if not runtime.distributed:
        return [state]
    states: list = [None] * runtime.world_size
    dist.all_gather_object(states, state)
    return states


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(main, aux) parameters: aux are the entropy bottlenecks' `quantiles`."""
    main, aux = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (aux if name.endswith(".quantiles") else main).append(param)
    return main, aux


def learning_rate(args: argparse.Namespace, step: int) -> float:
    """The main learning rate at `step`: `--lr`, then a tenth of it from `--lr-drop` on."""
    return args.lr if step < args.lr_drop else args.lr * 0.1


def wrap_ddp(model: nn.Module, runtime: Runtime) -> nn.Module:
    """DistributedDataParallel over everything but the quantiles (reduced by hand in `step`).

    The quantiles only get gradients from `aux_loss()`, which runs outside DDP's forward.
    """
    if not runtime.distributed:
        return model
    ignored = [name for name, _ in model.named_parameters() if name.endswith(".quantiles")]
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        model, ignored
    )
    device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def average_gradients(params: list[nn.Parameter], runtime: Runtime) -> None:
    """All-reduces (mean) the gradients of `params` across processes."""
    if not runtime.distributed:
        return
    for param in params:
        if param.grad is not None:
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
            param.grad.div_(runtime.world_size)


@torch.no_grad()
def check_replicas_in_sync(model: nn.Module, runtime: Runtime) -> None:
    """Checks that every process holds the same parameters (a collective call).

    Compares per-parameter sums in float64 across the processes: equal weights give equal
    sums, bit for bit.

    Raises:
        RuntimeError: naming the first parameter whose sums differ.
    """
    if not runtime.distributed:
        return
    names = [name for name, _ in model.named_parameters()]
    sums = torch.stack([p.double().sum() for p in model.parameters()])  # (P,)
    gathered = [torch.empty_like(sums) for _ in range(runtime.world_size)]
    dist.all_gather(gathered, sums)
    differs = (torch.stack(gathered) != sums).any(dim=0)  # (P,)
    if differs.any():
        first = names[int(differs.nonzero()[0])]
        raise RuntimeError(
            f"the processes' weights have diverged (first at {first!r}); this is a bug in the "
            "distributed setup, not in the data. Report it with the command line."
        )


def train_step(model, raw_model, batch, criterion, optimizers, params, args) -> dict[str, float]:
    """One optimizer step of the main and the aux optimizer; returns the loss terms."""
    optimizer, aux_optimizer = optimizers
    main_params, aux_params = params
    optimizer.zero_grad(set_to_none=True)
    aux_optimizer.zero_grad(set_to_none=True)
    out = criterion(model(batch), batch)
    out["loss"].backward()
    if args.clip_max_norm > 0:
        torch.nn.utils.clip_grad_norm_(main_params, args.clip_max_norm)
    optimizer.step()
    aux_loss = raw_model.aux_loss()
    aux_loss.backward()
    average_gradients(aux_params, args.runtime)
    aux_optimizer.step()
    out["aux_loss"] = aux_loss
    return {key: float(value.detach()) for key, value in out.items()}


@torch.no_grad()
def validate(raw_model, loader, criterion, runtime: Runtime) -> dict[str, float]:
    """Mean loss terms and PSNR of the eval-mode forward over the validation images.

    Each process runs its shard of `loader`; the sums are reduced over all processes.
    """
    was_training = raw_model.training
    raw_model.eval()
    keys = ("loss", "bpp_loss", "mse_loss", "psnr")
    totals = torch.zeros(len(keys) + 1, dtype=torch.float64, device=runtime.device)
    for batch in loader:
        batch = batch.to(runtime.device)
        output = raw_model(batch)
        terms = criterion(output, batch)
        mse = (output["x_hat"].clamp(0, 1) - batch).pow(2).flatten(1).mean(1)  # (B,)
        psnr = -10 * torch.log10(mse.clamp_min(1e-10))  # (B,)
        n = batch.shape[0]
        values = [float(terms[k]) * n for k in keys[:-1]] + [float(psnr.sum()), n]
        totals += torch.tensor(values, dtype=torch.float64, device=runtime.device)
    if runtime.distributed:
        dist.all_reduce(totals)
    raw_model.train(was_training)
    count = max(float(totals[-1]), 1.0)
    return {key: float(totals[i]) / count for i, key in enumerate(keys)}


def make_loaders(args: argparse.Namespace, runtime: Runtime):
    """The training loader (a `ResumableSampler` over this rank's share) and the val loader.

    Neither loader draws from the global random source, so iterating them does not change
    the noise the model sees.
    """
    train_set = ImageFolder(args.train_dir, args.patch_size, train=True)
    sampler = ResumableSampler(len(train_set), args.batch_size, args.seed, runtime.rank,
                               runtime.world_size)
    pin = runtime.device.type == "cuda"
    train_loader = DataLoader(
        train_set, batch_size=args.batch_size, sampler=sampler, num_workers=args.num_workers,
        drop_last=True, pin_memory=pin, persistent_workers=args.num_workers > 0,
        generator=torch.Generator().manual_seed(args.seed), worker_init_fn=_leave_signals_to_main,
    )
    val_loader = None
    if args.val_dir is not None:
        val_set = ImageFolder(args.val_dir, args.patch_size, train=False)
        shard = Subset(val_set, range(runtime.rank, len(val_set), runtime.world_size))
        val_loader = DataLoader(shard, batch_size=args.val_batch_size,
                                num_workers=args.num_workers, pin_memory=pin,
                                generator=torch.Generator().manual_seed(args.seed),
                                worker_init_fn=_leave_signals_to_main)
    return train_loader, val_loader


def model_info(args: argparse.Namespace) -> zoo.ModelInfo:
    config = dict(zoo.TINY_CONFIGS[args.model]) if args.tiny else {}
    config.update(args.config or {})
    return zoo.ModelInfo(name=args.model, config=config, quality=args.quality,
                         metric=args.metric, lmbda=args.lmbda)


def plain_args(args: argparse.Namespace) -> dict:
    """`args` with only JSON-like values (and the number of processes), for the checkpoint."""
    plain = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
             if k != "runtime"}
    plain["world_size"] = args.runtime.world_size
    return plain


def _same_setting(key: str, saved, current) -> bool:
    if key.endswith("_dir") and saved is not None and current is not None:
        return Path(saved).resolve() == Path(current).resolve()
    return saved == current


def check_save_dir(args: argparse.Namespace) -> None:
    """Refuses a `--save-dir` holding another run's checkpoints, unless `--force` is given.

    Resuming from a checkpoint inside `--save-dir` continues that run there, which is allowed.
    """
    save_dir = args.save_dir
    existing = sorted(save_dir.glob("checkpoint*.pth.tar")) if save_dir.is_dir() else []
    if not existing or args.force:
        return
    names = ", ".join(p.name for p in existing)
    if args.resume is None:
        raise ValueError(
            f"--save-dir {save_dir} already holds {names}; pass --resume to continue that run, "
            "another --save-dir, or --force to overwrite."
        )
    if args.resume.resolve().parent != save_dir.resolve():
        raise ValueError(
            f"--save-dir {save_dir} already holds {names}, which resuming from {args.resume} "
            f"would overwrite; pass --save-dir {args.resume.parent} to continue there, an empty "
            "--save-dir, or --force to overwrite."
        )


def check_resumable(checkpoint: dict, args: argparse.Namespace, info: zoo.ModelInfo) -> None:
    """Refuses to resume another model, rate point or (without `--allow-schedule-change`)
    schedule than the checkpoint's, naming both values."""
    if not zoo.is_training_checkpoint(checkpoint) or checkpoint.get("name") != info.name:
        raise ValueError(
            f"--resume {args.resume} is not a {info.name!r} training checkpoint of this "
            "script; start without --resume or pass the matching --model."
        )
    for key in ("config", "quality", "metric", "lmbda"):
        if checkpoint.get(key) != getattr(info, key):
            raise ValueError(
                f"--resume {args.resume} was trained with {key}={checkpoint.get(key)!r}, but "
                f"this run asks for {key}={getattr(info, key)!r}; resume with the same "
                "--quality/--lmbda/--metric/--config/--tiny, or start a new run in another "
                "--save-dir."
            )
    missing = [k for k in ("state_dict", "optimizer", "aux_optimizer", "step", "best_loss")
               if k not in checkpoint]
    if missing:
        raise ValueError(
            f"--resume {args.resume} lacks {', '.join(missing)}: it holds weights only (an "
            "export?); resume from the checkpoint.pth.tar a run saved."
        )
    check_fields(checkpoint, args.resume)
    saved, current = checkpoint.get("args") or {}, plain_args(args)
    changed = [k for k in SCHEDULE_KEYS
               if k in saved and not _same_setting(k, saved[k], current[k])]
    if changed and not args.allow_schedule_change:
        raise ValueError(
            f"--resume {args.resume} was trained with "
            + ", ".join(f"{k}={saved[k]!r}" for k in changed)
            + ", but this run asks for "
            + ", ".join(f"{k}={current[k]!r}" for k in changed)
            + "; resume with the same settings to continue the run exactly, or pass "
            "--allow-schedule-change to continue with the new ones."
        )


# The type of every entry a resumed run reads from its checkpoint.
CHECKPOINT_FIELDS = {"step": int, "best_loss": (int, float), "state_dict": dict,
                     "optimizer": dict, "aux_optimizer": dict, "rng_states": (list, type(None)),
                     "args": (dict, type(None))}


def check_fields(checkpoint: dict, path: Path) -> None:
    """Refuses entries of the wrong type (a hand-edited checkpoint), naming the first one."""
    for key, kind in CHECKPOINT_FIELDS.items():
        value = checkpoint.get(key)
        if key in checkpoint and (not isinstance(value, kind) or isinstance(value, bool)):
            expected = kind.__name__ if isinstance(kind, type) else " or ".join(
                k.__name__ for k in kind)
            raise ValueError(
                f"--resume {path}: entry {key!r} holds {type(value).__name__} {value!r:.60}, "
                f"not {expected}; the file was edited or damaged. Resume from an intact "
                "checkpoint."
            )
    if checkpoint["step"] < 0:
        raise ValueError(f"--resume {path}: entry 'step' is {checkpoint['step']}, below 0.")


def remove_stale_temporaries(save_dir: Path) -> list[Path]:
    """Deletes the temporary files of saves that were killed half-way; returns them."""
    stale = sorted(save_dir.glob(".checkpoint*.pth.tar.*.tmp")) if save_dir.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


class StopRequest:
    """Turns the first Ctrl-C (SIGINT) or SIGTERM into a request to stop after the current step.

    SIGTERM is what a scheduler (SLURM, Kubernetes) or `torchrun` sends before it kills a job,
    so a preempted run also ends with a checkpoint to resume from. A second signal stops at
    once: Ctrl-C raises `KeyboardInterrupt`, SIGTERM terminates. Used as a context manager around
    the training loop; the previous handlers are restored on exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.requested = False
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        self.requested, self.signum = True, signum
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\ntrain.py: {name}: stopping after this step and saving a checkpoint (a second "
              "signal stops at once, keeping the last checkpoint).", file=sys.stderr, flush=True)

    @property
    def exit_status(self) -> int:
        """The status a shell reports for the signal that asked to stop: 130 or 143."""
        return 128 + int(self.signum or signal.SIGINT)

    def __enter__(self) -> StopRequest:
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def agreed(self) -> bool:
        """Whether any process was asked to stop (a collective call when distributed). When
        one was, every process takes its signal, so all of them exit with the same status."""
        if not self.runtime.distributed:
            return self.requested
        flags = torch.tensor([float(self.requested), float(self.signum or 0)], device=self.runtime.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        requested, signum = (int(v) for v in flags.tolist())
        if requested and self.signum is None:
            self.signum = signum
        return bool(requested)


def _leave_signals_to_main(worker_id: int) -> None:
    """Data workers leave Ctrl-C and other processes' SIGTERM to the main process, which stops
    at a step boundary. A scheduler may send SIGTERM to every process of the job; a worker that
    died of it would make the DataLoader raise in the main process before it saves. The main
    process's own SIGTERM (the DataLoader's and Python's shutdown of a worker) still ends the
    worker at once, as PyTorch's handler does: SIGTERM is blocked in the worker and a thread
    reads each one with its sender (Linux; elsewhere PyTorch's handling is kept)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):
        return
    creator = multiprocessing.parent_process()  # the main process, also under forkserver
    parents = {os.getppid(), *([creator.pid] if creator is not None else [])}
    # blocked before any other thread of the worker exists, so every later thread inherits it
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def wait() -> None:
        while True:
            if signal.sigwaitinfo({signal.SIGTERM}).si_pid in parents:
                os._exit(0)

    threading.Thread(target=wait, name="sigterm-from-main", daemon=True).start()


@contextmanager
def save_dir_lock(args: argparse.Namespace, runtime: Runtime) -> Iterator[None]:
    """Holds the run lock of `--save-dir` for the whole run (see `cli.folder_lock`).

    Process 0 writes every checkpoint, so it alone takes the lock; when it cannot, every
    process stops with the same error (a collective call when distributed).
    """
    with ExitStack() as stack:
        error = None
        if runtime.is_main:
            try:
                stack.enter_context(folder_lock(args.save_dir, "--save-dir"))
            except OSError as err:
                error = err
        if any_process(error is not None, runtime):
            raise error or FolderInUseError(
                f"--save-dir {str(args.save_dir)!r}: process 0 could not take the run lock."
            )
        yield


def any_process(flag: bool, runtime: Runtime) -> bool:
    """Whether `flag` is True on any process (a collective call when distributed)."""
    if not runtime.distributed:
        return flag
    value = torch.tensor([float(flag)], device=runtime.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    runtime = args.runtime = setup_runtime(args.device)
    try:
        with save_dir_lock(args, runtime):
            run(args, runtime)
    except (OSError, ValueError, FloatingPointError) as err:  # a message, not a traceback
        print(f"train.py: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"train.py: interrupted; the last complete checkpoint in {args.save_dir} is kept.",
              file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None
    finally:
        if runtime.distributed:
            dist.destroy_process_group()


def run(args: argparse.Namespace, runtime: Runtime) -> None:
    from tqdm import tqdm

    info = model_info(args)
    check_save_dir(args)
    checkpoint = None
    if args.resume is not None:
        checkpoint = zoo.read_checkpoint(args.resume, runtime.device)
        check_resumable(checkpoint, args, info)
    if runtime.is_main:
        for path in remove_stale_temporaries(args.save_dir):
            print(f"removed {path}, left by a save that was killed", file=sys.stderr)
    seed_everything(args.seed, 0, 0)  # same initial weights on every rank
    model = zoo.build_model(info.name, info.config).to(runtime.device).train()
    model.use_checkpoint = args.grad_checkpointing
    main_params, aux_params = split_parameters(model)
    optimizer = torch.optim.Adam(main_params, lr=args.lr)
    aux_optimizer = torch.optim.Adam(aux_params, lr=args.aux_lr)
    step, best_loss, saved_step = 0, math.inf, None
    seed_everything(args.seed, runtime.rank, 0)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["state_dict"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        aux_optimizer.load_state_dict(checkpoint["aux_optimizer"])
        step, best_loss = checkpoint["step"], checkpoint["best_loss"]
        saved_step = step
        states = checkpoint.get("rng_states") or []
        if len(states) == runtime.world_size:
            set_rng_state(states[runtime.rank])
        else:
            seed_everything(args.seed, runtime.rank, step)
            if runtime.is_main:
                print(f"train.py: warning: --resume {args.resume} holds no random state for "
                      f"{runtime.world_size} process(es); the noise is drawn afresh, so this run "
                      "will not repeat an uninterrupted one exactly.", file=sys.stderr)
    criterion = RateDistortionLoss(args.lmbda, args.metric)
    ddp_model = wrap_ddp(model, runtime)
    train_loader, val_loader = make_loaders(args, runtime)
    checkpoint_path = args.save_dir / "checkpoint.pth.tar"

    def save(name: str) -> None:
        nonlocal saved_step
        check_replicas_in_sync(model, runtime)  # rank 0 saves for all of them
        states = gather_rng_states(runtime)
        error = None
        if runtime.is_main:
            try:
                zoo.save_checkpoint(
                    args.save_dir / name, model, info, step=step, best_loss=best_loss,
                    optimizer=optimizer.state_dict(), aux_optimizer=aux_optimizer.state_dict(),
                    rng_states=states, args=plain_args(args),
                )
            except OSError as err:  # a full disk: the previous checkpoint is intact
                error = err
                if saved_step is not None and checkpoint_path.exists():
                    error = OSError(f"{err} {checkpoint_path} holds step {saved_step}; "
                                    "--resume from it.")
        if any_process(error is not None, runtime):  # every process stops, none waits
            raise error or OSError(f"process 0 could not save {args.save_dir / name}.")
        if name == checkpoint_path.name:
            saved_step = step

    end = args.iterations if args.stop_after is None else min(args.iterations,
                                                              step + args.stop_after)
    with StopRequest(runtime) as stop:
        if runtime.is_main:
            verb = f"resuming at step {step}" if checkpoint is not None else "training"
            print(f"{verb}: {info.name}, lambda={info.lmbda}, {args.iterations} steps; "
                  f"checkpoints go to {args.save_dir.resolve()}", flush=True)
        progress = tqdm(total=args.iterations, initial=step, dynamic_ncols=True,
                        disable=args.no_progress or not runtime.is_main)
        stopping = False
        while step < end and not stopping:
            train_loader.sampler.start_at(step)  # the rest of the epoch that holds `step`
            for batch in train_loader:
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(args, step)
                terms = train_step(ddp_model, model, batch.to(runtime.device, non_blocking=True),
                                   criterion, (optimizer, aux_optimizer),
                                   (main_params, aux_params), args)
                step += 1
                progress.update(1)
                progress.set_postfix(loss=f"{terms['loss']:.4f}", bpp=f"{terms['bpp_loss']:.3f}",
                                     aux=f"{terms['aux_loss']:.1f}",
                                     lr=f"{learning_rate(args, step - 1):.0e}")
                if not math.isfinite(terms["loss"]):
                    raise FloatingPointError(f"training loss is {terms['loss']} at step {step}; "
                                             "lower --lr or check the data.")
                if val_loader is not None and (step % args.val_every == 0
                                               or step == args.iterations):
                    metrics = validate(model, val_loader, criterion, runtime)
                    if runtime.is_main:
                        progress.write(f"step {step}: val " + ", ".join(
                            f"{k}={v:.4f}" for k, v in metrics.items()))
                    if metrics["loss"] < best_loss:
                        best_loss = metrics["loss"]
                        save("checkpoint_best.pth.tar")
                if step % args.save_every == 0 or step == args.iterations:
                    save(checkpoint_path.name)
                stopping = stop.agreed()
                if step >= end or stopping:
                    break
        progress.close()
        if saved_step != step:
            save(checkpoint_path.name)
    if stopping:
        if runtime.is_main:
            print(f"train.py: interrupted at step {step}; saved {checkpoint_path}. Continue "
                  f"with --resume {checkpoint_path}.", file=sys.stderr)
        # the signal this process got; a process stopped by another's signal reports Ctrl-C's
        raise SystemExit(stop.exit_status)
    if runtime.is_main:
        print(f"step {step}: saved {checkpoint_path}", flush=True)


if __name__ == "__main__":
    main()
