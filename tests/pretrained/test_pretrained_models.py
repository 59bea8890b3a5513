# SPDX-License-Identifier: Apache-2.0
"""The shipped codecs: loading by name, strict weights, exact decoding, the model card's numbers."""

import subprocess
import sys

import pytest
import torch

from winattn import pretrained

NAME = "bmshj2018-hyperprior-winattn-n64"
PHOTO = "chelsea"  # a held-out photograph (examples.ablation.data.EVAL_IMAGES)


def _photo() -> torch.Tensor:
    skimage_data = pytest.importorskip("skimage.data")
    array = getattr(skimage_data, PHOTO)()
    return torch.from_numpy(array).permute(2, 0, 1).float().div(255)[None]  # (1, 3, H, W)


def _three_digits(value: float) -> str:
    return f"{value:.3g}"


def test_the_model_ships_inside_the_package():
    assert NAME in pretrained.available()


def test_unknown_name_lists_the_shipped_models():
    with pytest.raises(ValueError, match=f"unknown pretrained model name='nope'.*{NAME}"):
        pretrained.load("nope")


def test_unknown_quality_lists_the_valid_ones():
    pytest.importorskip("compressai")
    with pytest.raises(ValueError, match=r"no quality=9; choose one of \[1, 2, 3\]"):
        pretrained.load(NAME, quality=9)


def test_importing_pretrained_does_not_import_compressai():
    code = "import winattn.pretrained, sys; print('compressai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("quality", [1, 2, 3])
def test_shipped_weights_cover_every_parameter_and_buffer(quality):
    pytest.importorskip("compressai")
    model = pretrained.load(NAME, quality)  # load_state_dict(strict=True) inside
    stored = torch.load(
        pretrained._check_name(NAME) / f"q{quality}.pt", map_location="cpu", weights_only=True
    )
    assert set(stored) == set(model.state_dict())
    assert all(v.dtype == torch.float16 for v in stored.values() if v.is_floating_point())


@pytest.mark.parametrize("quality", [1, 3])
def test_decoded_photo_equals_the_forward_output(quality):
    pytest.importorskip("compressai")
    model = pretrained.load(NAME, quality)
    x = _photo()
    coded = pretrained.compress_image(model, x)
    left, right, top, bottom = pretrained._pad_amounts(*x.shape[-2:], 64)
    with torch.inference_mode():
        forward = model(torch.nn.functional.pad(x, (left, right, top, bottom)))["x_hat"]
    forward = forward.clamp(0, 1)[..., top : top + x.shape[-2], left : left + x.shape[-1]]
    assert torch.equal(coded.x_hat, forward)


@pytest.mark.parametrize("quality", [1, 2, 3])
def test_bpp_and_psnr_on_a_held_out_photo_match_the_model_card(quality):
    pytest.importorskip("compressai")
    row = pretrained.card(NAME)["qualities"][str(quality)]["heldout"][PHOTO]
    x = _photo()
    coded = pretrained.compress_image(pretrained.load(NAME, quality), x)
    assert _three_digits(coded.bpp) == _three_digits(row["bpp"])
    assert _three_digits(pretrained.psnr(x, coded.x_hat)) == _three_digits(row["psnr-rgb"])


def test_demo_command_reports_the_model_card_numbers(tmp_path, capsys):
    pytest.importorskip("compressai")
    pytest.importorskip("skimage")
    from winattn.pretrained.__main__ import main

    out = tmp_path / "decoded.png"
    assert main([f"skimage:{PHOTO}", "--model", NAME, "--quality", "2", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    measured = next(ln for ln in lines if ln.endswith(")") and "bpp" in ln)
    card = next(ln for ln in lines if ln.startswith("model card:"))
    bpp, psnr_db = card.split(": ")[1].split(" bpp, PSNR ")
    assert f"{bpp} bpp, PSNR {psnr_db}" in measured
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_reports_a_missing_file_with_the_fix(capsys):
    from winattn.pretrained.__main__ import main

    assert main(["no/such/photo.png", "--model", NAME]) == 2
    assert "give a path or skimage:NAME" in capsys.readouterr().err
