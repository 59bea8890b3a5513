# SPDX-License-Identifier: Apache-2.0
"""Model names, tiny test configurations, rate-distortion lambdas and checkpoints of the scripts.

The scripts name the two codecs of the paper `"stf"` (`SymmetricalTransFormer`) and `"cnn"`
(`WACNN`). Training checkpoints written by `train.py` record the model name, its constructor
arguments and the rate point, so `eval.py` and `codec.py` rebuild the model from the file alone;
official checkpoints hold only weights (the model is told by their parameter names; `--quality`
records the rate point).

Example:
    >>> from winattn_examples.stf.zoo import lambda_for
    >>> lambda_for("mse", 3)
    0.0067
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import pickle
import warnings
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
CHECKSUM_KEY = "sha256"  # of every other entry of a checkpoint (see `content_digest`)


@dataclasses.dataclass
class ModelInfo:
    """What is known about a loaded model: name, constructor arguments and rate point.

    Example:
        >>> from winattn_examples.stf.zoo import ModelInfo
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
    """A freshly initialised model `name` built with the keyword arguments `config`.

    Raises:
        ValueError: if `config` holds a key that is not a constructor argument of the model.
    """
    cls = model_class(name)
    known = set(inspect.signature(cls).parameters)
    unknown = sorted(set(config or {}) - known)
    if unknown:
        raise ValueError(
            f"{cls.__name__} has no constructor argument {', '.join(unknown)} (from the config "
            f"{config}); its arguments are {', '.join(sorted(known))}."
        )
    return cls(**(config or {}))


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


def content_digest(value: Any) -> str:
    """The sha256 of a checkpoint's contents: every tensor's dtype, shape and bytes, and every
    other value's type and `repr`, in the order of the (nested) dicts and lists.

    It does not depend on where the tensors were loaded (`map_location`) or on the archive
    layout, so a file read back gives the digest of what was saved, unless it changed.
    """
    digest = hashlib.sha256()

    def add(item: Any) -> None:
        if isinstance(item, torch.Tensor):
            t = item.detach().cpu().contiguous()
            digest.update(f"T{t.dtype}{tuple(t.shape)};".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(item, dict):
            digest.update(f"D{len(item)};".encode())
            for key, entry in item.items():
                add(key)
                add(entry)
        elif isinstance(item, (list, tuple)):
            digest.update(f"{'L' if isinstance(item, list) else 'U'}{len(item)};".encode())
            for entry in item:
                add(entry)
        else:
            digest.update(f"{type(item).__name__}:{item!r};".encode())

    add(value)
    return digest.hexdigest()


def _save(path: str | Path, payload: dict, overwrite: bool = True) -> None:
    """Atomically `torch.save`s `payload` with its `content_digest` under `CHECKSUM_KEY`.

    Raises:
        OSError: the file could not be written (a full disk); the message says that an earlier
            file at `path` is intact, as `atomic_write` leaves it untouched.
        FileExistsError: if `path` exists and `overwrite` is False.
    """
    payload = {**payload, CHECKSUM_KEY: content_digest(payload)}
    try:
        atomic_write(path, lambda tmp: torch.save(payload, tmp), overwrite=overwrite)
    except FileExistsError:
        raise
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as RuntimeError
        earlier = (f"the previous {Path(path).name} is intact" if Path(path).exists()
                   else "no file was written")
        raise OSError(
            f"could not save {str(path)!r} ({type(err).__name__}: {str(err).strip()[:200]}); "
            f"{earlier}. Free disk space (or fix the folder), then run again."
        ) from err


def save_checkpoint(path: str | Path, model: nn.Module, info: ModelInfo, **state: Any) -> None:
    """Atomically saves `model`'s weights, its `info` and any extra training `state`, with
    the sha256 of all of it (`content_digest`), which `read_checkpoint` verifies.

    Raises:
        OSError: the file could not be written; an earlier checkpoint at `path` is intact.
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        **dataclasses.asdict(info),
        "state_dict": model.state_dict(),
        **state,
    }
    _save(path, payload)


def read_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", weights_only: bool = True
) -> dict:
    """Reads a checkpoint file (tensors only, nothing executable) onto `map_location`.

    Every way the file can fail to load (missing, empty, text, damaged archive, random bytes,
    objects that `weights_only` forbids) is reported as one error that names the file and the
    cause.

    Args:
        path: the checkpoint file.
        map_location: where to load the tensors.
        weights_only: passed to `torch.load`; set False only for trusted files.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: if the file is not a readable checkpoint, or holds no dict at the top.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist or is not a file.")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(
            f"cannot read checkpoint {str(path)!r}: the file is empty (0 bytes), probably cut "
            "short while it was written or copied; use a complete copy."
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as err:  # torch raises many types for foreign or damaged files
        cause = f"{type(err).__name__}: {str(err).strip().split('. ')[0]}"
        if weights_only and isinstance(err, pickle.UnpicklingError):
            cause += (" (the file is not a torch.save file, or it holds objects other than "
                      "tensors and containers: only trusted files may load with "
                      "weights_only=False)")
        raise ValueError(
            f"cannot read checkpoint {str(path)!r} ({size} bytes, {_describe_start(path)}): "
            f"{cause[:300]}. Pass a file written by torch.save, such as a checkpoint of the "
            "official STF code or of train.py."
        ) from err
    if not isinstance(checkpoint, dict):
        raise ValueError(f"checkpoint {str(path)!r} holds a {type(checkpoint).__name__}, not a dict.")
    verify_checksum(checkpoint, path)
    return checkpoint


def verify_checksum(checkpoint: dict, path: str | Path) -> None:
    """Checks the sha256 that `save_checkpoint` stored against the contents read back.

    A checkpoint of these scripts written before checksums existed loads with a warning;
    files of other code (the official checkpoints) are not checked.

    Raises:
        ValueError: the contents differ from what was saved (a damaged copy, or a hand edit).
    """
    recorded = checkpoint.pop(CHECKSUM_KEY, None)
    if recorded is None:
        if is_training_checkpoint(checkpoint):
            warnings.warn(
                f"checkpoint {str(path)!r} has no checksum (written before checksums were "
                "recorded); its contents cannot be verified.",
                stacklevel=3,
            )
        return
    actual = content_digest(checkpoint)
    if actual != recorded:
        raise ValueError(
            f"checkpoint {str(path)!r} is damaged or was edited: its contents do not match the "
            f"sha256 recorded when it was saved ({str(recorded)[:16]}... recorded, "
            f"{actual[:16]}... now). Use an intact copy or an earlier checkpoint."
        )


def _describe_start(path: Path) -> str:
    """What the first bytes of a file that `torch.load` refused look like."""
    with path.open("rb") as file:
        head = file.read(64)
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive, like torch.save's, but damaged or not torch.save's"
    if head.startswith(b"\x80") and len(head) > 1 and head[1] <= 5:
        return "a pickle stream"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "binary data of an unknown format"
    return "text"


def save_weights(
    path: str | Path, model: nn.Module, info: ModelInfo, dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
) -> None:
    """Atomically saves a weights-only export of `model`: `info` and the state dict, without
    optimizer states and training records, the parameters cast to `dtype`.

    `load_model` (hence `codec.py` and `eval.py`) reads it like a training checkpoint; it
    cannot be resumed. Buffers keep their dtype, and the entropy coder's tables are left out
    (`load_model` rebuilds them).

    Raises:
        FileExistsError: if `path` exists and `overwrite` is False.
    """
    tables = ("_quantized_cdf", "_offset", "_cdf_length")
    params = {name for name, _ in model.named_parameters()}
    weights = {k: (v.to(dtype) if k in params else v).detach().cpu().clone()
               for k, v in model.state_dict().items() if not k.endswith(tables)}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        **dataclasses.asdict(info),
        "state_dict": weights,
        "weights_dtype": str(dtype).removeprefix("torch."),
    }
    _save(path, payload, overwrite=overwrite)


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
        version = checkpoint.get("format_version")
        if version != CHECKPOINT_VERSION:
            raise ValueError(
                f"checkpoint {str(path)!r} has format version {version!r}; this code reads "
                f"version {CHECKPOINT_VERSION}. Use the version of the scripts that wrote it."
            )
        if not isinstance(checkpoint.get("state_dict"), dict):
            raise ValueError(
                f"checkpoint {str(path)!r} holds no weights (no 'state_dict' entry; it has "
                f"{', '.join(sorted(map(str, checkpoint)))}); use a checkpoint that train.py "
                "or export.py wrote."
            )
        info = ModelInfo(
            name=recorded,
            config=dict(checkpoint.get("config") or {}),
            quality=checkpoint.get("quality") if quality is None else quality,
            metric=checkpoint.get("metric"),
            lmbda=checkpoint.get("lmbda"),
        )
        loader = importlib.import_module(".loader", __package__)
        model = build_model(info.name, info.config)
        weights_dtype = getattr(torch, str(checkpoint.get("weights_dtype", "float32")), None)
        state_dict = checkpoint["state_dict"]
        tables = ("_quantized_cdf", "_offset", "_cdf_length")
        if "weights_dtype" in checkpoint:  # an export leaves the tables out; update() below
            state_dict = {**{k: v for k, v in model.state_dict().items() if k.endswith(tables)},
                          **state_dict}
        loader.check_state_dict(model, state_dict, info.name, float_dtype=weights_dtype)
        model.load_state_dict(state_dict)
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
