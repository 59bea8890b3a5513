# SPDX-License-Identifier: Apache-2.0
"""The comparison tool's arithmetic: timing summaries, the paired speed-up and the bound."""

import pytest
import torch
from torch import nn

from examples.stf.tools import compare_official as tool


class _Codec(nn.Module):
    """Stands in for a codec: a conv forward, trivial compress/decompress."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.calls: list[str] = []

    def forward(self, x):
        self.calls.append("forward")
        return torch.relu(self.conv(x))

    def compress(self, x):
        self.calls.append("compress")
        return {"strings": [[b"y"], [b"z"]], "shape": tuple(x.shape[-2:])}

    def decompress(self, strings, shape):
        self.calls.append("decompress")
        return {"x_hat": torch.zeros(1, 3, *shape)}


def test_time_codecs_keeps_every_sample_and_the_paired_ratio_is_a_median_of_rounds(monkeypatch):
    # official rounds take 2, 4, 6 s and ours 1, 1, 4 s: per-round ratios 2, 4, 1.5
    per_round = {"official": [2.0, 4.0, 6.0], "ours": [1.0, 1.0, 4.0]}
    models = {"official": _Codec().eval(), "ours": _Codec().eval()}
    timed = {name: 0 for name in models}
    first = []  # which model each timed round of each step started with

    def fake_timed(fn):
        before = {name: len(m.calls) for name, m in models.items()}
        fn()
        (name,) = [n for n, m in models.items() if len(m.calls) > before[n]]
        if timed["official"] == timed["ours"]:
            first.append(name)
        timed[name] += 1
        return per_round[name][(timed[name] - 1) // 3]  # three steps per round

    monkeypatch.setattr(tool, "_timed", fake_timed)
    with torch.no_grad():
        out = tool.time_codecs(models, torch.rand(1, 3, 8, 8), repeat=3)
    assert first == ["official"] * 3 + ["ours"] * 3 + ["official"] * 3  # turns at going first
    for step in ("forward", "compress", "decompress"):
        assert out["samples_s"]["official"][step] == [2.0, 4.0, 6.0]
        assert out["samples_s"]["ours"][step] == [1.0, 1.0, 4.0]
        assert out["speedup_median"][step] == pytest.approx(4.0 / 1.0)
        assert out["speedup_best"][step] == pytest.approx(2.0 / 1.0)
        assert out["speedup_paired"][step] == pytest.approx(2.0)  # median of 2, 4, 1.5
        assert out["meets_targets"][step] is True


def test_bound_arithmetic():
    bound = tool.bound(dense_share=0.5, ours_s=4.0, official_s=6.0, target=1.5)
    assert bound["dense_s"] == pytest.approx(2.0)
    assert bound["max_speedup"] == pytest.approx(3.0)
    assert bound["rest_s"] == pytest.approx(2.0)
    assert bound["rest_budget_s"] == pytest.approx(6.0 / 1.5 - 2.0)
    out_of_reach = tool.bound(dense_share=0.9, ours_s=4.0, official_s=5.0, target=1.5)
    assert out_of_reach["rest_budget_s"] < 0 and out_of_reach["max_speedup"] < 1.5


def test_profile_counts_the_convolution_as_dense_work():
    model = _Codec().eval()
    with torch.no_grad():
        top, dense = tool._profile(lambda: model(torch.rand(1, 3, 64, 64)), rows=3)
    assert len(top) == 3 and all(row["self_cpu_s"] >= 0 for row in top)
    assert 0.0 < dense <= 1.0
    assert any(row["op"] in tool.DENSE_OPS for row in top)
