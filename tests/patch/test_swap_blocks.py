# SPDX-License-Identifier: Apache-2.0
"""Swapped blocks in the main environment (timm): compile and export, and what the report says
about window-level swaps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from winattn import patch_model
from winattn.functional import padded_size, shifted_window_mask, window_partition, window_reverse

swin = pytest.importorskip("timm.models.swin_transformer")


def _swapped_timm_block() -> nn.Module:
    torch.manual_seed(0)
    block = swin.SwinTransformerBlock(
        dim=16, input_resolution=(8, 8), num_heads=2, window_size=4, shift_size=2, dynamic_mask=True
    )
    return patch_model(nn.Sequential(block)).eval()


def test_swapped_block_compiles_without_graph_breaks():
    model = _swapped_timm_block()
    x = torch.randn(1, 8, 8, 16)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=0)


def test_swapped_block_exports():
    model = _swapped_timm_block()
    x = torch.randn(1, 8, 8, 16)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x), atol=1e-5, rtol=0)


class UnknownShiftedHost(nn.Module):
    """A block of no known family: pads, rolls and masks, then calls `attn(windows, mask)`."""

    def __init__(self, dim: int, window_size: int, shift_size: int) -> None:
        super().__init__()
        self.window_size, self.shift_size = window_size, shift_size
        self.attn = swin.WindowAttention(dim, num_heads=2, window_size=window_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h, w, c = x.shape
        ws, s = self.window_size, self.shift_size
        hp, wp = padded_size((h, w), ws)
        x = torch.roll(F.pad(x, (0, 0, 0, wp - w, 0, hp - h)), (-s, -s), dims=(1, 2))  # (B, Hp, Wp, C)
        windows = window_partition(x, ws).flatten(1, 2)  # (B*nW, N, C)
        out = self.attn(windows, mask=shifted_window_mask((hp, wp), ws, s)).view(-1, ws, ws, c)
        return torch.roll(window_reverse(out, ws, hp, wp), (s, s), dims=(1, 2))[:, :h, :w]


def test_attention_only_host_block_is_swapped_whole_with_its_real_shift():
    model = patch_model(nn.Sequential(UnknownShiftedHost(16, 4, 2), UnknownShiftedHost(16, 4, 0)))
    entries = model.winattn_report.entries
    assert [(e.path, e.level, e.shift_size) for e in entries] == [("0", "block", (2, 2)), ("1", "block", (0, 0))]
