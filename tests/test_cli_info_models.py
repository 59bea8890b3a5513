# SPDX-License-Identifier: Apache-2.0
"""`winattn models` and the summary line of `winattn info`."""

import contextlib
import io
import os

import pytest
import torch

from winattn.__main__ import main


def _run(argv: list[str]) -> str:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(argv) == 0
    return stdout.getvalue()


def test_models_lists_the_registered_compressai_architectures() -> None:
    pytest.importorskip("compressai")
    text = _run(["models"])
    assert "  bmshj2018-hyperprior-winattn" in text
    assert "  mbt2018-winattn" in text


def test_models_lists_the_example_codecs() -> None:
    text = _run(["models"])
    assert "  stf: SymmetricalTransFormer" in text and "  cnn: WACNN" in text


@pytest.mark.skipif(
    torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
    reason="triton runs here",
)
def test_info_does_not_count_triton_among_the_backends_that_run_on_a_cpu_only_machine() -> None:
    summary = next(
        line for line in _run(["info"]).splitlines() if line.startswith("backends that run here:")
    )
    assert "sdpa (cpu)" in summary
    assert "triton" not in summary


def test_info_lists_every_verified_triton_class_grouped_by_dtype_head_dim_and_window(
    monkeypatch,
) -> None:
    from winattn.backends.triton import verification

    def cls(dtype, window, bias, shifted, padding):
        return verification.ConfigClass(dtype, 16, window, bias, shifted, padding)

    classes = frozenset({
        cls("float32", (7, 7), "table", False, "none"),
        cls("float32", (7, 7), "table", False, "pad_qkv"),
        cls("float32", (7, 7), "none", True, "zeros"),
        cls("bfloat16", (8, 8), "table", True, "pad_qkv"),
    })
    monkeypatch.setattr(verification, "verified_classes", lambda: {"sm90": classes})
    assert verification.summary() == [
        "sm90: 4 configuration classes verified "
        "(bias/shift (padding modes) per dtype, head dim and window)",
        "  bfloat16 head_dim<=16 window 8x8: table/shifted (pad_qkv)",
        "  float32 head_dim<=16 window 7x7: none/shifted (zeros), table/unshifted (none, pad_qkv)",
    ]
