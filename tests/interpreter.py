# SPDX-License-Identifier: Apache-2.0
"""Runs a test file again under Triton's interpreter, in a subprocess.

Triton picks the interpreter when a kernel is first loaded, from `TRITON_INTERPRET=1`; a
subprocess keeps that setting away from the rest of the suite.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def assert_passes_under_interpreter(test_file: str | Path, *pytest_args: str) -> None:
    """Runs `pytest test_file *pytest_args` with `TRITON_INTERPRET=1` and no GPU, and fails
    with the end of its output unless every selected test passed (none skipped).

    Skips when triton is not installed, or when this process already runs under the
    interpreter (the selected tests then run here directly).
    """
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("this process runs the tests under the interpreter itself")
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(test_file), "-q", "-p", "no:cacheprovider", *pytest_args],
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
