# SPDX-License-Identifier: Apache-2.0
"""Shared helpers of the tests of the STF example scripts (train, eval, codec)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from examples.stf import zoo
from examples.stf.data import write_image

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = REPO_ROOT / "examples" / "stf"


def run_script(*args: str | Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """Runs `python <args>` from the repository root on one thread; captures text output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def save_tiny_checkpoint(path: Path, name: str = "cnn", seed: int = 0, quality: int = 2) -> Path:
    """A randomly initialised tiny model saved as a training checkpoint of `train.py`."""
    torch.manual_seed(seed)
    info = zoo.ModelInfo(name=name, config=dict(zoo.TINY_CONFIGS[name]), quality=quality,
                         metric="mse", lmbda=zoo.lambda_for("mse", quality))
    zoo.save_checkpoint(path, zoo.build_model(name, info.config), info)
    return path


def save_random_image(path: Path, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Writes a smooth random 8-bit RGB image; returns it as (3, H, W) in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 4, 4, generator=generator)  # (1, 3, 4, 4)
    x = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")[0]
    x = (x * 255).round() / 255  # (3, H, W), exactly representable in 8 bits
    write_image(x, path)
    return x
