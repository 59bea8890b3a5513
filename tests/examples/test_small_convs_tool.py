# SPDX-License-Identifier: Apache-2.0
"""`examples/stf/tools/small_convs.py`: a smoke run on the tiny configuration (no timing
assertions), its JSON, and the kernel rule left as it was."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("skimage")

from examples.stf import entropy  # noqa: E402
from examples.stf.tools import small_convs  # noqa: E402


@pytest.mark.parametrize("arch", ["cnn", "stf"])
def test_smoke_run_writes_both_choices_and_restores_the_rule(tmp_path, capsys, arch):
    rule = entropy._onednn_for_small_maps
    out = tmp_path / "small.json"
    assert small_convs.main(["--arch", arch, "--tiny", "--size", "40", "56", "--repeat", "2", "--json", str(out)]) == 0
    assert entropy._onednn_for_small_maps is rule
    report = json.loads(out.read_text())
    assert report["config"] == "tiny" and report["size"] == [40, 56]
    for step in ("forward", "compress", "decompress"):
        assert [len(report["samples_s"][step][c]) for c in small_convs.CHOICES] == [2, 2]
        assert report["onednn_over_pytorch_paired"][step] > 0
    assert isinstance(report["same_bytes"], bool)
    assert "oneDNN time / PyTorch's" in capsys.readouterr().out


def test_photograph_fills_the_size_asked_for():
    x = small_convs.photograph(600, 700)
    assert x.shape == (1, 3, 600, 700) and 0 <= x.min() and x.max() <= 1
