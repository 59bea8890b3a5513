# SPDX-License-Identifier: Apache-2.0
"""`python -m winattn.integrations.compressai`: its help, and a quiet start."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("compressai")

from winattn.integrations.compressai import _hint_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _python(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_help_shows_usage_and_examples() -> None:
    done = _python("-m", "winattn.integrations.compressai", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m winattn.integrations.compressai")
    assert "-a bmshj2018-hyperprior-winattn" in done.stdout


def test_update_model_starts_without_warnings() -> None:
    # register() imports update_model's __main__; running it again through runpy would warn
    done = _python("-W", "error", "-m", "winattn.integrations.compressai", "update_model", "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
    assert "Warning" not in done.stderr


def test_importing_compressai_through_winattn_prints_no_future_warning() -> None:
    code = "from winattn.integrations.compressai import register; register()"
    done = _python("-W", "error::FutureWarning", "-c", code)
    assert done.returncode == 0, done.stderr[-2000:]


def test_unpatched_architecture_on_a_patched_checkpoint_gets_a_hint() -> None:
    error = RuntimeError(
        'Error(s) in loading state_dict for ScaleHyperprior:\n\tUnexpected key(s) in '
        'state_dict: "g_a.winattn_stage2.attn.qkv.weight", "g_a.winattn_stage2.attn.proj.weight".'
    )
    hint = _hint_for(error)
    assert hint is not None and "-a bmshj2018-hyperprior-winattn" in hint


def test_other_errors_get_no_hint() -> None:
    assert _hint_for(RuntimeError('Unexpected key(s) in state_dict: "g_a.9.weight"')) is None
