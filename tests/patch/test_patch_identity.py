# SPDX-License-Identifier: Apache-2.0
"""At init="identity", what patch_model adds or replaces starts as an exact identity, and the
report and auto mode say what they found."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from winattn import patch_model
from winattn.modules import GatedWindowAttentionBlock

layers = pytest.importorskip("compressai.layers")


def test_closed_gate_is_an_exact_identity_where_the_branch_overflows():
    torch.manual_seed(0)
    block = GatedWindowAttentionBlock(16, num_heads=4, window_size=4, shift_size=2)
    x = torch.full((1, 16, 8, 8), 3e38)  # the convolutions overflow to inf
    x[..., ::2, :] = -3e38
    out = block(x)
    assert torch.equal(out, x)


def test_closed_gate_gets_a_finite_gradient_where_the_branch_overflows():
    block = GatedWindowAttentionBlock(16, num_heads=4, window_size=4, shift_size=2)
    x = torch.full((1, 16, 8, 8), 3e38)
    block(x).sum().backward()
    assert torch.isfinite(block.gate.grad).all()


def _replaced(channels: int = 32) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    original = layers.AttentionBlock(channels)
    model = patch_model(nn.Sequential(original), mode="replace", num_heads=4)
    return original, model[0]


def test_replaced_block_attention_branch_is_an_exact_identity():
    _, block = _replaced()
    x = torch.randn(2, 32, 11, 13)
    assert torch.equal(block.conv_b[0](x), x)


def test_replaced_block_zeroes_the_output_projection_bias_too():
    _, block = _replaced()
    assert torch.count_nonzero(block.attn.proj.bias) == 0
    assert torch.count_nonzero(block.attn.proj.weight) == 0


def test_replaced_block_keeps_every_attention_block_convolution():
    original, block = _replaced()
    old = original.state_dict()
    for key, value in block.state_dict().items():
        if key.startswith("conv_b.0."):
            continue
        if key.startswith("conv_b."):
            index, rest = key[len("conv_b.") :].split(".", 1)
            key = f"conv_b.{int(index) - 1}.{rest}"
        assert torch.equal(value, old[key]), key


def test_auto_refuses_to_insert_next_to_attention_it_cannot_swap():
    class WithSelfAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.g_a = nn.Sequential(*(nn.Conv2d(16 if i else 3, 16, 3, 2, 1) for i in range(4)))
            self.context = nn.MultiheadAttention(16, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.g_a(x)

    model = WithSelfAttention()
    keys = list(model.state_dict())
    with pytest.raises(ValueError, match=r"context \(MultiheadAttention\).*mode='insert'"):
        patch_model(model, num_heads=4)
    assert list(model.state_dict()) == keys
    patch_model(model, mode="insert", num_heads=4)
    assert model.winattn_report.actions == ["insert"]
