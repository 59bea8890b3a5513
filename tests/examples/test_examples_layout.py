# SPDX-License-Identifier: Apache-2.0
"""The examples run outside the repository, beside CompressAI's own top-level `examples`:
installed, the folder is the package `winattn_examples`, and its modules import each other
relatively, so they work under that name."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import importlib
import sys
import torch
from winattn_examples.stf import zoo
from winattn_examples.stf.models import WACNN, SymmetricalTransFormer

assert zoo.model_class("cnn") is WACNN and zoo.model_class("stf") is SymmetricalTransFormer
model = zoo.build_model("cnn", zoo.TINY_CONFIGS["cnn"]).eval()
with torch.no_grad():
    out = model(torch.rand(1, 3, 64, 64))
assert out["x_hat"].shape == (1, 3, 64, 64), out["x_hat"].shape
for name in ("codec", "data", "eval", "loader", "train", "tools.compare_official"):
    importlib.import_module(f"winattn_examples.stf.{name}")  # every module, scripts included
clash = sorted(m for m in sys.modules if m == "examples.stf" or m.startswith("examples.stf."))
assert not clash, clash
print("ok")
"""


def test_stf_models_import_from_another_folder_as_winattn_examples(tmp_path):
    # the layout `pip install .` gives: winattn and winattn_examples side by side, no checkout
    site = tmp_path / "site"
    site.mkdir()
    (site / "winattn").symlink_to(ROOT / "winattn", target_is_directory=True)
    (site / "winattn_examples").symlink_to(ROOT / "examples", target_is_directory=True)
    work = tmp_path / "work"
    work.mkdir()
    (work / "use_stf.py").write_text(SCRIPT)
    env = {"PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-W", "ignore::FutureWarning", "use_stf.py"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
