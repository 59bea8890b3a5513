# SPDX-License-Identifier: Apache-2.0
"""What users of a host model keep after a swap: concurrent calls, the host's methods, forward
hooks, later swaps next to winattn modules, and notes that name attention classes."""

from __future__ import annotations

import gc
import threading

import pytest
import torch
from torch import nn

import winattn.patch
from tests.patch.standins import CausalAttentionModule
from winattn import patch_model
from winattn.modules import WindowAttentionBlock
from winattn.patch import _LOCKS, _lock_of
from winattn.patch.hosts.timm import SwappedTimmSwinBlock
from winattn.patch.swap import plan_swap

swin = pytest.importorskip("timm.models.swin_transformer")


def _timm(size: tuple[int, int] = (8, 8)) -> nn.Sequential:
    torch.manual_seed(0)
    blocks = [swin.SwinTransformerBlock(16, size, num_heads=2, window_size=4, shift_size=s) for s in (0, 2)]
    for block in blocks:
        nn.init.normal_(block.attn.relative_position_bias_table, std=0.5)
    return nn.Sequential(*blocks).eval()


def test_two_threads_patching_one_model_plan_it_once(monkeypatch):
    model = _timm()
    overlap, planned, errors = threading.Barrier(2, timeout=1.0), [], []

    def slow_plan_swap(plan, m, opts):
        planned.append(threading.current_thread().name)
        try:
            overlap.wait()  # without the lock, both threads are planning here at once
        except threading.BrokenBarrierError:
            pass  # with it, the other thread waits outside and this times out
        return plan_swap(plan, m, opts)

    monkeypatch.setattr(winattn.patch, "plan_swap", slow_plan_swap)

    def patch() -> None:
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
    assert len(planned) == 1
    assert all(isinstance(block, SwappedTimmSwinBlock) for block in model)
    report = model.winattn_report
    assert [e.path for e in report.entries] == ["0", "1"]
    assert any(note.startswith("already patched") for note in report.notes)


class _Unhashable(nn.Sequential):
    def __eq__(self, other: object) -> bool:  # defining __eq__ alone makes instances unhashable
        return self is other


class _EqualByValue(nn.Sequential):
    def __eq__(self, other: object) -> bool:
        return isinstance(other, _EqualByValue)

    def __hash__(self) -> int:
        return 0


def test_model_that_is_not_hashable_gets_a_lock_and_a_clear_error():
    model = _Unhashable(*_timm())
    assert isinstance(_lock_of(model), type(threading.Lock()))
    with pytest.raises(TypeError, match=r"defines __eq__ without __hash__.*__hash__ = nn.Module.__hash__"):
        patch_model(model)
    assert not hasattr(model, "winattn_report")


def test_models_that_compare_equal_get_a_lock_each():
    assert _lock_of(_EqualByValue(*_timm())) is not _lock_of(_EqualByValue(*_timm()))


def test_a_models_lock_goes_with_the_model():
    model = _timm()
    key = id(model)
    _lock_of(model)
    del model
    gc.collect()
    assert key not in _LOCKS


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
