# SPDX-License-Identifier: Apache-2.0
"""End to end through CompressAI's own tools: train one step, export with update_model,
evaluate with eval_model, both run by `python -m winattn.integrations.compressai`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("compressai")
Image = pytest.importorskip("PIL.Image")

from winattn.integrations.compressai import patched_class, register  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARCH = "bmshj2018-hyperprior-winattn"


def _tool(*args: str, cwd: Path) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, "-m", "winattn.integrations.compressai", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _images(folder: Path) -> None:
    folder.mkdir()
    gen = torch.Generator().manual_seed(0)
    # eval_model computes MS-SSIM, which needs sides above 160 pixels
    for i, (h, w) in enumerate([(168, 168), (176, 200)]):
        pixels = (torch.rand(h, w, 3, generator=gen) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"img{i}.png")


def _train_one_step(path: Path) -> None:
    torch.manual_seed(0)
    model = patched_class("bmshj2018-hyperprior")(32, 48).train()
    x = torch.rand(2, 3, 64, 64)
    out = model(x)
    bpp = sum(-torch.log2(v).sum() for v in out["likelihoods"].values()) / (2 * 64 * 64)
    loss = bpp + 100 * torch.mean((out["x_hat"] - x) ** 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss.backward()
    optimizer.step()
    torch.save({"state_dict": model.state_dict()}, path)


def test_register_fills_the_dicts_compressai_tools_read():
    import compressai.zoo as zoo
    import compressai.zoo.image as zoo_image
    from compressai.utils.update_model import __main__ as update_model

    names = register()
    assert ARCH in names and "mbt2018-mean-winattn-vbr" in names
    assert ARCH in zoo.image_models and ARCH in zoo_image.model_architectures
    assert update_model.models[ARCH] is zoo_image.model_architectures[ARCH]


def test_update_model_then_eval_model_round_trip(tmp_path):
    _images(tmp_path / "images")
    _train_one_step(tmp_path / "trained.pth.tar")
    _tool("update_model", "trained.pth.tar", "-a", ARCH, "-d", "exported", cwd=tmp_path)
    (exported,) = (tmp_path / "exported").glob("trained-*.pth.tar")
    stdout = _tool(
        "eval_model", "checkpoint", str(tmp_path / "images"), "-a", ARCH, "-p", str(exported),
        cwd=tmp_path,
    )
    results = json.loads(stdout[stdout.index("{"):])["results"]
    assert results["bpp"][0] > 0
    assert 0 < results["psnr-rgb"][0] < 100
