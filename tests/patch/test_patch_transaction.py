# SPDX-License-Identifier: Apache-2.0
"""patch_model is a transaction: a call that raises leaves the model as it was, and a retry
with fixed arguments patches everything."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from winattn import patch_model

layers = pytest.importorskip("compressai.layers")


class TwoTransforms(nn.Module):
    """A codec-shaped model whose synthesis transform has other channels than its analysis."""

    def __init__(self, analysis: int = 16, synthesis: int = 12) -> None:
        super().__init__()
        self.g_a = nn.Sequential(
            nn.Conv2d(3, analysis, 3, 2, 1), *(nn.Conv2d(analysis, analysis, 3, 2, 1) for _ in range(3))
        )
        self.g_s = nn.Sequential(
            *(nn.ConvTranspose2d(synthesis, synthesis, 4, 2, 1) for _ in range(3)),
            nn.ConvTranspose2d(synthesis, 3, 4, 2, 1),
        )
        self.bridge = nn.Conv2d(analysis, synthesis, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.g_s(self.bridge(self.g_a(x)))


def _snapshot(model: nn.Module) -> tuple[list[str], list[nn.Module]]:
    return list(model.state_dict()), list(model.modules())


def test_failed_insert_leaves_every_transform_unchanged():
    model = TwoTransforms()
    before = _snapshot(model)
    with pytest.raises(ValueError, match="num_heads=8 does not fit the 12 channels at 'g_s"):
        patch_model(model, mode="insert", num_heads=8)
    assert _snapshot(model) == before
    assert not hasattr(model, "winattn_report")


def test_insert_retried_with_fitting_heads_patches_both_transforms():
    model = TwoTransforms()
    with pytest.raises(ValueError):
        patch_model(model, mode="insert", num_heads=8)
    patch_model(model, mode="insert", num_heads=4)
    paths = [e.path for e in model.winattn_report.entries]
    assert paths == ["g_a.winattn_stage2", "g_a.winattn_latent", "g_s.winattn_latent", "g_s.winattn_stage2"]


def test_failed_replace_leaves_earlier_attention_blocks_in_place():
    model = nn.Sequential(layers.AttentionBlock(16), layers.AttentionBlock(12))
    first = model[0]
    with pytest.raises(ValueError, match="at '1'"):
        patch_model(model, mode="replace", num_heads=8)
    assert model[0] is first and type(model[1]).__name__ == "AttentionBlock"


class IndexesItsSynthesis(TwoTransforms):
    """Reads the weights of its synthesis transform's first child (as SAAF's decoder indexes g_s)."""

    def __init__(self) -> None:
        super().__init__(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bridge(self.g_a(x))
        first = self.g_s[0]
        y = nn.functional.conv_transpose2d(y, first.weight, first.bias, stride=2, padding=1)
        for key in "123":
            y = self.g_s._modules[key](y)
        return y


class RunsChildrenByName(TwoTransforms):
    """Runs its transforms' original children by key, never the inserted ones."""

    def __init__(self) -> None:
        super().__init__(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for key in "0123":
            x = self.g_a._modules[key](x)
        x = self.bridge(x)
        for key in "0123":
            x = self.g_s._modules[key](x)
        return x


def test_insert_that_breaks_forward_is_rolled_back():
    model = IndexesItsSynthesis()
    before = _snapshot(model)
    with pytest.raises(ValueError, match="rolled back.*fails"):
        patch_model(model, mode="insert", num_heads=4)
    assert _snapshot(model) == before


def test_insert_whose_blocks_forward_never_calls_is_rolled_back():
    model = RunsChildrenByName()
    before = _snapshot(model)
    with pytest.raises(ValueError, match="never calls the inserted block"):
        patch_model(model, num_heads=4)
    assert _snapshot(model) == before


def test_data_parallel_wrapped_model_is_refused_with_the_fix():
    model = TwoTransforms(16, 16)
    wrapped = nn.DataParallel(model)
    before = _snapshot(model)
    with pytest.raises(TypeError, match="Patch before wrapping"):
        patch_model(wrapped, num_heads=4)
    assert _snapshot(model) == before
