# SPDX-License-Identifier: Apache-2.0
"""What users of a host model keep after a swap: concurrent calls, the host's methods, forward
hooks, later swaps next to winattn modules, and notes that name attention classes."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from tests.patch.standins import CausalAttentionModule
from winattn import patch_model
from winattn.modules import WindowAttentionBlock
from winattn.patch.hosts.timm import SwappedTimmSwinBlock

swin = pytest.importorskip("timm.models.swin_transformer")


def _timm(size: tuple[int, int] = (8, 8)) -> nn.Sequential:
    torch.manual_seed(0)
    blocks = [swin.SwinTransformerBlock(16, size, num_heads=2, window_size=4, shift_size=s) for s in (0, 2)]
    for block in blocks:
        nn.init.normal_(block.attn.relative_position_bias_table, std=0.5)
    return nn.Sequential(*blocks).eval()


def test_two_threads_patching_one_model_leave_it_fully_patched_once():
    model = _timm()
    barrier, errors = threading.Barrier(2), []

    def patch() -> None:
        barrier.wait()
        try:
            patch_model(model)
        except Exception as exc:  # noqa: BLE001 (collected for the assertion)
            errors.append(exc)

    threads = [threading.Thread(target=patch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(isinstance(block, SwappedTimmSwinBlock) for block in model)
    assert [e.path for e in model.winattn_report.entries] == ["0", "1"]


def test_timm_set_input_size_works_on_swapped_block():
    original, swapped = _timm(), patch_model(_timm())
    for model in (original, swapped):
        model[1].set_input_size((12, 12), (4, 4))
    x = torch.randn(1, 12, 12, 16)
    with torch.no_grad():
        torch.testing.assert_close(swapped(x), original(x), atol=1e-5, rtol=0)


def test_forward_hook_on_host_block_fires_after_swap():
    model, calls = _timm(), []
    model[1].register_forward_hook(lambda m, args, out: calls.append(out.shape))
    patch_model(model)
    model(torch.randn(1, 8, 8, 16))
    assert calls == [torch.Size([1, 8, 8, 16])]


def test_hook_handle_taken_before_swap_still_removes_the_hook():
    model, calls = _timm(), []
    handle = model[1].register_forward_pre_hook(lambda m, args: calls.append(1))
    patch_model(model)
    handle.remove()
    model(torch.randn(1, 8, 8, 16))
    assert calls == []


def test_report_warns_that_hooks_on_a_swapped_blocks_attention_no_longer_fire():
    model = _timm()
    model[1].attn.register_forward_hook(lambda m, args, out: None)
    notes = patch_model(model).winattn_report.notes
    assert any("hooks on '1.attn' no longer fire" in n for n in notes)


def test_timm_block_next_to_a_winattn_block_is_swapped():
    model = nn.Sequential(WindowAttentionBlock(16, 2, 4, 2), _timm()[0])
    patch_model(model)
    assert isinstance(model[1], SwappedTimmSwinBlock)
    assert [e.path for e in model.winattn_report.entries] == ["1"]


def test_fully_patched_model_is_a_noop():
    model = patch_model(_timm())
    patch_model(model)
    assert "already patched" in str(model.winattn_report)
    assert len(model.winattn_report.entries) == 2


class AttentionLayer(nn.Module):
    """An attention of no known family (its own softmax over all positions)."""

    def __init__(self) -> None:
        super().__init__()
        self.softmax = nn.Softmax(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.softmax(x) * x


def test_refusal_names_the_attention_class_inside_a_container():
    model = nn.Module()
    model.attn = nn.ModuleList([AttentionLayer(), AttentionLayer()])
    with pytest.raises(ValueError, match=r"attn\.0 \(AttentionLayer\); attn\.1 \(AttentionLayer\)"):
        patch_model(model)


def test_refusal_of_causal_attention_names_its_class():
    model = nn.Module()
    model.context = nn.ModuleList([CausalAttentionModule(16, 32)])
    with pytest.raises(ValueError, match=r"'context\.0' \(CausalAttentionModule\)"):
        patch_model(model)
