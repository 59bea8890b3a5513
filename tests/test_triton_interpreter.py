# SPDX-License-Identifier: Apache-2.0
"""Runs `tests/test_triton.py` under Triton's interpreter, in a subprocess.

Triton picks the interpreter when a kernel is first loaded, from `TRITON_INTERPRET=1`; a
subprocess keeps that setting away from the rest of the suite. A plain `pytest` therefore
checks the kernels, forward and backward, on the CPU.
"""

from __future__ import annotations

from pathlib import Path

from tests.interpreter import assert_passes_under_interpreter

SUITE = Path(__file__).with_name("test_triton.py")


def test_kernels_pass_the_suite_under_the_interpreter() -> None:
    assert_passes_under_interpreter(SUITE, "-m", "not gpu")
