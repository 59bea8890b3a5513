# SPDX-License-Identifier: Apache-2.0
"""Trained codecs that ship with winattn, loaded by name.

Each model is a CompressAI architecture patched with `winattn.patch_model`, trained by the
window-attention ablation (`examples/ablation`), and stored weights-only in fp16 inside the
package, one file per rate point (`quality`). Its model card (`card(name)`, and the
`MODEL_CARD.md` beside the weights) gives the training data, steps and λ, and the measured
held-out bpp, PSNR and MS-SSIM against JPEG and WebP. Nothing is downloaded.

`import winattn` does not import CompressAI; `load` imports it when called.

Example:
    >>> from winattn import pretrained
    >>> pretrained.available()
    ['bmshj2018-hyperprior-winattn-n64']
    >>> model = pretrained.load("bmshj2018-hyperprior-winattn-n64", quality=2)
    >>> x = torch.rand(1, 3, 64, 96)
    >>> coded = pretrained.compress_image(model, x)
    >>> coded.x_hat.shape, coded.num_bytes > 0
    (torch.Size([1, 3, 64, 96]), True)

Command line (compress and decompress one photograph, print bpp and PSNR):
    python -m winattn.pretrained skimage:coffee --quality 3 --out coffee-decoded.png
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CodedImage", "available", "card", "compress_image", "load", "load_folder", "psnr"]

_ROOT = Path(__file__).parent


def available() -> list[str]:
    """Names of the shipped models."""
    return sorted(p.parent.name for p in _ROOT.glob("*/card.json"))


def _check_name(name: str) -> Path:
    if not isinstance(name, str):
        raise ValueError(
            f"name must be the str name of a shipped model, one of {available()}; got "
            f"{type(name).__name__} {name!r:.80}."
        )
    folder = _ROOT / name
    if not (folder / "card.json").is_file():
        raise ValueError(f"unknown pretrained model name={name!r}; choose one of {available()}.")
    return folder


@cache
def _card(name: str) -> dict:
    return json.loads((_check_name(name) / "card.json").read_text())


def card(name: str) -> dict:
    """The model card of `name`: architecture, training, and measured results per quality.

    Raises:
        ValueError: an unknown name (the message lists the shipped ones).
    """
    _check_name(name)  # before the cache, which needs a hashable name
    return json.loads(json.dumps(_card(name)))  # a copy the caller may change


def load(name: str, quality: int = 1, *, device: str | torch.device = "cpu") -> nn.Module:
    """A shipped codec, in eval mode with its entropy coder tables built, ready to compress.

    Args:
        name: one of `available()`.
        quality: rate point, 1 (lowest rate) to the number of points in the card.
        device: where to put the model.

    Returns:
        The CompressAI model (patched with window attention), fp32, weights loaded strictly.

    Raises:
        ValueError: an unknown name or quality (the message lists the valid ones), or weights
            that are not a state dict of names to tensors fitting the model.
        ImportError: CompressAI is not installed.
    """
    return load_folder(_check_name(name), quality, device=device)


def load_folder(
    folder: str | Path, quality: int = 1, *, device: str | torch.device = "cpu"
) -> nn.Module:
    """`load` for a model folder outside the package (`card.json` and the weights it names).

    This is how a model exported by `python -m examples.ablation export --dest DIR` is loaded
    before it ships.
    """
    if not isinstance(folder, (str, os.PathLike)):
        raise ValueError(f"folder must be a path; got {type(folder).__name__} {folder!r:.80}.")
    folder = Path(folder)
    if not (folder / "card.json").is_file():
        raise ValueError(f"folder={str(folder)!r} has no card.json; export a model there first.")
    info = json.loads((folder / "card.json").read_text())
    qualities = sorted(int(q) for q in info["qualities"])
    if quality not in qualities:
        raise ValueError(f"{info['name']} has no quality={quality!r}; choose one of {qualities}.")
    try:
        from compressai.zoo import image_models
    except ImportError as err:
        raise ImportError(
            f"pretrained model {info['name']!r} is a CompressAI codec: "
            "pip install 'winattn[compressai]'"
        ) from err

    from winattn import patch_model

    arch = info["architecture"]
    model = type(image_models[arch["zoo_name"]](quality=1))(N=arch["N"], M=arch["M"])
    patch_model(model, **arch.get("patch_model", {}))
    state = _read_weights(folder / info["qualities"][str(quality)]["weights"])
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:  # missing, unexpected or mis-shaped entries
        raise ValueError(f"the weights of {info['name']} quality {quality} do not fit: {err}") from err
    model.update(force=True)  # entropy coder tables from the stored (fp16-exact) parameters
    return model.to(device).eval()


def _read_weights(path: Path) -> dict[str, Tensor]:
    """A state dict file: names (str) to tensors, or a ValueError naming the file and the fault."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for missing, foreign or damaged files
        raise ValueError(f"cannot read weights {str(path)!r}: {type(err).__name__}: {err}") from err
    if not isinstance(state, dict):
        raise ValueError(f"weights {str(path)!r} hold a {type(state).__name__}, not a state dict.")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        key = bad[0]
        raise ValueError(
            f"weights {str(path)!r} are not a state dict of parameter names to tensors: entry "
            f"{key!r} ({type(key).__name__} key, {type(state[key]).__name__} value); "
            f"{len(bad)} such entries."
        )
    return state


@dataclass(frozen=True)
class CodedImage:
    """What `compress_image` returns.

    Attributes:
        num_bytes: size of every string of the bitstream together.
        bpp: bits per pixel of the original (unpadded) image.
        x_hat: decoded image `(B, 3, H, W)` in `[0, 1]`.
        encode_seconds: wall time of `compress`.
        decode_seconds: wall time of `decompress`.
    """

    num_bytes: int
    bpp: float
    x_hat: Tensor
    encode_seconds: float
    decode_seconds: float


def _pad_amounts(h: int, w: int, multiple: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding that centres the image, as CompressAI's eval does."""
    ph, pw = -h % multiple, -w % multiple
    return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2


@torch.inference_mode()
def compress_image(model: nn.Module, x: Tensor, multiple: int = 64) -> CodedImage:
    """Compresses and decompresses `x` with the model's real entropy coder.

    The image is zero-padded (centred) to a multiple of `multiple`, coded, decoded, and cropped.

    Args:
        model: a CompressAI model after `update()`, in eval mode.
        x: `(B, 3, H, W)` in `[0, 1]`.
        multiple: padding multiple (64 for the hyperprior models: 16 in g_a times 4 in h_a).

    Returns:
        A `CodedImage`; `bpp` counts every byte of every string.

    Raises:
        ValueError: `x` is not `(B, 3, H, W)`.
    """
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"x must be (B, 3, H, W); got shape {tuple(x.shape)}.")
    h, w = x.shape[-2:]
    left, right, top, bottom = _pad_amounts(h, w, multiple)
    padded = F.pad(x, (left, right, top, bottom))  # (B, 3, H + ph, W + pw)
    start = time.perf_counter()
    out = model.compress(padded)
    mid = time.perf_counter()
    x_hat = model.decompress(out["strings"], out["shape"])["x_hat"]
    end = time.perf_counter()
    x_hat = x_hat[..., top : top + h, left : left + w]  # (B, 3, H, W)
    num_bytes = sum(len(s) for strings in out["strings"] for s in strings)
    return CodedImage(
        num_bytes, num_bytes * 8 / (x.shape[0] * h * w), x_hat, mid - start, end - mid
    )


def psnr(x: Tensor, x_hat: Tensor) -> float:
    """PSNR in dB of `x_hat` against `x`, both in `[0, 1]`, on 8-bit rounded values."""
    mse = F.mse_loss((x * 255).round(), (x_hat.clamp(0, 1) * 255).round()).item()
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)
