# SPDX-License-Identifier: Apache-2.0
"""Swap: timm's, torchvision's and STF-style Swin-v1 window attention replaced by winattn's,
with the weights kept and the outputs unchanged (fp32, atol 1e-5)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from winattn import patch_model
from winattn.functional import padded_size, shifted_window_mask, window_partition, window_reverse
from winattn.patch.hosts import MapLevelAttention
from winattn.patch.hosts.timm import SwappedTimmSwinBlock

swin = pytest.importorskip("timm.models.swin_transformer")

ATOL = 1e-5


def _timm_blocks(size: tuple[int, int], dynamic_mask: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    blocks = nn.Sequential(
        *(
            swin.SwinTransformerBlock(
                dim=32,
                input_resolution=size,
                num_heads=4,
                window_size=7,
                shift_size=shift,
                always_partition=True,
                dynamic_mask=dynamic_mask,
            )
            for shift in (0, 3)
        )
    )
    for block in blocks:  # non-trivial bias tables
        nn.init.normal_(block.attn.relative_position_bias_table, std=0.5)
    return blocks.eval()


@pytest.mark.parametrize("size", [(14, 21), (13, 20)])
def test_swapped_timm_swin_blocks_match_timm(size):
    # (13, 20): timm 1.0 rolls and then pads; the swapped module keeps timm's own order
    model = _timm_blocks(size)
    x = torch.randn(2, *size, 32)
    with torch.no_grad():
        expected = model(x)
        patch_model(model)
        actual = model(x)
    assert isinstance(model[1], SwappedTimmSwinBlock)
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


def test_swapped_timm_block_keeps_parameters_and_keys():
    model = _timm_blocks((14, 14))
    params = {k: v for k, v in model.named_parameters()}
    patch_model(model)
    assert {k: v for k, v in model.named_parameters()} == params


def test_swapped_timm_block_backward_matches_timm():
    model = _timm_blocks((14, 14), dynamic_mask=True)
    x = torch.randn(1, 14, 14, 32)
    model(x).square().sum().backward()
    expected = model[1].attn.relative_position_bias_table.grad.clone()
    model.zero_grad()
    patch_model(model)
    model(x).square().sum().backward()
    torch.testing.assert_close(model[1].attn.relative_position_bias_table.grad, expected, atol=ATOL, rtol=0)


def test_swap_report_names_timm_class():
    model = patch_model(_timm_blocks((14, 14)))
    entry = model.winattn_report.entries[0]
    assert (entry.path, entry.action, entry.level, entry.window_size) == ("0", "swap", "block", (7, 7))
    assert entry.host == "timm.models.swin_transformer.SwinTransformerBlock"


def test_swap_with_other_window_size_raises():
    with pytest.raises(ValueError, match=r"window_size=\(8, 8\) does not fit '0.attn'"):
        patch_model(_timm_blocks((14, 14)), window_size=8)


def test_failed_swap_leaves_the_model_unchanged():
    model = _timm_blocks((14, 14))
    # The second block's window does not fit: the first must not have been swapped either.
    model[1].attn.window_size = (8, 8)
    with pytest.raises(ValueError, match="does not fit"):
        patch_model(model, window_size=7)
    assert all(type(block.attn) is swin.WindowAttention for block in model)
    assert not hasattr(model, "winattn_report")


tv_swin = pytest.importorskip("torchvision.models.swin_transformer")


@pytest.mark.parametrize("size", [(14, 14), (10, 17), (5, 30)])
def test_swapped_torchvision_attention_matches_torchvision(size):
    # (5, 30): the window covers the padded height, so torchvision turns that shift off
    torch.manual_seed(0)
    attn = tv_swin.ShiftedWindowAttention(32, [7, 7], [3, 3], num_heads=4).eval()
    nn.init.normal_(attn.relative_position_bias_table, std=0.5)
    model = nn.Sequential(attn)
    x = torch.randn(2, *size, 32)
    with torch.no_grad():
        expected = model(x)
        patch_model(model, mode="swap")
        actual = model(x)
    assert isinstance(model[0], MapLevelAttention)
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


class StfStyleAttention(swin.WindowAttention):
    """Window-level attention with STF's conventions: a persistent relative_position_index."""

    def __init__(self, dim: int, window_size: int, num_heads: int) -> None:
        super().__init__(dim, num_heads, window_size=window_size)
        index = self.relative_position_index
        del self.relative_position_index
        self.register_buffer("relative_position_index", index)  # persistent, as in STF


class StfStyleHost(nn.Module):
    """Pads, then rolls, partitions and masks, then calls `attn(windows, mask)`, as STF does."""

    def __init__(self, dim: int, window_size: int, shift_size: int, num_heads: int) -> None:
        super().__init__()
        self.window_size, self.shift_size = window_size, shift_size
        self.attn = StfStyleAttention(dim, window_size, num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        ws, s = self.window_size, self.shift_size
        hp, wp = padded_size((h, w), ws)
        x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h))  # (B, Hp, Wp, C)
        x = torch.roll(x, (-s, -s), dims=(1, 2))
        mask = shifted_window_mask((hp, wp), ws, s)  # (nW, N, N)
        windows = window_partition(x, ws).flatten(1, 2)  # (B*nW, N, C)
        out = self.attn(windows, mask=mask).view(-1, ws, ws, c)  # (B*nW, ws, ws, C)
        out = torch.roll(window_reverse(out, ws, hp, wp), (s, s), dims=(1, 2))
        return out[:, :h, :w]


def _stf_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(StfStyleHost(48, 8, 4, 8), StfStyleHost(48, 4, 2, 8)).eval()
    for host in model:
        nn.init.normal_(host.attn.relative_position_bias_table, std=0.5)
    return model


def test_swapped_stf_style_attention_matches_original():
    model = _stf_model()
    x = torch.randn(2, 19, 26, 48)
    with torch.no_grad():
        expected = model(x)
        patch_model(model)
        actual = model(x)
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


def test_stf_style_checkpoint_loads_strictly_into_swapped_model():
    state = _stf_model().state_dict()
    model = patch_model(_stf_model())
    model.load_state_dict(state, strict=True)
    assert "0.attn.relative_position_index" in state


def test_auto_prefers_swap_and_second_patch_is_noop():
    model = patch_model(_stf_model())
    assert model.winattn_report.actions == ["swap"]
    patch_model(model)
    assert "already patched" in str(model.winattn_report)


def test_swapped_stf_style_model_keeps_its_state_dict_keys():
    original = _stf_model()
    swapped = patch_model(_stf_model())
    assert list(swapped.state_dict()) == list(original.state_dict())
    original.load_state_dict(swapped.state_dict(), strict=True)
