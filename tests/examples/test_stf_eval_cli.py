# SPDX-License-Identifier: Apache-2.0
"""The evaluation CLI (`examples/stf/eval.py`) never overwrites without --force and shows
its progress."""

from __future__ import annotations

import json

import pytest

from examples.stf import eval as stf_eval
from tests.examples.stf_helpers import save_random_image, save_tiny_checkpoint


@pytest.fixture
def curve(tmp_path):
    path = tmp_path / "curve.json"
    path.write_text(json.dumps({"bpp": [0.1, 0.3], "psnr": [29.0, 32.0]}))
    return path


@pytest.mark.parametrize("option", ["-o", "--plot"])
def test_existing_output_is_refused_before_any_evaluation(tmp_path, capsys, option):
    existing = tmp_path / "existing"
    existing.write_bytes(b"keep")
    code = stf_eval.main([str(tmp_path), "--checkpoint", str(tmp_path / "absent.pth.tar"),
                          option, str(existing)])
    assert (code, existing.read_bytes()) == (1, b"keep")
    assert "--force" in capsys.readouterr().err


def test_force_overwrites_an_existing_plot(tmp_path, curve):
    plot = tmp_path / "rd.png"
    plot.write_bytes(b"old")
    assert stf_eval.main(["--compare", str(curve), "--plot", str(plot), "--force"]) == 0
    assert plot.read_bytes() != b"old"


def test_progress_bar_counts_the_images(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    save_random_image(images / "a.png", 16, 16)
    checkpoint = save_tiny_checkpoint(tmp_path / "c.pth.tar")
    assert stf_eval.main([str(images), "--checkpoint", str(checkpoint), "--warmup", "0"]) == 0
    assert "1/1" in capsys.readouterr().err


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        stf_eval.parse_args(["--help"])
    assert "(default: float32)" in " ".join(capsys.readouterr().out.split())
