# SPDX-License-Identifier: Apache-2.0
"""Where the probe finds a swap bit-exact, the swapped model computes exactly the host's values
on other inputs too (so an entropy coder writes the same bytes); where it does not, the report
says so."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.patch.standins import StfBasicLayer
from winattn import patch_model
from winattn.patch import PatchEntry, PatchReport
from winattn.patch.hosts.stf import SwappedStfSwinBlock


def _stf_layer(dim: int, heads: int) -> nn.Module:
    torch.manual_seed(0)
    layer = StfBasicLayer(dim, heads, 4).eval()
    for block in layer.blocks:
        nn.init.normal_(block.attn.relative_position_bias_table, std=0.5)
    return layer


@pytest.mark.parametrize("seed", range(4))
def test_bit_exact_stf_swap_gives_identical_outputs_on_other_images(seed):
    original, swapped = _stf_layer(32, 2), patch_model(_stf_layer(32, 2))
    assert all(isinstance(b, SwappedStfSwinBlock) for b in swapped.blocks)
    assert all(e.bit_exact for e in swapped.winattn_report.entries)
    g = torch.Generator().manual_seed(seed)
    h, w = ((13, 18), (16, 16), (9, 23), (20, 12))[seed]
    x = torch.randn(2, h * w, 32, generator=g) * (1 + seed)
    with torch.no_grad():
        assert torch.equal(swapped(x, h, w), original(x, h, w))


def test_report_shows_the_difference_of_a_swap_that_is_not_bit_exact():
    entry = PatchEntry("0", "swap", 16, (4, 4), (2, 2), 0, max_delta=2.4e-7)
    report = PatchReport("auto", "identity", [entry])
    assert not entry.bit_exact and "2e-07" in str(report)
