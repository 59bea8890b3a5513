# SPDX-License-Identifier: Apache-2.0
"""Swin-v1 blocks of no known family swapped whole, by structure, and only where the probe
confirms the outputs; what does not fit is left as it is and named in the report."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.patch.standins import (
    CausalAttentionModule,
    RollThenPadBlock,
    SwinTransformerBlock,
    TicLike,
)
from winattn import patch_model
from winattn.patch import swap
from winattn.patch.hosts import SwinV1Attention
from winattn.patch.hosts.swin_block import SwappedSwinBlock, SwinBlock
from winattn.patch.probe import probe_swap

ATOL = 1e-5


def _charm_like(cls: type = SwinTransformerBlock, size: tuple[int, int] = (10, 13)) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*(cls(16, size, 2, window_size=4, shift_size=s) for s in (0, 2))).eval()


def test_charm_like_blocks_are_swapped_whole_with_the_same_outputs():
    model = _charm_like()
    x = torch.randn(2, 10 * 13, 16)
    with torch.no_grad():
        expected = model(x)
        patch_model(model)
        actual = model(x)
    assert all(isinstance(block, SwappedSwinBlock) for block in model)
    assert [(e.level, e.shift_size) for e in model.winattn_report.entries] == [("block", (0, 0)), ("block", (2, 2))]
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


def test_report_records_the_probes_largest_difference():
    entries = patch_model(_charm_like()).winattn_report.entries
    assert all(e.max_delta is not None and e.max_delta <= ATOL for e in entries)


def test_block_that_rolls_before_padding_fails_the_probe_and_is_left_as_it_is():
    model = patch_model(_charm_like(RollThenPadBlock))
    report = model.winattn_report
    assert type(model[1]) is RollThenPadBlock
    assert "1" not in [e.path for e in report.entries]
    assert any("'1' (RollThenPadBlock) not swapped at block level" in n and "differs by" in n for n in report.notes)


def test_probe_leaves_the_model_unchanged():
    model = _charm_like().train()
    model(torch.randn(1, 10 * 13, 16)).sum().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    fired = []
    model[0].register_forward_hook(lambda *args: fired.append("block"))
    model[0].register_forward_pre_hook(lambda *args: fired.append("pre"))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    patch_model(model)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(m.training for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(p.grad, grads[k]) for k, p in model.named_parameters())
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert fired == []
    model(torch.randn(1, 10 * 13, 16))
    assert fired == ["pre", "block"]


def test_tic_like_model_swaps_its_swin_blocks_and_leaves_its_causal_attention():
    model = TicLike().eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
        patch_model(model)
        actual = model(x)
    assert [e.path for e in model.winattn_report.entries] == ["g_a.1.blocks.0", "g_a.1.blocks.1"]
    assert type(model.context_prediction) is CausalAttentionModule
    for a, b in zip(actual, expected):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_tic_like_note_names_the_real_projection_mismatch():
    notes = " ".join(patch_model(TicLike()).winattn_report.notes)
    assert "'context_prediction' (CausalAttentionModule): proj maps 16 -> 32 channels (winattn needs 16 -> 16)" in notes
    assert "qkv maps" not in notes


def test_probe_refuses_a_causal_attention_whose_projections_fit():
    causal = CausalAttentionModule(16, 16)

    def build(m: nn.Module) -> nn.Module:
        return SwinV1Attention().build(m, "context_prediction", None, None).module

    result = probe_swap(SwinV1Attention(), causal, build, 16, (5, 5))
    assert not result.ok and "does not run as a window attention" in result.problem


def test_auto_refuses_a_model_whose_only_attention_cannot_be_swapped():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), CausalAttentionModule(16, 32))
    with pytest.raises(ValueError, match=r"cannot swap.*proj maps 16 -> 32"):
        patch_model(model)


def test_window_level_fallback_is_not_taken_where_it_would_be_slower():
    notes = " ".join(patch_model(_charm_like(RollThenPadBlock)).winattn_report.notes)
    assert "window-level swap would be slower than its own attention on the CPU" in notes


def _one_head(shift: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return SwinTransformerBlock(16, (10, 13), 1, window_size=4, shift_size=shift).eval()


def test_probe_reports_a_bit_exact_swap_as_zero_difference():
    def build(m: nn.Module) -> nn.Module:
        return SwinBlock().build(m, "0", None, None).module

    result = probe_swap(SwinBlock(), _one_head(), build, 16, (4, 4))
    assert result.ok and result.max_delta == 0.0


def test_swap_reported_bit_exact_gives_equal_outputs_on_other_inputs():
    model = nn.Sequential(_one_head(0), _one_head(2))
    x = torch.randn(3, 10 * 13, 16, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = model(x)
        entries = patch_model(model).winattn_report.entries
        actual = model(x)
    assert [e.bit_exact for e in entries] == [True, True]
    assert all("bit-exact on the probe" in e.note for e in entries)
    assert torch.equal(actual, expected)


def test_block_that_fails_the_probe_falls_back_to_window_level_where_that_pays(monkeypatch):
    monkeypatch.setattr(swap, "_window_level_pays", lambda attn: True)  # as on CUDA
    model = _charm_like(RollThenPadBlock)
    x = torch.randn(2, 10 * 13, 16)
    with torch.no_grad():
        expected = model(x)
        patch_model(model)
        actual = model(x)
    entry = model.winattn_report.entries[-1]
    assert (entry.path, entry.level, entry.shift_size) == ("1.attn", "window", (2, 2))
    assert entry.note.startswith("Swin-v1 window attention")
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)
