# SPDX-License-Identifier: Apache-2.0
"""The fine-tuning example's command line: the lambda follows --quality, and --out is never
overwritten without --force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from examples import finetune_patched


@pytest.mark.parametrize(("quality", "lmbda"), [(1, 0.0018), (3, 0.0067), (4, 0.013), (8, 0.18)])
def test_lambda_is_compressais_mse_lambda_of_the_quality(quality, lmbda):
    args = finetune_patched.parse_args(["--dataset", "d", "--quality", str(quality)])
    assert args.lmbda == lmbda


def test_explicit_lambda_overrides_the_quality():
    args = finetune_patched.parse_args(["--dataset", "d", "--quality", "3", "--lmbda", "0.05"])
    assert args.lmbda == 0.05


def test_existing_out_is_refused_before_training(tmp_path, capsys):
    out = tmp_path / "model.pth.tar"
    out.write_bytes(b"keep")
    code = finetune_patched.main(["--dataset", str(tmp_path / "absent"), "--out", str(out)])
    assert (code, out.read_bytes()) == (1, b"keep")
    assert "--force" in capsys.readouterr().err


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        finetune_patched.parse_args(["--help"])
    assert "(default: bmshj2018-hyperprior)" in " ".join(capsys.readouterr().out.split())


def test_crops_read_16_bit_and_alpha_images_faithfully(tmp_path):
    from PIL import Image

    grey16 = (np.arange(24 * 20, dtype=np.uint16).reshape(24, 20) * 100 + 1000)  # up to 48900
    Image.fromarray(grey16).save(tmp_path / "a16.png")
    rgba = np.random.default_rng(0).integers(0, 256, (24, 20, 4), dtype=np.uint8)
    rgba[..., 3] = 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "b.png")
    crops = finetune_patched.ImageCrops(str(tmp_path), 24)
    with pytest.warns(UserWarning, match="16-bit"):
        x16 = crops[0]
    with pytest.warns(UserWarning, match="alpha"):
        x_rgba = crops[1]
    assert x16.shape == x_rgba.shape == (3, 24, 24)  # 20 columns padded to 24
    # 16-bit samples keep their 16-bit scale (a plain .convert("RGB") saturates them at 1.0)
    assert x16.max().item() == pytest.approx(grey16.max() / 65535, abs=1e-6)
    assert torch.equal(x16[0], x16[2])
    img = torch.from_numpy(rgba[..., :3]).permute(2, 0, 1).float() / 255
    nonzero_cols = x_rgba.abs().sum(dim=(0, 1)) > 0
    assert torch.allclose(x_rgba[:, :, nonzero_cols], img, atol=1e-6)


def test_crops_refuse_a_folder_without_images(tmp_path):
    with pytest.raises(FileNotFoundError, match="no images"):
        finetune_patched.ImageCrops(str(tmp_path), 16)
