# SPDX-License-Identifier: Apache-2.0
"""The cross-environment harness counts broken decodes as an independent check finds them.

Encoder and decoder run in this process (the harness runs them in child processes); the
environments differ in thread count only. The independent check recomputes the decoder's
scales with the model's own `entropy_bottleneck` and `h_s` (or perturbs the encoder's with
the harness's seeded rule) and asks CompressAI's `build_indexes` whether any scale index
changed: a decode breaks exactly when one does.
"""

import math

import pytest
import torch

from examples.portable.cross_env import (
    PRETRAINED,
    decode_files,
    encode_all,
    parse_args,
    perturb,
    step_ulps,
)
from winattn import pretrained

IMAGES = ["astronaut", "coffee"]
SIZE = 64


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("enc")
    args = parse_args(["encode", "--images", *IMAGES, "--size", str(SIZE), "--qualities", "1",
                       "--threads", "1", "--folder", str(folder)])
    threads = torch.get_num_threads()
    try:
        encode_all(args)
    finally:
        torch.set_num_threads(threads)
    payload = torch.load(folder / "encoded.pt", weights_only=False)
    return folder, payload["records"]


@pytest.fixture(scope="module")
def model():
    return pretrained.load(PRETRAINED, 1)


def decode(folder, model, fraction=0.0, ulps=1, threads=1):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        models = {f"pretrained:{PRETRAINED}@q1": model}  # the harness's label for it
        return decode_files(str(folder), fraction, ulps, SIZE, "cpu", models)
    finally:
        torch.set_num_threads(before)


def indexes_differ(model, scales, reference):
    build = model.gaussian_conditional.build_indexes
    return not torch.equal(build(scales), build(reference))


def test_step_ulps_matches_repeated_nextafter():
    x = torch.tensor([0.0, -0.0, 0.11, -1.5, -1e-45, 3.0e38, 7.25])
    expected = x
    for _ in range(5):
        expected = torch.nextafter(expected, torch.full_like(expected, math.inf))
    assert torch.equal(step_ulps(x, 5), expected)


def test_same_environment_without_perturbation_breaks_nothing(encoded, model):
    folder, _ = encoded
    rows = decode(folder, model)
    assert [r["broken"] for r in rows] == [False, False]
    assert all(r["params_identical"] and r["max_pixel_diff"] == 0 for r in rows)


@torch.inference_mode()
def test_other_thread_count_breaks_where_recomputed_scale_indexes_change(encoded, model):
    folder, records = encoded
    rows = decode(folder, model, threads=2)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        expected_broken, expected_identical = [], []
        for record in records:
            z_hat = model.entropy_bottleneck.decompress(record["strings"][1], record["shape"])
            scales = model.h_s(z_hat)  # what a 2-thread decoder computes
            expected_broken.append(indexes_differ(model, scales, record["params"][0]))
            expected_identical.append(torch.equal(scales, record["params"][0]))
    finally:
        torch.set_num_threads(before)
    assert [r["broken"] for r in rows] == expected_broken
    assert [r["params_identical"] for r in rows] == expected_identical


@pytest.mark.parametrize(("fraction", "ulps"), [(1.0, 1), (0.01, 65536), (1.0, 65536)])
def test_perturbed_decode_breaks_where_the_perturbed_scale_indexes_change(
    encoded, model, fraction, ulps
):
    folder, records = encoded
    rows = decode(folder, model, fraction, ulps)
    expected = []
    for index, record in enumerate(records):
        generator = torch.Generator().manual_seed(index)  # the harness's seed for this file
        scales = perturb(record["params"][0], fraction, ulps, generator)
        expected.append(indexes_differ(model, scales, record["params"][0]))
    assert [r["broken"] for r in rows] == expected
    assert not any(r["params_identical"] for r in rows)
    if fraction == 1.0 and ulps == 65536:  # every scale moved by 0.8%: some index must change
        assert all(expected)
        assert all(r["max_pixel_diff"] > 0 and r["psnr_drop"] > 0 for r in rows)


@pytest.mark.parametrize(
    "args, named",
    [(["--threads", "0"], "'0'"), (["--perturb", "2:x"], "'2:x'"), (["--perturb", "0.5:0"], "'0.5:0'")],
)
def test_bad_thread_counts_and_perturbations_are_refused_before_any_work(args, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["run", *args])
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err
