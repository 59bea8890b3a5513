# SPDX-License-Identifier: Apache-2.0
"""Images the codec cannot represent exactly are converted with a warning, or refused."""

from __future__ import annotations

import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from examples.stf.data import read_image
from winattn.pretrained.images import read_source


def _write_png_rgb16(path, array: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG of `array: (H, W, 3)` (Pillow cannot write these)."""
    height, width, _ = array.shape
    rows = b"".join(b"\0" + array[i].astype(">u2").tobytes() for i in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("suffix", ["png", "tif", "pgm"])
def test_16_bit_grey_is_scaled_from_16_bits_with_a_warning(tmp_path, suffix):
    ramp = (np.arange(60, dtype=np.uint16) * 1111).reshape(6, 10)
    Image.fromarray(ramp).save(tmp_path / f"ramp.{suffix}")
    with pytest.warns(UserWarning, match="16-bit image; it is scaled"):
        x = read_image(tmp_path / f"ramp.{suffix}")
    assert x.shape == (3, 6, 10)
    assert np.array_equal((x[0].double() * 65535).round().numpy(), ramp)


def test_32_bit_integer_tiff_is_refused_naming_the_mode(tmp_path):
    levels = np.arange(60, dtype=np.int32).reshape(6, 10)  # small values, 32-bit samples
    Image.fromarray(levels).save(tmp_path / "int32.tif")
    with pytest.raises(ValueError, match="int32.tif.*32-bit integer samples.*'I;32S'.*8- or 16-bit"):
        read_image(tmp_path / "int32.tif")


def test_16_bit_rgb_png_is_read_with_a_warning(tmp_path):
    _write_png_rgb16(tmp_path / "rgb16.png", np.arange(60).reshape(4, 5, 3) * 1000)
    with pytest.warns(UserWarning, match="16 bits per channel"):
        read_image(tmp_path / "rgb16.png")


def test_16_bit_rgb_tiff_is_read_as_its_top_8_bits_with_a_warning(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    rgb = (np.arange(60, dtype=np.uint16) * 1111).reshape(4, 5, 3)
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb, photometric="rgb")
    with pytest.warns(UserWarning, match="16 bits per channel; Pillow reads its top 8 bits"):
        x = read_image(tmp_path / "rgb16.tif")
    assert np.array_equal((x * 255).round().permute(1, 2, 0).numpy(), rgb >> 8)


def test_transparent_alpha_is_dropped_with_a_warning(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    with pytest.warns(UserWarning, match="alpha channel is dropped"):
        x = read_image(tmp_path / "rgba.png")
    assert float(x[0].max()) == pytest.approx(200 / 255)


@pytest.mark.filterwarnings("ignore:.*is a 16-bit image")
@pytest.mark.parametrize(("mode", "colour", "other"), [
    ("L", 0, 255), ("I;16", 0, 65535), ("RGB", (0, 0, 0), (255, 255, 255)),
])
def test_a_transparent_colour_in_a_png_is_dropped_with_a_warning(tmp_path, mode, colour, other):
    image = Image.new(mode, (4, 4), colour)
    image.putpixel((1, 1), other)
    image.save(tmp_path / "trns.png", transparency=colour)
    with pytest.warns(UserWarning, match="transparent pixels.*dropped"):
        x = read_image(tmp_path / "trns.png")
    assert float(x.min()) == 0.0


def test_a_transparent_colour_no_pixel_has_is_read_without_a_warning(tmp_path):
    Image.new("RGB", (4, 4), (9, 9, 9)).save(tmp_path / "trns.png", transparency=(0, 0, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(tmp_path / "trns.png").shape == (3, 4, 4)


def test_opaque_alpha_is_dropped_without_a_warning(tmp_path):
    rgba = np.full((4, 4, 4), 255, np.uint8)
    Image.fromarray(rgba).save(tmp_path / "opaque.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(tmp_path / "opaque.png").shape == (3, 4, 4)


def test_float_samples_are_refused_naming_the_mode(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.float32)).save(tmp_path / "float.tiff")
    with pytest.raises(ValueError, match="floating-point or 32-bit samples .* 'F'"):
        read_image(tmp_path / "float.tiff")


def test_a_1_bit_image_is_read_as_0_and_255_with_a_warning(tmp_path):
    Image.fromarray(np.eye(4, dtype=bool)).save(tmp_path / "mask.png")
    with pytest.warns(UserWarning, match="1-bit"):
        x = read_image(tmp_path / "mask.png")
    assert sorted(x.unique().tolist()) == [0.0, 1.0]


def test_cmyk_is_converted_to_rgb_with_a_warning(tmp_path):
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    with pytest.warns(UserWarning, match="CMYK image; it is converted to RGB"):
        x = read_image(tmp_path / "cmyk.jpg")
    assert x.shape == (3, 4, 4)


def test_palette_and_grey_images_are_read_without_a_warning(tmp_path):
    Image.new("P", (4, 4), 3).save(tmp_path / "palette.png")
    Image.new("L", (4, 4), 77).save(tmp_path / "grey.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(tmp_path / "palette.png").shape == (3, 4, 4)
        grey = read_image(tmp_path / "grey.png")
    assert float(grey.max()) == float(grey.min()) == pytest.approx(77 / 255)


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 degrees counter-clockwise to display
    Image.new("RGB", (6, 4)).save(tmp_path / "turned.jpg", exif=exif)
    assert read_image(tmp_path / "turned.jpg").shape == (3, 6, 4)


def test_a_text_file_is_refused_naming_it(tmp_path):
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(ValueError, match="notes.png.*is not an image Pillow can read"):
        read_image(tmp_path / "notes.png")


def test_a_boolean_array_from_scikit_image_is_read_as_0_and_255_with_a_warning():
    pytest.importorskip("skimage")
    with pytest.warns(UserWarning, match="boolean image"):
        x = read_source("skimage:horse")
    assert sorted(x.unique().tolist()) == [0.0, 1.0]


def test_an_unknown_scikit_image_name_is_refused():
    pytest.importorskip("skimage")
    with pytest.raises(ValueError, match="scikit-image has no image 'nope'"):
        read_source("skimage:nope")


@pytest.mark.parametrize("name", ["download_all", "cells3d"])
def test_a_scikit_image_name_that_needs_a_download_is_refused(name, monkeypatch):
    skimage_data = pytest.importorskip("skimage.data")
    monkeypatch.setattr(skimage_data, name, lambda: pytest.fail(f"{name}() was called"))
    with pytest.raises(ValueError, match=f"'{name}' is not bundled with scikit-image.*astronaut"):
        read_source(f"skimage:{name}")


def test_a_bundled_scikit_image_photograph_is_read():
    pytest.importorskip("skimage")
    assert read_source("skimage:astronaut").shape == (3, 512, 512)


def test_ablation_photographs_go_through_the_same_reader(monkeypatch):
    pytest.importorskip("skimage")
    from examples.ablation import data

    seen = []
    monkeypatch.setattr(data, "from_array", lambda array, name: seen.append(name) or array)
    data.load_image("camera")
    assert seen == ["skimage:camera"]
