# SPDX-License-Identifier: Apache-2.0
"""Photographs in and out of the codecs: one careful reader, and output files that never
replace an input or, without `force`, an existing file.

The codecs code 8-bit RGB. `read_image` turns every other layout into `(3, H, W)` RGB in
`[0, 1]` explicitly, with a warning wherever the data changes, never silently:

| the image | what is read |
|---|---|
| 8-bit RGB, palette, greyscale | as it is (grey repeated on the three channels) |
| EXIF orientation | applied (the photograph as a viewer shows it) |
| 16-bit greyscale | scaled from 16 bits to `[0, 1]`; warning: the output is 8-bit |
| 16-bit per channel (RGB, RGBA) | Pillow's top 8 bits of each sample (truncated); warning |
| alpha channel, or a transparent colour (PNG), with transparent pixels | dropped; warning |
| 1-bit or boolean (a mask) | 0 and 255; warning |
| CMYK and other colour spaces | converted to RGB; warning |
| 32-bit integer, signed 16-bit or float samples | refused (`ValueError`) |
| a file Pillow cannot read (text, empty, cut short) | refused (`ValueError`) |

`read_source` also takes `skimage:NAME`, an image whose file ships with the installed
scikit-image (never one it would download), and converts its array by the same rules
(`from_array`).

Pillow (and scikit-image for `skimage:` sources) is imported when called, so `import winattn`
needs neither.

Example:
    >>> import numpy as np
    >>> from winattn.pretrained.images import from_array
    >>> from_array(np.zeros((4, 6), np.uint8), "grey").shape
    torch.Size([3, 4, 6])
"""

from __future__ import annotations

import inspect
import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["check_output", "from_array", "image_format_for", "read_image", "read_source"]

_AS_IS = {"RGB", "L", "P", "RGBA", "LA", "PA", "RGBa", "La"}  # read without changing a value
# The data files a `skimage.data` loader reads, as its source names them: `_load("data/x.png")`.
_SKIMAGE_FILE = re.compile(r"""_(?:load|fetch)\(\s*['"](data/[^'"]+)['"]""")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp")


def read_source(source: str | os.PathLike[str]) -> Tensor:
    """`read_image` of a file, or `from_array` of `skimage:NAME` (a scikit-image photograph).

    Returns:
        x: (3, H, W) float32 in [0, 1].

    Raises:
        ValueError: no such file, a scikit-image name whose image does not ship with the
            installed scikit-image (it would be downloaded), or an image that cannot be read
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
    bundled = _bundled_skimage_images(skimage.data)
    if name not in bundled:
        raise ValueError(
            f"skimage:{name} is refused: {name!r} is not bundled with scikit-image (reading it "
            f"would download it, or it is not an image file). Bundled: {', '.join(bundled)}."
        )
    array = loader()
    if not isinstance(array, np.ndarray):
        raise ValueError(f"skimage.data.{name}() is not one image ({type(array).__name__}).")
    return from_array(array, text)


def _bundled_skimage_images(data) -> list[str]:
    """The `skimage.data` loaders that read only image files present in the installed package.

    scikit-image downloads (with pooch) every data file it does not ship; a loader is kept
    when its source names at least one data file and every one is an image file found under
    the installed `skimage/` folder, so nothing here touches the network. A loader whose
    source cannot be read, or that names no file (`download_all`, generated images), is left
    out.
    """
    package = Path(data.__file__).resolve().parent.parent  # skimage/
    names = []
    for name in getattr(data, "__all__", ()):
        try:
            files = _SKIMAGE_FILE.findall(inspect.getsource(getattr(data, name)))
        except (AttributeError, OSError, TypeError):
            continue
        if files and all(
            f.lower().endswith(_IMAGE_SUFFIXES) and (package / f).is_file() for f in files
        ):
            names.append(name)
    return sorted(names)


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
            raw_modes, bits = _stored_as(img)  # before load, which empties `tile`
            img.load()
            img = ImageOps.exif_transpose(img)  # a copy, as a viewer shows it
    except UnidentifiedImageError:
        raise ValueError(
            f"{name!r} ({size} bytes) is not an image Pillow can read; give a PNG, JPEG, TIFF, "
            "WebP or BMP file."
        ) from None
    except (OSError, SyntaxError) as err:  # a damaged or truncated file
        raise ValueError(f"cannot read image {name!r} ({size} bytes): {err}.") from None
    return _pillow_to_rgb(img, name, raw_modes, bits)


def _stored_as(img) -> tuple[set[str], set[int]]:
    """How an opened, not yet loaded, file stores its samples: Pillow's raw modes (`"I;32S"`,
    `"RGB;16L"`) and, for a TIFF, its bits per sample (empty where the format does not say)."""
    raw_modes = set()
    for tile in img.tile:
        raw = tile.args[0] if isinstance(tile.args, tuple) and tile.args else tile.args
        if isinstance(raw, str):  # TIFF, JPEG, PPM: (raw mode, ...); PNG: the raw mode
            raw_modes.add(raw)
    tags = getattr(img, "tag_v2", None)
    bits = tags.get(258, ()) if tags is not None else ()  # TIFF BitsPerSample, per channel
    return raw_modes, set(bits if isinstance(bits, tuple) else (bits,))


def _pillow_to_rgb(img, name: str, raw_modes: set[str], bits: set[int]) -> Tensor:
    """(3, H, W) float32 in [0, 1] from a loaded Pillow image (see `read_image`)."""
    mode = img.mode
    if mode == "F" or mode.startswith(("I;32", "F;")):
        raise ValueError(
            f"{name!r} holds floating-point or 32-bit samples (Pillow mode {mode!r}); convert it "
            "to an 8- or 16-bit image first."
        )
    sixteen_bits = bits == {16} or any(";16" in raw for raw in raw_modes)
    if mode == "I" and not sixteen_bits:
        # Pillow's mode "I" holds 32-bit integers; only a file that says it stores 16 bits
        # (a 16-bit PGM, an older Pillow's 16-bit PNG) is read as 16-bit, whatever its values.
        raise ValueError(
            f"{name!r} holds 32-bit integer samples (Pillow mode 'I', raw mode "
            f"{', '.join(map(repr, sorted(raw_modes))) or 'unknown'}, "
            f"{'/'.join(map(str, sorted(bits))) or 'unknown'} bits per sample); convert it to "
            "an 8- or 16-bit image first."
        )
    if mode.startswith("I;16") or mode == "I":
        array = np.asarray(img).astype(np.int64)  # (H, W)
        if array.min() < 0:
            raise ValueError(
                f"{name!r} holds signed 16-bit samples (minimum {array.min()}); convert it to "
                "an unsigned 8- or 16-bit image first."
            )
        transparent = img.info.get("transparency")
        if isinstance(transparent, int) and (array == transparent).any():
            _warn_transparent(np.zeros(1), name, "transparent colour")  # a tRNS grey level
        return from_array(array.astype(np.uint16), name)
    if sixteen_bits:
        _warn(f"{name!r} has 16 bits per channel; Pillow reads its top 8 bits ({mode}), and the "
              "codec works on 8-bit images.")
    if mode == "1":
        _warn(f"{name!r} is a 1-bit (black and white) image; it is read as levels 0 and 255.")
    elif mode not in _AS_IS:
        _warn(f"{name!r} is a {mode} image; it is converted to RGB (colours may differ).")
    if "A" in mode or "a" in mode or "transparency" in img.info:
        what = "alpha channel" if "A" in mode or "a" in mode else "transparent colour"
        _warn_transparent(np.asarray(img.convert("RGBA"))[..., 3], name, what)  # (H, W)
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


def _warn_transparent(alpha: np.ndarray, name: str, what: str = "alpha channel") -> None:
    """Warns when `alpha` (0..255) marks a pixel transparent; `what` carries the transparency
    ("alpha channel", or "transparent colour": a PNG's tRNS palette index, grey or RGB value)."""
    if alpha.min() < 255:
        _warn(f"{name!r} has transparent pixels ({what}); the {what} is dropped and those "
              "pixels keep their colour values, since the codec codes RGB only.")


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
