# SPDX-License-Identifier: Apache-2.0
"""The probe that checks every swap: it copies only the host module (never what the model's
hooks refer to), and its verdict is what decides whether a block is swapped."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from tests.patch.standins import RollThenPadBlock, SwinTransformerBlock
from winattn import patch_model
from winattn.patch import swap
from winattn.patch.hosts.swin_block import SwappedSwinBlock, SwinBlock
from winattn.patch.probe import ATOL, probe_swap


def _charm_like() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*(SwinTransformerBlock(16, (10, 13), 2, window_size=4, shift_size=s) for s in (0, 2))).eval()


class _LockedHook:
    """A forward hook holding a lock, as a thread-safe recorder does (a lock cannot be deep-copied)."""

    def __init__(self) -> None:
        self.lock, self.calls = threading.Lock(), 0

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        with self.lock:
            self.calls += 1


class _CountedPayload:
    """Stands for a large part of a model; counts how often it is deep-copied."""

    copies = 0

    def __deepcopy__(self, memo: dict) -> _CountedPayload:
        type(self).copies += 1
        return _CountedPayload()


class _ModelWithHookMethod(nn.Sequential):
    def __init__(self, *blocks: nn.Module) -> None:
        super().__init__(*blocks)
        self.payload = _CountedPayload()
        for block in blocks:
            block.attn.register_forward_hook(self.record)

    def record(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        pass


def test_block_whose_attention_has_a_hook_holding_a_lock_is_still_swapped():
    model = _charm_like()
    model[0].attn.register_forward_hook(_LockedHook())
    patch_model(model)
    assert all(isinstance(block, SwappedSwinBlock) for block in model)


def test_probe_does_not_copy_the_model_a_hook_method_belongs_to():
    model = _ModelWithHookMethod(*_charm_like())
    _CountedPayload.copies = 0
    patch_model(model)
    assert _CountedPayload.copies == 0
    assert [e.path for e in model.winattn_report.entries] == ["0", "1"]


def test_host_that_cannot_be_copied_is_named_as_such_in_the_note():
    model = _charm_like()
    model[0].lock = threading.Lock()
    notes = " ".join(patch_model(model).winattn_report.notes)
    assert "'0' (SwinTransformerBlock) not swapped at block level: the host could not be copied for the probe" in notes


def test_meta_model_is_swapped_unprobed_and_matches_once_loaded():
    models = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    real = models.swin_t(weights=None).eval()
    with torch.device("meta"):
        meta = models.swin_t(weights=None)
    patch_model(meta, mode="swap")
    entries = meta.winattn_report.entries
    assert len(entries) == 12 and all(e.level == "block" and "not probed: meta tensors" in e.note for e in entries)
    meta.to_empty(device="cpu").load_state_dict(real.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(meta.eval()(x), real(x), atol=1e-5, rtol=0)


def test_nothing_swapped_names_the_refused_hosts_without_calling_them_swappable():
    torch.manual_seed(0)
    model = nn.Sequential(RollThenPadBlock(16, (10, 13), 2, window_size=4, shift_size=2)).eval()
    with pytest.raises(ValueError, match="found nothing it could patch") as info:
        patch_model(model, mode="swap")
    message = str(info.value)
    assert "1 module(s) of a known host family, none of which could be swapped: '0' (RollThenPadBlock)" in message
    assert "swappable module" not in message


def test_swap_with_large_outputs_passes_the_relative_bound():
    swin = pytest.importorskip("torchvision.models.swin_transformer")
    torch.manual_seed(0)
    block = swin.SwinTransformerBlockV2(dim=512, num_heads=16, window_size=[8, 8], shift_size=[4, 4]).eval()
    for norm in (block.norm1, block.norm2):
        nn.init.constant_(norm.weight, 4.0)
    model = patch_model(nn.Sequential(block), mode="swap")
    assert [e.path for e in model.winattn_report.entries] == ["0"]


def test_block_that_computes_something_else_is_refused_by_far():
    torch.manual_seed(0)
    block = RollThenPadBlock(16, (10, 13), 2, window_size=4, shift_size=2).eval()
    result = probe_swap(SwinBlock(), block, lambda m: SwinBlock().build(m, "0", None, None).module, 16, (4, 4))
    assert not result.ok and result.max_delta > 100 * ATOL


def _four_blocks() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*(SwinTransformerBlock(16, (10, 13), 2, window_size=4, shift_size=s) for s in (0, 2, 0, 2))).eval()


@pytest.fixture
def probed(monkeypatch: pytest.MonkeyPatch) -> list[nn.Module]:
    """The host modules the probe runs, in order."""
    seen: list[nn.Module] = []

    def counting_probe(host, m, *args):
        seen.append(m)
        return probe_swap(host, m, *args)

    monkeypatch.setattr(swap, "probe_swap", counting_probe)
    return seen


def test_blocks_of_the_same_structure_are_probed_once(probed):
    model = _four_blocks()
    blocks = list(model)
    patch_model(model)
    assert probed == blocks[:2]
    notes = [e.note for e in model.winattn_report.entries]
    assert "'0' (same structure; probed on that module's weights)" in notes[2]
    assert "'1' (same structure; probed on that module's weights)" in notes[3]


def test_block_with_another_norm_is_probed_on_its_own(probed):
    model = _four_blocks()
    model[2].norm1.eps = 1e-3
    patch_model(model)
    assert len(probed) == 3


class _CountingMlp(nn.Module):
    calls = 0

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        self.inner = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        type(self).calls += 1
        return self.inner(x)


def test_probe_neither_copies_nor_runs_a_reused_mlp():
    model = _charm_like()
    for block in model:
        block.mlp = _CountingMlp(block.mlp)
    _CountingMlp.calls = 0
    patch_model(model)
    assert _CountingMlp.calls == 0
    assert [e.path for e in model.winattn_report.entries] == ["0", "1"]
