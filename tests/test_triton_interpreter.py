# SPDX-License-Identifier: Apache-2.0
"""Runs `tests/test_triton.py` under Triton's interpreter, in a subprocess.

Triton picks the interpreter when a kernel is first loaded, from `TRITON_INTERPRET=1`; a
subprocess keeps that setting away from the rest of the suite. A plain `pytest` therefore
checks the kernels, forward and backward, on the CPU.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = Path(__file__).with_name("test_triton.py")
ROOT = SUITE.parent.parent


def test_kernels_pass_the_suite_under_the_interpreter() -> None:
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("this process runs tests/test_triton.py under the interpreter itself")
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(SUITE), "-q", "-m", "not gpu", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, tail
    summary = proc.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and "skipped" not in summary, tail
