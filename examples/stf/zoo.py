# SPDX-License-Identifier: Apache-2.0
"""Model names, tiny test configurations, rate-distortion lambdas and checkpoints of the scripts.

The scripts name the two codecs of the paper `"stf"` (`SymmetricalTransFormer`) and `"cnn"`
(`WACNN`). Training checkpoints written by `train.py` record the model name, its constructor
arguments and the rate point, so `eval.py` and `codec.py` rebuild the model from the file alone;
official checkpoints hold only weights (the model is told by their parameter names; `--quality`
records the rate point).

Example:
    >>> from examples.stf.zoo import lambda_for
    >>> lambda_for("mse", 3)
    0.0067
"""

from __future__ import annotations

import dataclasses
import importlib
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import atomic_write

MODEL_CLASSES = {"stf": "SymmetricalTransFormer", "cnn": "WACNN"}

# Small constructor arguments for smoke runs and CPU tests; the defaults are the paper's models.
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "stf": dict(
        embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), num_slices=2, hyper_channels=16,
        cc_hidden=(8, 8, 8, 8),
    ),
    "cnn": dict(N=16, M=16, num_slices=2, num_heads=2, cc_hidden=(8, 8, 8, 8)),
}

# The six MSE lambdas of the paper and CompressAI, and CompressAI's MS-SSIM lambdas, for
# qualities 1..6.
LAMBDAS = {
    "mse": (0.0018, 0.0035, 0.0067, 0.013, 0.025, 0.0483),
    "ms-ssim": (2.4, 4.58, 8.73, 16.64, 31.73, 60.5),
}

CHECKPOINT_FORMAT = "winattn-stf-checkpoint"
CHECKPOINT_VERSION = 1


@dataclasses.dataclass
class ModelInfo:
    """What is known about a loaded model: name, constructor arguments and rate point.

    Example:
        >>> from examples.stf.zoo import ModelInfo
        >>> ModelInfo(name="cnn", quality=2).quality
        2
    """

    name: str
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    quality: int | None = None
    metric: str | None = None
    lmbda: float | None = None


def check_model_name(name: str) -> str:
    """Returns `name` if it is a known model name.

    Raises:
        ValueError: if it is not one of `MODEL_CLASSES`.
    """
    if name not in MODEL_CLASSES:
        raise ValueError(f"unknown model {name=}; choose one of {sorted(MODEL_CLASSES)}.")
    return name


def model_class(name: str) -> type[nn.Module]:
    """The class of model `name` ("stf" or "cnn"), imported on first use."""
    models = importlib.import_module(".models", __package__)
    return getattr(models, MODEL_CLASSES[check_model_name(name)])


def build_model(name: str, config: dict[str, Any] | None = None) -> nn.Module:
    """A freshly initialised model `name` built with the keyword arguments `config`."""
    return model_class(name)(**(config or {}))


def lambda_for(metric: str, quality: int) -> float:
    """The lambda of `quality` (1..6) for `metric` ("mse" or "ms-ssim").

    Raises:
        ValueError: for an unknown metric or a quality outside 1..6.
    """
    if metric not in LAMBDAS:
        raise ValueError(f"unknown {metric=}; choose one of {sorted(LAMBDAS)}.")
    if not 1 <= quality <= len(LAMBDAS[metric]):
        raise ValueError(f"{quality=} is out of range; choose 1..{len(LAMBDAS[metric])}.")
    return LAMBDAS[metric][quality - 1]


def save_checkpoint(path: str | Path, model: nn.Module, info: ModelInfo, **state: Any) -> None:
    """Atomically saves `model`'s weights, its `info` and any extra training `state`."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        **dataclasses.asdict(info),
        "state_dict": model.state_dict(),
        **state,
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Reads a checkpoint file (tensors only, nothing executable) onto `map_location`.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: if the file is not a readable checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist.")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for foreign or damaged files
        raise ValueError(f"cannot read checkpoint {str(path)!r}: {err}") from err
    if not isinstance(checkpoint, dict):
        raise ValueError(f"checkpoint {str(path)!r} holds a {type(checkpoint).__name__}, not a dict.")
    return checkpoint


def is_training_checkpoint(checkpoint: dict) -> bool:
    """Whether `checkpoint` was written by `save_checkpoint` (as opposed to an official file)."""
    return checkpoint.get("format") == CHECKPOINT_FORMAT


def load_model(
    path: str | Path,
    name: str | None = None,
    quality: int | None = None,
    map_location: str | torch.device = "cpu",
    config: dict[str, Any] | None = None,
) -> tuple[nn.Module, ModelInfo]:
    """Loads a training checkpoint of `train.py` or an official checkpoint, in eval mode.

    The entropy coder tables are rebuilt (`update(force=True)`), so the model can `compress`.

    Args:
        path: the checkpoint file.
        name: model name; checked against training checkpoints, inferred from the parameter
            names of official ones when None.
        quality: the rate point to record (official checkpoints do not store it).
        map_location: where to load the tensors.
        config: constructor arguments for official-format checkpoints of non-default models
            (training checkpoints record their own).

    Raises:
        ValueError: if the name contradicts the checkpoint, or the file is not a checkpoint of
            a known model.
    """
    checkpoint = read_checkpoint(path, map_location)
    if is_training_checkpoint(checkpoint):
        recorded = check_model_name(checkpoint["name"])
        if name is not None and name != recorded:
            raise ValueError(
                f"checkpoint {str(path)!r} holds model {recorded!r}, but {name=} was given; "
                "drop --model or pass the matching one."
            )
        info = ModelInfo(
            name=recorded,
            config=dict(checkpoint.get("config") or {}),
            quality=checkpoint.get("quality") if quality is None else quality,
            metric=checkpoint.get("metric"),
            lmbda=checkpoint.get("lmbda"),
        )
        model = build_model(info.name, info.config)
        model.load_state_dict(checkpoint["state_dict"])
    else:
        loader = importlib.import_module(".loader", __package__)
        if name is None:
            name = loader.infer_arch(loader.convert_official_state_dict(checkpoint))
        info = ModelInfo(name=check_model_name(name), config=dict(config or {}), quality=quality)
        # the loader checks the keys and loads strictly; update() follows below
        model = loader.load_official(checkpoint, arch=info.name, map_location=None,
                                     update=False, **info.config)
    model = model.to(map_location).eval()
    model.update(force=True)
    return model, info


def weights_fingerprint(model: nn.Module) -> int:
    """A CRC-32 over the names and fp32 values of `model`'s parameters.

    Two models with this fingerprint decode each other's bitstreams the same way (buffers that
    `update()` derives from the parameters are left out).
    """
    crc = 0
    for key, param in sorted(model.named_parameters()):
        values = param.detach().to("cpu", torch.float32).contiguous()
        crc = zlib.crc32(f"{key}:{tuple(values.shape)};".encode(), crc)
        crc = zlib.crc32(values.numpy().tobytes(), crc)
    return crc
