# SPDX-License-Identifier: Apache-2.0
"""Swin-V2 hosts swapped whole: timm's `SwinTransformerV2Block` and torchvision's
`SwinTransformerBlockV2` give the host's outputs and gradients, keep its state-dict keys, load
its checkpoints strictly (and back), and compile without graph breaks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.strategies import randomise
from winattn import patch_model
from winattn.patch.hosts.swin_v2 import SwappedTimmSwinV2Block, SwappedTorchvisionSwinV2Block

timm = pytest.importorskip("timm")
timm_v2 = pytest.importorskip("timm.models.swin_transformer_v2")
tv_swin = pytest.importorskip("torchvision.models.swin_transformer")
torchvision = pytest.importorskip("torchvision")

ATOL = 1e-5


def _timm_block(size: tuple[int, int], shift: int, dynamic_mask: bool = False, seed: int = 0) -> nn.Module:
    block = timm_v2.SwinTransformerV2Block(
        32, size, 4, window_size=4, shift_size=shift, dynamic_mask=dynamic_mask, pretrained_window_size=6
    )
    return randomise(block, seed).eval()


def _tv_block(shift: int, seed: int = 0) -> nn.Module:
    return randomise(tv_swin.SwinTransformerBlockV2(32, 4, [4, 4], [shift, shift]), seed).eval()


def _swapped(host: nn.Module) -> tuple[nn.Module, nn.Module]:
    """`(host, swapped copy)`, both in the host's mode."""
    return host, patch_model(nn.Sequential(copy.deepcopy(host)))


def _timm_model() -> nn.Module:
    model = timm.create_model(
        "swinv2_tiny_window8_256", pretrained=False, img_size=64, window_size=4, embed_dim=32,
        depths=(2, 2), num_heads=(2, 4), num_classes=0,
    )
    return randomise(model).eval()


@pytest.mark.parametrize("size", [(8, 12), (10, 13), (3, 7)])
@pytest.mark.parametrize("shift", [0, 2])
@pytest.mark.parametrize("dynamic_mask", [False, True])
def test_swapped_timm_v2_block_matches_timm(size, shift, dynamic_mask):
    host, swapped = _swapped(_timm_block(size, shift, dynamic_mask))
    assert isinstance(swapped[0], SwappedTimmSwinV2Block)
    x = torch.randn(2, *size, 32)
    with torch.no_grad():
        torch.testing.assert_close(swapped(x), host(x), atol=ATOL, rtol=0)


@pytest.mark.parametrize("size", [(8, 12), (10, 13), (3, 7), (5, 4)])
@pytest.mark.parametrize("shift", [0, 2])
def test_swapped_torchvision_v2_block_matches_torchvision(size, shift):
    host, swapped = _swapped(_tv_block(shift))
    assert isinstance(swapped[0], SwappedTorchvisionSwinV2Block)
    x = torch.randn(2, *size, 32)
    with torch.no_grad():
        torch.testing.assert_close(swapped(x), host(x), atol=ATOL, rtol=0)


def test_swapped_timm_swinv2_model_matches_timm():
    host = _timm_model()
    swapped = patch_model(copy.deepcopy(host))
    assert sum(e.action == "swap" for e in swapped.winattn_report.entries) == 4
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(swapped(x), host(x), atol=ATOL, rtol=0)


@pytest.mark.parametrize("image", [(64, 64), (96, 80)])
def test_swapped_torchvision_swin_v2_t_matches_torchvision(image):
    torch.manual_seed(0)
    host = torchvision.models.swin_v2_t().eval()
    swapped = patch_model(copy.deepcopy(host))
    assert sum(e.action == "swap" for e in swapped.winattn_report.entries) == 12
    x = torch.randn(1, 3, *image)
    with torch.no_grad():
        torch.testing.assert_close(swapped(x), host(x), atol=ATOL, rtol=0)


@pytest.mark.parametrize("make", [lambda: _timm_block((10, 13), 2), lambda: _tv_block(2)], ids=["timm", "torchvision"])
def test_swapped_v2_block_keeps_state_dict_keys_and_loads_both_ways(make):
    host, swapped = _swapped(make())
    assert list(swapped[0].state_dict()) == list(host.state_dict())
    other = make()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.1)
    swapped[0].load_state_dict(other.state_dict(), strict=True)
    fresh = make()
    fresh.load_state_dict(swapped[0].state_dict(), strict=True)
    for (name, a), b in zip(other.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("make", [lambda: _timm_block((10, 13), 2), lambda: _tv_block(2)], ids=["timm", "torchvision"])
def test_swapped_v2_block_gradients_match_the_host(make):
    host, swapped = _swapped(make())
    x = torch.randn(1, 10, 13, 32)
    upstream = torch.randn(1, 10, 13, 32)

    def grads(model: nn.Module) -> dict[str, torch.Tensor]:
        model.zero_grad()
        model(x).backward(upstream)
        return {n.removeprefix("0."): p.grad for n, p in model.named_parameters()}

    want, got = grads(host), grads(swapped)
    assert set(got) == set(want)
    for name, g in want.items():
        scale = max(g.abs().max().item(), 1.0)
        torch.testing.assert_close(got[name], g, atol=1e-5 * scale, rtol=0, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("make", [lambda: _timm_block((10, 13), 2), lambda: _tv_block(2)], ids=["timm", "torchvision"])
def test_swapped_v2_block_compiles_without_graph_breaks(make):
    _, swapped = _swapped(make())
    x = torch.randn(1, 10, 13, 32)
    compiled = torch.compile(swapped, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), swapped(x), atol=ATOL, rtol=0)


def test_torchvision_stored_k_bias_has_no_effect_after_the_swap():
    host, swapped = _swapped(_tv_block(2))
    with torch.no_grad():
        swapped[0].attn.qkv.bias[32:64] = 5.0
        host.attn.qkv.bias[32:64] = 5.0
    x = torch.randn(1, 9, 9, 32)
    with torch.no_grad():
        torch.testing.assert_close(swapped(x), host(x), atol=ATOL, rtol=0)


def test_swap_with_another_window_size_is_refused():
    with pytest.raises(ValueError, match="window_size"):
        patch_model(nn.Sequential(_tv_block(2)), window_size=8)


def test_swap_report_names_the_v2_host_classes():
    model = patch_model(nn.Sequential(_timm_block((8, 8), 0), _tv_block(2)))
    hosts = [e.host for e in model.winattn_report.entries]
    assert hosts == [
        "timm.models.swin_transformer_v2.SwinTransformerV2Block",
        "torchvision.models.swin_transformer.SwinTransformerBlockV2",
    ]


@pytest.mark.parametrize("make", [lambda: _timm_block((10, 13), 2), lambda: _tv_block(2)], ids=["timm", "torchvision"])
def test_swapped_v2_block_in_training_mode_matches_the_host(make):
    host, swapped = _swapped(make())
    host.train()
    swapped.train()
    x = torch.randn(1, 10, 13, 32)
    torch.testing.assert_close(swapped(x), host(x), atol=ATOL, rtol=0)


def test_swapped_v2_block_applies_attention_dropout_in_training_only():
    host = randomise(tv_swin.SwinTransformerBlockV2(32, 4, [4, 4], [2, 2], attention_dropout=0.5)).eval()
    _, swapped = _swapped(host)
    x = torch.randn(1, 8, 8, 32)
    with torch.no_grad():
        torch.testing.assert_close(swapped(x), host(x), atol=ATOL, rtol=0)
        swapped.train()
        assert not torch.allclose(swapped(x), host(x), atol=1e-3)
