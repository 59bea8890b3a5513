# SPDX-License-Identifier: Apache-2.0
"""`python -m winattn.pretrained`: nothing a user gave is lost (the source image, an existing
file), outputs are checked before the work, and every image goes through the careful reader."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from winattn import pretrained
from winattn.pretrained.__main__ import main

pytest.importorskip("compressai")

NAME = "bmshj2018-hyperprior-winattn-n64"


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "p.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def coded_inputs(monkeypatch):
    """The images the demo hands to the codec."""
    seen: list[torch.Tensor] = []
    real = pretrained.compress_image

    def record(model, x, *args, **kwargs):
        seen.append(x)
        return real(model, x, *args, **kwargs)

    monkeypatch.setattr(pretrained, "compress_image", record)
    return seen


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_the_demo_never_writes_its_decode_onto_the_source(photo, capsys, force):
    before = photo.read_bytes()
    assert main([str(photo), "--out", str(photo), *force]) == 2
    assert "is the input" in capsys.readouterr().err
    assert photo.read_bytes() == before


@pytest.mark.parametrize("link", [os.symlink, os.link])
def test_the_demo_never_writes_onto_the_source_by_another_name(photo, capsys, link):
    other = photo.with_name("other.png")
    link(photo, other)
    before = photo.read_bytes()
    assert main([str(photo), "--out", str(other), "--force"]) == 2
    assert "is the input" in capsys.readouterr().err
    assert photo.read_bytes() == before


def test_the_demo_replaces_an_existing_file_only_with_force(photo, tmp_path, capsys):
    out = tmp_path / "kept.png"
    out.write_bytes(b"mine")
    assert main([str(photo), "--out", str(out)]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert out.read_bytes() == b"mine"
    assert main([str(photo), "--out", str(out), "--force"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("out", "message"), [
    ("no/such/folder/d.png", "does not exist; create it first"),
    ("d.xyz", "cannot write images with suffix '.xyz'"),
])
def test_a_bad_out_is_refused_before_the_work(photo, tmp_path, capsys, coded_inputs, out,
                                               message):
    assert main([str(photo), "--out", str(tmp_path / out)]) == 2
    assert message in capsys.readouterr().err
    assert coded_inputs == []


@pytest.mark.parametrize(("content", "message"), [
    (b"a text file\n", "is not an image Pillow can read"),
    (b"", "is empty (0 bytes)"),
])
def test_a_source_that_is_not_an_image_is_a_clear_error(tmp_path, capsys, content, message):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_a_png_cut_short_is_a_clear_error(photo, capsys):
    photo.write_bytes(photo.read_bytes()[: photo.stat().st_size // 2])
    assert main([str(photo)]) == 2
    err = capsys.readouterr().err
    assert f"cannot read image '{photo}'" in err
    assert "Traceback" not in err


def test_a_16_bit_png_is_scaled_from_16_bits_with_a_warning(tmp_path, capsys, coded_inputs):
    path = tmp_path / "ramp16.png"
    ramp = (np.arange(64 * 64, dtype=np.uint32) * 16).astype(np.uint16).reshape(64, 64)
    Image.fromarray(ramp).save(path)
    assert main([str(path)]) == 0
    assert "16-bit" in capsys.readouterr().err
    levels = (coded_inputs[0] * 255).round().unique()
    assert levels.numel() == 256


def test_exif_orientation_is_applied(tmp_path, coded_inputs):
    path = tmp_path / "turned.png"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.new("RGB", (96, 64), (200, 30, 30)).save(path, exif=exif)
    assert main([str(path)]) == 0
    assert tuple(coded_inputs[0].shape) == (1, 3, 96, 64)


def test_transparent_pixels_are_dropped_with_a_warning(tmp_path, capsys):
    path = tmp_path / "rgba.png"
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0] = 200
    Image.fromarray(rgba).save(path)
    assert main([str(path)]) == 0
    assert "alpha channel is dropped" in capsys.readouterr().err


def test_a_boolean_mask_is_coded_as_black_and_white_with_a_warning(capsys, coded_inputs):
    pytest.importorskip("skimage")
    assert main(["skimage:horse"]) == 0
    assert "boolean image (a mask)" in capsys.readouterr().err
    assert set((coded_inputs[0] * 255).round().unique().tolist()) == {0.0, 255.0}


def test_weights_with_int_keys_are_a_clear_error(tmp_path):
    folder = shutil.copytree(pretrained._check_name(NAME), tmp_path / "m")
    weights = folder / json.loads((folder / "card.json").read_text())["qualities"]["1"]["weights"]
    state = torch.load(weights, weights_only=True)
    torch.save(dict(enumerate(state.values())), weights)
    with pytest.raises(ValueError, match="not a state dict of parameter names to tensors: entry 0"):
        pretrained.load_folder(folder, 1)


@pytest.mark.parametrize("call", [pretrained.card, pretrained.load, pretrained.load_folder])
def test_an_int_keyed_dict_for_a_name_is_a_clear_error(call):
    with pytest.raises(ValueError, match="got dict"):
        call({1: NAME})
