# SPDX-License-Identifier: Apache-2.0
"""Tests of the STF evaluation script (`examples/stf/eval.py`): metrics, JSON and plots."""

from __future__ import annotations

import json
import math

import pytest
import torch

from examples.stf import eval as stf_eval
from examples.stf import zoo
from examples.stf.data import read_image
from tests.examples.stf_helpers import (
    SCRIPTS,
    run_script,
    save_random_image,
    save_tiny_checkpoint,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IMAGE_SIZES = {"a.png": (32, 48), "b.png": (29, 35)}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two tiny checkpoints evaluated by the CLI on two images, with a plot and a comparison."""
    root = tmp_path_factory.mktemp("eval")
    images = root / "images"
    images.mkdir()
    for seed, (name, (height, width)) in enumerate(IMAGE_SIZES.items()):
        save_random_image(images / name, height, width, seed=seed)
    checkpoints = [save_tiny_checkpoint(root / f"q{q}.pth.tar", "cnn", seed=q, quality=q)
                   for q in (1, 2)]
    other = root / "other.json"
    other.write_text(json.dumps({"bpp": [0.2, 0.5], "psnr": [30.0, 33.0]}))
    output, plot = root / "results.json", root / "rd.png"
    result = run_script(SCRIPTS / "eval.py", images, "--checkpoint", *checkpoints, "-o", output,
                        "--plot", plot, "--compare", other)
    assert result.returncode == 0, result.stderr
    return {"images": images, "checkpoints": checkpoints, "json": json.loads(output.read_text()),
            "plot": plot}


def test_json_has_the_layout_of_compressai_eval_model(run):
    document = run["json"]
    layout = (sorted(document), sorted(document["results"]),
              [len(v) for v in document["results"].values()])
    assert layout == (
        ["description", "name", "per_image", "results"],
        sorted(stf_eval.METRIC_KEYS),
        [2] * len(stf_eval.METRIC_KEYS),
    )


def test_bytes_per_image_are_those_of_a_real_compress(run):
    details = run["json"]["per_image"][0]
    model, _ = zoo.load_model(details["checkpoint"])
    expected = []
    for image in details["images"]:
        out = model.compress(read_image(run["images"] / image["source"])[None])
        expected.append(sum(len(group[0]) for group in out["strings"]))
    assert [image["bytes"] for image in details["images"]] == expected


def test_bpp_per_image_is_eight_bits_per_byte_over_the_pixel_count(run):
    for image in run["json"]["per_image"][0]["images"]:
        height, width = IMAGE_SIZES[image["source"]]
        assert image["bpp"] == pytest.approx(8 * image["bytes"] / (height * width), rel=1e-12)


def test_mean_bpp_of_a_rate_point_is_the_mean_over_images(run):
    document = run["json"]
    for index, details in enumerate(document["per_image"]):
        per_image = [image["bpp"] for image in details["images"]]
        assert document["results"]["bpp"][index] == pytest.approx(sum(per_image) / len(per_image))


def test_rate_points_are_sorted_by_bpp(run):
    bpp = run["json"]["results"]["bpp"]
    assert bpp == sorted(bpp)


def test_plot_is_written_as_png(run):
    assert run["plot"].read_bytes()[:8] == PNG_MAGIC


def test_psnr_of_a_one_level_error_everywhere_is_48_13_db():
    x = torch.full((1, 3, 8, 8), 100 / 255)
    assert stf_eval.psnr(x, x + 1 / 255) == pytest.approx(20 * math.log10(255), abs=1e-9)


def test_ms_ssim_is_not_reported_below_161_pixels_a_side():
    x = torch.rand(1, 3, 160, 200)
    assert stf_eval.ms_ssim(x, x) is None


def test_ms_ssim_of_an_image_with_itself_is_one():
    x = torch.rand(1, 3, 176, 176)
    assert stf_eval.ms_ssim(x, x) == pytest.approx(1.0, abs=1e-6)


def test_mean_skips_missing_values():
    assert stf_eval.mean([1.0, None, 3.0]) == 2.0


def test_load_curve_reads_compressai_layout(tmp_path):
    path = tmp_path / "curve.json"
    path.write_text(json.dumps({"name": "mbt", "results": {"bpp": [0.1], "psnr-rgb": [29.0],
                                                           "ms-ssim-rgb": [0.95]}}))
    assert stf_eval.load_curve(path) == {"name": "mbt", "bpp": [0.1], "psnr": [29.0],
                                         "ms-ssim": [0.95]}


def test_load_curve_reads_flat_layout_and_names_it_after_the_file(tmp_path):
    path = tmp_path / "stf_mse_kodak.json"
    path.write_text(json.dumps({"bpp": [0.1, 0.2], "psnr": [29.0, 30.5]}))
    assert stf_eval.load_curve(path) == {"name": "stf_mse_kodak", "bpp": [0.1, 0.2],
                                         "psnr": [29.0, 30.5], "ms-ssim": None}


def test_load_curve_rejects_json_without_bpp(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"psnr": [30.0]}))
    with pytest.raises(ValueError, match="'bpp'"):
        stf_eval.load_curve(path)


def test_compare_and_plot_without_checkpoints_writes_a_png(tmp_path):
    curve = tmp_path / "curve.json"
    curve.write_text(json.dumps({"bpp": [0.1, 0.3], "psnr": [29.0, 32.0],
                                 "ms-ssim": [0.95, 0.98]}))
    plot = tmp_path / "rd.png"
    assert stf_eval.main(["--compare", str(curve), "--plot", str(plot)]) == 0
    assert plot.read_bytes()[:8] == PNG_MAGIC


def test_missing_image_folder_is_an_error_naming_it(tmp_path, capsys):
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny.pth.tar")
    missing = tmp_path / "no_such_folder"
    code = stf_eval.main([str(missing), "--checkpoint", str(checkpoint)])
    assert (code, "no_such_folder" in capsys.readouterr().err) == (1, True)
