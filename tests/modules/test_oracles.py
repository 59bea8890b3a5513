# SPDX-License-Identifier: Apache-2.0
"""winattn against independent implementations, with copied weights: timm 1.0's Swin
(`WindowAttention`, `SwinTransformerBlock`) and torchvision's `shifted_window_attention`.

Where they differ from winattn by design, the tests stay on the inputs where the semantics
coincide:

* timm rolls the map and then pads it, winattn (like STF and torchvision) pads and then rolls;
  the two agree when no padding is needed, or when there is no shift.
* torchvision turns the shift off on an axis where one window covers the whole padded map;
  winattn (like Swin and STF) keeps it, so on such an axis winattn is given no shift.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.strategies import randomise
from winattn import SwinBlock, WindowAttention
from winattn.functional import padded_size, relative_position_index, shifted_window_mask

ATOL = 1e-5


@pytest.fixture(scope="module")
def timm_swin():
    return pytest.importorskip("timm.models.swin_transformer")


@pytest.fixture(scope="module")
def tv_swin():
    return pytest.importorskip("torchvision.models.swin_transformer")


def _timm_block(timm_swin, dim, heads, window, shift, size, **kwargs):
    # always_partition keeps the window and shift asked for even when the map is no larger
    # than one window (as winattn does); dynamic_mask builds the mask from the padded input.
    block = timm_swin.SwinTransformerBlock(
        dim,
        input_resolution=size,
        num_heads=heads,
        window_size=window,
        shift_size=shift,
        always_partition=True,
        dynamic_mask=True,
        **kwargs,
    )
    return randomise(block).eval()


# --- geometry ---------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [(7, 7), (4, 6), (1, 3), (8, 8)])
def test_relative_position_index_matches_timm(timm_swin, window):
    expected = timm_swin.get_relative_position_index(*window)
    assert torch.equal(relative_position_index(window), expected)


@pytest.mark.parametrize(
    ("padded", "window", "shift"),
    [((14, 21), (7, 7), (3, 3)), ((8, 8), (8, 8), (4, 4)), ((12, 12), (4, 6), (2, 3)), ((8, 15), (4, 5), (0, 2))],
)
def test_shifted_window_mask_matches_timm(timm_swin, padded, window, shift):
    block = timm_swin.SwinTransformerBlock(
        8, input_resolution=padded, num_heads=2, window_size=window, shift_size=shift, always_partition=True
    )
    expected = block.get_attn_mask(device=torch.device("cpu"), dtype=torch.float32)
    torch.testing.assert_close(shifted_window_mask(padded, window, shift), expected, atol=0, rtol=0)


# --- timm -------------------------------------------------------------------------------------

# (dim, heads, window, shift, (H, W)): maps are multiples of the window when shifted.
TIMM_CASES = [
    (32, 4, (7, 7), (0, 0), (14, 21)),
    (32, 4, (7, 7), (3, 3), (14, 21)),
    (24, 3, (4, 6), (2, 3), (8, 12)),
    (16, 2, (8, 8), (4, 4), (8, 8)),
    (15, 3, (4, 4), (2, 2), (16, 8)),
    (16, 2, (4, 4), (0, 0), (10, 7)),
    (16, 2, (7, 5), (0, 0), (3, 12)),
]


@pytest.mark.parametrize(("dim", "heads", "window", "shift", "size"), TIMM_CASES)
def test_window_attention_matches_timm_swin_attention_path(timm_swin, dim, heads, window, shift, size):
    # timm's block does the partition, shift and mask around its WindowAttention in `_attn`.
    block = _timm_block(timm_swin, dim, heads, window, shift, size)
    ours = WindowAttention(dim, heads, window, shift).eval()
    ours.load_state_dict(block.attn.state_dict(), strict=True)
    x = torch.randn(2, *size, dim)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), block._attn(x), atol=ATOL, rtol=0)


def test_window_attention_matches_timm_window_attention_on_windows(timm_swin):
    timm_attn = randomise(timm_swin.WindowAttention(24, num_heads=3, window_size=(4, 6))).eval()
    ours = WindowAttention(24, 3, (4, 6)).eval()
    ours.load_state_dict(timm_attn.state_dict(), strict=True)
    x = torch.randn(2, 8, 12, 24)
    windows = timm_swin.window_partition(x, (4, 6)).reshape(-1, 24, 24)  # (B*nW, N, C)
    expected = timm_swin.window_reverse(timm_attn(windows).reshape(-1, 4, 6, 24), (4, 6), 8, 12)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize(("dim", "heads", "window", "shift", "size"), TIMM_CASES)
def test_swin_block_matches_timm_swin_transformer_block(timm_swin, dim, heads, window, shift, size):
    block = _timm_block(timm_swin, dim, heads, window, shift, size, mlp_ratio=2.0)
    ours = SwinBlock(dim, heads, window, shift, mlp_ratio=2.0).eval()
    ours.load_state_dict(block.state_dict(), strict=True)
    x = torch.randn(2, *size, dim)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), block(x), atol=ATOL, rtol=0)


def test_swin_block_gradients_match_timm(timm_swin):
    block = _timm_block(timm_swin, 16, 2, (4, 4), (2, 2), (8, 12))
    ours = SwinBlock(16, 2, 4, 2)
    ours.load_state_dict(block.state_dict(), strict=True)
    x = torch.randn(1, 8, 12, 16)
    block(x).square().sum().backward()
    ours(x).square().sum().backward()
    theirs = dict(block.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, theirs[name].grad, atol=1e-4, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


# --- torchvision ----------------------------------------------------------------------------

# (dim, heads, window, shift, (H, W)): shifted and padded maps, more than one window per
# shifted axis (see the module docstring).
TV_CASES = [
    (16, 2, (4, 4), (2, 2), (10, 13)),
    (32, 4, (7, 7), (3, 3), (9, 15)),
    (24, 3, (4, 6), (2, 3), (5, 7)),
    (15, 5, (3, 5), (1, 2), (7, 6)),
    (16, 2, (4, 4), (0, 0), (6, 5)),
]


def _torchvision_attention(tv_swin, dim, heads, window, shift):
    module = tv_swin.ShiftedWindowAttention(dim, list(window), list(shift), heads)
    return randomise(module).eval()


def _load_without_index(ours: nn.Module, theirs: nn.Module) -> None:
    state = {k: v for k, v in theirs.state_dict().items() if k != "relative_position_index"}
    ours.load_state_dict(state, strict=True)


@pytest.mark.parametrize(("dim", "heads", "window", "shift", "size"), TV_CASES)
def test_window_attention_matches_torchvision(tv_swin, dim, heads, window, shift, size):
    theirs = _torchvision_attention(tv_swin, dim, heads, window, shift)
    ours = WindowAttention(dim, heads, window, shift).eval()
    _load_without_index(ours, theirs)
    x = torch.randn(2, *size, dim)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=ATOL, rtol=0)


def test_window_attention_matches_torchvision_where_one_window_covers_an_axis(tv_swin):
    # H = 3 pads to one window of 4 rows: torchvision drops the row shift there, so winattn is
    # asked for a shift on the columns only.
    size, window = (3, 10), (4, 4)
    assert padded_size(size, window)[0] == window[0]
    theirs = _torchvision_attention(tv_swin, 16, 2, window, (2, 2))
    ours = WindowAttention(16, 2, window, (0, 2)).eval()
    _load_without_index(ours, theirs)
    x = torch.randn(1, *size, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=ATOL, rtol=0)
