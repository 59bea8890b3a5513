# SPDX-License-Identifier: Apache-2.0
"""Photographs in and out of the codecs: one careful reader, and output files that never
replace an input or, without `force`, an existing file.

The codecs code 8-bit RGB. `read_image` turns every other layout into `(3, H, W)` RGB in
`[0, 1]` explicitly, with a warning wherever the data changes, never silently:

| the image | what is read |
|---|---|
| 8-bit RGB, palette, greyscale | as it is (grey repeated on the three channels) |
| EXIF orientation | applied (the photograph as a viewer shows it) |
| 16-bit (grey or per channel) | scaled from 16 bits to `[0, 1]`; warning: the output is 8-bit |
| alpha channel with transparent pixels | dropped; warning |
| 1-bit or boolean (a mask) | 0 and 255; warning |
| CMYK and other colour spaces | converted to RGB; warning |
| 32-bit integer or float samples | refused (`ValueError`) |
| a file Pillow cannot read (text, empty, cut short) | refused (`ValueError`) |

`read_source` also takes `skimage:NAME`, an image bundled with scikit-image (no download),
and converts its array by the same rules (`from_array`).

Pillow (and scikit-image for `skimage:` sources) is imported when called, so `import winattn`
needs neither.

Example:
    >>> import numpy as np
    >>> from winattn.pretrained.images import from_array
    >>> from_array(np.zeros((4, 6), np.uint8), "grey").shape
    torch.Size([3, 4, 6])
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["check_output", "from_array", "image_format_for", "read_image", "read_source"]

_AS_IS = {"RGB", "L", "P", "RGBA", "LA", "PA", "RGBa", "La"}  # read without changing a value


def read_source(source: str | os.PathLike[str]) -> Tensor:
    """`read_image` of a file, or `from_array` of `skimage:NAME` (a scikit-image photograph).

    Returns:
        x: (3, H, W) float32 in [0, 1].

    Raises:
        ValueError: no such file or scikit-image photograph, or an image that cannot be read
            faithfully (the message says why).
        ImportError: `skimage:` without scikit-image installed.
    """
    text = os.fspath(source)
    if not text.startswith("skimage:"):
        if not os.path.isfile(text):
            raise ValueError(f"no image file at {text!r}; give a path or skimage:NAME.")
        return read_image(text)
    name = text.split(":", 1)[1]
    try:
        import skimage.data
    except ImportError as err:
        raise ImportError(f"{text!r} needs scikit-image: pip install scikit-image") from err
    loader = getattr(skimage.data, name, None) if not name.startswith("_") else None
    if not callable(loader):
        raise ValueError(f"scikit-image has no image {name!r}; try skimage:coffee.")
    array = loader()
    if not isinstance(array, np.ndarray):
        raise ValueError(f"skimage.data.{name}() is not one image ({type(array).__name__}).")
    return from_array(array, text)


def read_image(path: str | os.PathLike[str]) -> Tensor:
    """Reads an image file as RGB, converting other layouts explicitly (see the table above).

    Returns:
        x: (3, H, W) float32 in [0, 1].

    Raises:
        ValueError: the file is missing, empty, not an image Pillow reads, cut short, or holds
            samples with no faithful RGB reading (32-bit integer or float).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    name = os.fspath(path)
    if not os.path.isfile(name):
        raise ValueError(f"no image file at {name!r}; give the path of an image file.")
    size = os.path.getsize(name)
    if size == 0:
        raise ValueError(f"{name!r} is empty (0 bytes); give an image file.")
    try:
        with Image.open(name) as img:
            raw_modes = {t.args for t in img.tile if isinstance(t.args, str)}  # before load
            img.load()
            img = ImageOps.exif_transpose(img)  # a copy, as a viewer shows it
    except UnidentifiedImageError:
        raise ValueError(
            f"{name!r} ({size} bytes) is not an image Pillow can read; give a PNG, JPEG, TIFF, "
            "WebP or BMP file."
        ) from None
    except (OSError, SyntaxError) as err:  # a damaged or truncated file
        raise ValueError(f"cannot read image {name!r} ({size} bytes): {err}.") from None
    return _pillow_to_rgb(img, name, raw_modes)


def _pillow_to_rgb(img, name: str, raw_modes: set[str]) -> Tensor:
    """(3, H, W) float32 in [0, 1] from a loaded Pillow image (see `read_image`)."""
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        array = np.asarray(img).astype(np.float64)  # (H, W)
        if mode == "I" and (array.min() < 0 or array.max() > 65535):
            raise ValueError(
                f"{name!r} holds 32-bit integer samples (range {array.min():.0f}.."
                f"{array.max():.0f}); convert it to an 8- or 16-bit image first."
            )
        return from_array(array.astype(np.uint16), name)
    if mode == "F" or mode.startswith(("I;32", "F;")):
        raise ValueError(
            f"{name!r} holds floating-point or 32-bit samples (Pillow mode {mode!r}); convert it "
            "to an 8- or 16-bit image first."
        )
    if any(";16" in raw for raw in raw_modes):
        _warn(f"{name!r} has 16 bits per channel; Pillow reads its top 8 bits ({mode}), and the "
              "codec works on 8-bit images.")
    if mode == "1":
        _warn(f"{name!r} is a 1-bit (black and white) image; it is read as levels 0 and 255.")
    elif mode not in _AS_IS:
        _warn(f"{name!r} is a {mode} image; it is converted to RGB (colours may differ).")
    if "A" in mode or "a" in mode or (mode == "P" and "transparency" in img.info):
        _warn_transparent(np.asarray(img.convert("RGBA"))[..., 3], name)  # (H, W)
    array = np.asarray(img.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)  # (3, H, W)


def from_array(array: np.ndarray, name: str) -> Tensor:
    """`(3, H, W)` RGB in [0, 1] from an image array, by the rules of `read_image`.

    Args:
        array: `(H, W)` grey, `(H, W, 1)`, `(H, W, 2)` grey and alpha, `(H, W, 3)` RGB or
            `(H, W, 4)` RGBA; bool, uint8, uint16, or float in [0, 1].
        name: what the array is, for the messages.

    Raises:
        ValueError: another shape, sample type, or range.
    """
    if array.ndim == 2:
        array = array[:, :, None]  # (H, W, 1)
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4) or 0 in array.shape:
        raise ValueError(
            f"{name!r} has shape {array.shape}; an image is (H, W) or (H, W, C) with C in 1..4."
        )
    if array.dtype == bool:
        _warn(f"{name!r} is a boolean image (a mask); it is read as levels 0 and 255.")
        values = array.astype(np.float32)
    elif array.dtype == np.uint8:
        values = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        _warn(f"{name!r} is a 16-bit image; it is scaled to [0, 1] from 16 bits, and the "
              "codec's output is 8-bit.")
        values = array.astype(np.float64) / 65535.0
    elif array.dtype.kind == "f" and np.isfinite(array).all() and 0 <= array.min() <= array.max() <= 1:
        values = array
    else:
        raise ValueError(
            f"{name!r} holds {array.dtype} samples (range {array.min()}..{array.max()}); give "
            "bool, 8- or 16-bit samples, or floats in [0, 1]."
        )
    channels = array.shape[2]
    if channels in (2, 4):
        _warn_transparent(values[:, :, -1] * 255, name)
        values = values[:, :, :-1]
    if channels in (1, 2):
        values = np.repeat(values, 3, axis=2)  # grey on the three channels
    x = torch.from_numpy(np.ascontiguousarray(values)).float()  # (H, W, 3)
    return x.permute(2, 0, 1).contiguous()  # (3, H, W)


def _warn_transparent(alpha: np.ndarray, name: str) -> None:
    if alpha.min() < 255:
        _warn(f"{name!r} has transparent pixels (alpha channel); the alpha channel is dropped "
              "and those pixels keep their colour values, since the codec codes RGB only.")


def _warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=4)


def image_format_for(path: str | os.PathLike[str]) -> str:
    """Pillow's format name for the suffix of `path` ("PNG" for `.png`).

    Raises:
        ValueError: if Pillow cannot write files with that suffix.
    """
    from PIL import Image

    suffix = Path(path).suffix.lower()
    image_format = Image.registered_extensions().get(suffix)
    if image_format is None or image_format not in Image.SAVE:
        raise ValueError(
            f"cannot write images with suffix {suffix!r} (output {os.fspath(path)!r}); use .png."
        )
    return image_format


def check_output(
    path: str | os.PathLike[str],
    *,
    force: bool,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    folder_must_exist: bool = True,
) -> None:
    """Checks, before any work starts, that writing `path` loses nothing a user gave.

    Args:
        path: the output file.
        force: allow replacing an existing file (never one of `inputs`).
        inputs: the files the command reads (None entries are skipped); the output may not be
            one of them, by any name (a symbolic or hard link included).
        folder_must_exist: refuse an output whose folder is missing (False: the writer
            creates it).

    Raises:
        ValueError: `path` is one of `inputs`, or its folder does not exist.
        FileExistsError: `path` exists and `force` is False.
    """
    path = Path(path)
    if path.exists():
        for source in inputs:
            if source is not None and os.path.exists(source) and os.path.samefile(source, path):
                raise ValueError(
                    f"the output {str(path)!r} is the input {os.fspath(source)!r}; writing it "
                    "would destroy the input. Give another output path."
                )
        if path.is_dir():
            raise ValueError(f"the output {str(path)!r} is a folder; give a file path.")
        if not force:
            raise FileExistsError(f"{str(path)!r} already exists; pass --force to overwrite it.")
    elif folder_must_exist and not path.parent.is_dir():
        raise ValueError(
            f"the folder of the output {str(path)!r} does not exist; create it first."
        )
