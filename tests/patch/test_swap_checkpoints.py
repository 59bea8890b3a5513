# SPDX-License-Identifier: Apache-2.0
"""Checkpoints load both ways for every host family: the host's state dict strictly into the
swapped model, and the swapped model's into a fresh host."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from tests.patch.standins import StfBasicLayer, SwinTransformerBlock, TicLike
from tests.test_patch_swap import _stf_model
from winattn import patch_model

timm_swin = pytest.importorskip("timm.models.swin_transformer")
tv_swin = pytest.importorskip("torchvision.models.swin_transformer")


def _timm() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        *(timm_swin.SwinTransformerBlock(16, (8, 8), num_heads=2, window_size=4, shift_size=s) for s in (0, 2))
    )


def _torchvision() -> nn.Module:
    # swin_t's layout: SwinTransformerBlock(norm1, attn=ShiftedWindowAttention, ...), a flat index
    torch.manual_seed(0)
    return nn.Sequential(
        *(tv_swin.SwinTransformerBlock(16, 2, window_size=[7, 7], shift_size=[s, s]) for s in (0, 3))
    )


def _charm() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*(SwinTransformerBlock(16, (10, 13), 2, 4, s) for s in (0, 2)))


def _stf_official() -> nn.Module:
    torch.manual_seed(0)
    return StfBasicLayer(16, 2, 4)


def _tic() -> nn.Module:
    torch.manual_seed(0)
    return TicLike()


HOSTS: dict[str, Callable[[], nn.Module]] = {
    "timm": _timm,
    "torchvision": _torchvision,
    "stf-style attention": _stf_model,
    "stf": _stf_official,
    "charm": _charm,
    "tic": _tic,
}


@pytest.mark.parametrize("family", list(HOSTS))
def test_host_checkpoint_loads_strictly_into_swapped_model(family):
    host, swapped = HOSTS[family](), patch_model(HOSTS[family]())
    assert swapped.winattn_report.entries
    swapped.load_state_dict(host.state_dict(), strict=True)


@pytest.mark.parametrize("family", list(HOSTS))
def test_swapped_checkpoint_loads_strictly_into_fresh_host(family):
    swapped = patch_model(HOSTS[family]())
    HOSTS[family]().load_state_dict(swapped.state_dict(), strict=True)


def test_torchvision_index_keeps_its_flat_layout():
    swapped = patch_model(_torchvision())
    assert swapped.state_dict()["1.attn.relative_position_index"].shape == (49 * 49,)
