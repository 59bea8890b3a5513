# SPDX-License-Identifier: Apache-2.0
"""Trains an unpatched CompressAI codec and its `patch_model` version side by side.

Every model of a run (each λ, unpatched and patched) starts from the same seed and takes its
steps in lockstep: each step draws one batch of crops and every model trains on that same
batch, with the same optimizer, learning-rate schedule and gradient clipping. A run that stops
early (a time budget, an interrupted process) therefore leaves every model at the same number
of steps, and `train_models` resumes it from the last saved state.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from .data import TRAIN_IMAGES, RandomCrops, load_images

VARIANTS = ("unpatched", "patched")
MARKER = ".winattn-ablation"  # the marker file of a run folder this tool made
_RUN_FILES = {"state.pt", "state.tmp", "train.json", "ablation.json", "rd.png", "weights"}
_CURVES = {f"{label}.json" for label in ("unpatched", "patched", "jpeg", "webp")}


def is_run_file(path: Path) -> bool:
    """Whether `path`, an entry of a run folder, is one that `train`/`evaluate` write."""
    if path.name == "weights":
        return path.is_dir() and all(p.suffix == ".pt" for p in path.iterdir())
    return path.name in _RUN_FILES | _CURVES and path.is_file()


def check_arch(arch: str) -> None:
    """Raises ValueError, listing CompressAI's zoo, for an architecture it does not have."""
    from compressai.zoo import image_models

    if arch not in image_models:
        raise ValueError(
            f"unknown arch={arch!r}; choose one of CompressAI's zoo: {sorted(image_models)}."
        )


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; a resumed run must have the same values."""

    arch: str = "bmshj2018-hyperprior"
    N: int = 64
    M: int = 96
    lmbdas: tuple[float, ...] = (0.0018, 0.0067, 0.025)
    steps: int = 2000
    crop: int = 64
    batch_size: int = 8
    lr: float = 5e-4
    min_lr: float = 5e-5
    aux_lr: float = 1e-3
    clip: float = 1.0
    seed: int = 0
    train_images: tuple[str, ...] = field(default=TRAIN_IMAGES)


def build_model(config: TrainConfig, variant: str) -> nn.Module:
    """The zoo architecture at the config's width, patched with window attention for `"patched"`.

    Both variants are built from the same seed, so the layers they share start equal.
    """
    from compressai.zoo import image_models

    from winattn import patch_model

    check_arch(config.arch)
    torch.manual_seed(config.seed)
    model = image_models[config.arch](quality=1, pretrained=False)
    model = type(model)(N=config.N, M=config.M)  # the zoo class at the requested width
    if variant == "patched":
        patch_model(model)
    elif variant != "unpatched":
        raise ValueError(f"unknown variant={variant!r}; choose one of {VARIANTS}.")
    return model


def rd_loss(model: nn.Module, x: Tensor, lmbda: float) -> tuple[Tensor, Tensor, Tensor]:
    """CompressAI's rate-distortion loss `λ·255²·MSE + bpp`; returns (loss, bpp, mse)."""
    out = model(x)
    num_pixels = x.shape[0] * x.shape[2] * x.shape[3]
    bpp = sum(lk.log2().sum() for lk in out["likelihoods"].values()) / -num_pixels
    mse = nn.functional.mse_loss(out["x_hat"], x)
    return lmbda * 255**2 * mse + bpp, bpp, mse


def _lr_at(config: TrainConfig, step: int) -> float:
    """Cosine decay from `lr` to `min_lr` over `steps`."""
    t = min(step / max(config.steps, 1), 1.0)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * t))


class _Slot:
    """One model of a run with its optimizers and its own clock."""

    def __init__(self, config: TrainConfig, lmbda: float, variant: str) -> None:
        self.lmbda, self.variant = lmbda, variant
        self.model = build_model(config, variant).train()
        main = [p for n, p in self.model.named_parameters() if not n.endswith(".quantiles")]
        aux = [p for n, p in self.model.named_parameters() if n.endswith(".quantiles")]
        self.opt = torch.optim.Adam(main, lr=config.lr)
        self.aux_opt = torch.optim.Adam(aux, lr=config.aux_lr)
        self.seconds = 0.0
        self.last = {"loss": float("nan"), "bpp": float("nan"), "mse": float("nan")}

    @property
    def name(self) -> str:
        return f"lmbda{self.lmbda:g}-{self.variant}"

    def step(self, config: TrainConfig, x: Tensor, lr: float) -> None:
        start = time.perf_counter()
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss, bpp, mse = rd_loss(self.model, x, self.lmbda)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{self.name}: the loss is {loss.item()}; lower --lr.")
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), config.clip)
        self.opt.step()
        self.aux_opt.zero_grad(set_to_none=True)
        self.model.aux_loss().backward()
        self.aux_opt.step()
        self.seconds += time.perf_counter() - start
        self.last = {"loss": loss.item(), "bpp": bpp.item(), "mse": mse.item()}

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "aux_opt": self.aux_opt.state_dict(),
            "seconds": self.seconds,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.aux_opt.load_state_dict(state["aux_opt"])
        self.seconds = state["seconds"]


def _config_dict(config: TrainConfig) -> dict:
    return json.loads(json.dumps(asdict(config)))  # tuples as lists, as in the saved JSON


def train_models(
    config: TrainConfig,
    run_dir: Path,
    *,
    max_minutes: float | None = None,
    stop_at: int | None = None,
    save_every: int = 100,
    progress: bool = True,
) -> dict:
    """Trains every (λ, variant) model of `config` in lockstep, resuming from `run_dir`.

    Args:
        config: the run.
        run_dir: folder of the run; `state.pt` is the resumable state, `train.json` the summary,
            and `weights/<name>.pt` the final model weights.
        max_minutes: stop (every model at the same step) once this much time has passed in this
            call; None trains to `config.steps`.
        stop_at: stop (resumable) once every model has taken this many steps.
        save_every: steps between saves of the resumable state.
        progress: show a tqdm bar.

    Returns:
        The summary written to `train.json`: steps done and seconds spent per model.

    Raises:
        ValueError: `run_dir` holds a run with another config (use another folder or --force).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / "state.pt"
    torch.manual_seed(config.seed)
    crops = RandomCrops(
        load_images(config.train_images), config.crop, config.batch_size, config.seed
    )
    slots = [_Slot(config, lmbda, v) for lmbda in config.lmbdas for v in VARIANTS]
    step = 0
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        if state["config"] != _config_dict(config):
            raise ValueError(
                f"{run_dir} holds a run with config {state['config']}, not {_config_dict(config)}; "
                "use another --out, or --force to start over."
            )
        for slot in slots:
            slot.load_state_dict(state["slots"][slot.name])
        crops.load_state_dict(state["crops"])
        torch.set_rng_state(state["rng"])
        step = state["step"]

    def save() -> None:
        state = {
            "config": _config_dict(config),
            "step": step,
            "slots": {s.name: s.state_dict() for s in slots},
            "crops": crops.state_dict(),
            "rng": torch.get_rng_state(),
        }
        torch.save(state, state_path.with_suffix(".tmp"))
        state_path.with_suffix(".tmp").replace(state_path)

    start = time.monotonic()
    bar = tqdm(total=config.steps, initial=step, disable=not progress, desc="train", mininterval=5)
    while step < config.steps:
        if max_minutes is not None and time.monotonic() - start > 60 * max_minutes:
            break
        if stop_at is not None and step >= stop_at:
            break
        x = next(crops)  # (batch, 3, crop, crop): the same batch for every model
        lr = _lr_at(config, step)
        for slot in slots:
            slot.step(config, x, lr)
        step += 1
        bar.update(1)
        bar.set_postfix({s.name: f"{s.last['loss']:.3g}" for s in slots}, refresh=False)
        if step % save_every == 0:
            save()
    bar.close()
    save()

    weights = run_dir / "weights"
    weights.mkdir(exist_ok=True)
    for slot in slots:
        torch.save(slot.model.state_dict(), weights / f"{slot.name}.pt")
    summary = {
        "config": _config_dict(config),
        "steps": step,
        "finished": step >= config.steps,
        "models": {
            s.name: {
                "lmbda": s.lmbda,
                "variant": s.variant,
                "steps": step,
                "train_seconds": round(s.seconds, 1),
                "seconds_per_step": round(s.seconds / max(step, 1), 4),
                "params": sum(p.numel() for p in s.model.parameters()),
                "last_batch": s.last,
            }
            for s in slots
        },
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    (run_dir / "train.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
