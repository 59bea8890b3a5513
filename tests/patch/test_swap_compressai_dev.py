# SPDX-License-Identifier: Apache-2.0
"""Whole-block swaps of CompressAI's development line (`compressai-temp`): its `WMSA` (WACNN,
STF, TCM), timm's `SwinTransformerBlock` in its STF port, and DCAE's SCUNet-style `_WMSA`.
Outputs, state-dict keys and bitstreams unchanged. Skipped where CompressAI is the release line
(the second CI environment runs them)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from winattn import patch_model
from winattn.patch.hosts.compressai import SwappedCompressaiWMSA
from winattn.patch.hosts.scunet import SwappedScunetWMSA
from winattn.patch.hosts.timm import SwappedTimmSwinBlock

swin = pytest.importorskip("compressai.layers.attn.swin", reason="needs CompressAI's development line")
dcae = pytest.importorskip("compressai.models.dcae")
stf = pytest.importorskip("compressai.models.stf")

ATOL = 1e-5


def _randomise(model: nn.Module) -> nn.Module:
    """Non-trivial relative position biases (they start near zero)."""
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "relative_position" in name:
            nn.init.normal_(p, std=0.5)
    return model.eval()


def _check_swap(model: nn.Module, x: torch.Tensor, cls: type) -> None:
    keys = list(model.state_dict())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        expected = model(x)
        patch_model(model, mode="swap")
        actual = model(x)
    assert any(isinstance(m, cls) for m in model.modules())
    assert all(e.level == "block" for e in model.winattn_report.entries)
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)
    assert list(model.state_dict()) == keys
    model.load_state_dict(state, strict=True)


@pytest.mark.parametrize("kind", ["W", "SW"])
@pytest.mark.parametrize("output_proj", [True, False])
@pytest.mark.parametrize("size", [(16, 16), (13, 21)])
def test_swapped_wmsa_matches_compressai(kind, output_proj, size):
    torch.manual_seed(0)
    model = nn.Sequential(swin.WMSA(32, 32, 8, 8, type=kind, output_proj=output_proj))
    _check_swap(_randomise(model), torch.randn(2, *size, 32), SwappedCompressaiWMSA)


@pytest.mark.parametrize("kind", ["W", "SW"])
def test_swapped_dcae_wmsa_matches_dcae(kind):
    torch.manual_seed(0)
    model = nn.Sequential(dcae._WMSA(32, 24, 8, 4, kind))
    _check_swap(_randomise(model), torch.randn(2, 12, 16, 32), SwappedScunetWMSA)


def test_swapped_dcae_wmsa_refuses_maps_the_original_refuses():
    model = patch_model(nn.Sequential(dcae._WMSA(32, 32, 8, 4, "SW")))
    with pytest.raises(ValueError, match="multiples of the window"):
        model(torch.randn(1, 10, 16, 32))


def test_swapped_stf_layer_matches_timm_on_a_map_that_needs_padding():
    torch.manual_seed(0)
    layer = stf._STFBasicLayer(dim=32, depth=2, num_heads=4, window_size=4)
    model = nn.Sequential(*_randomise(layer).blocks)
    _check_swap(model, torch.randn(2, 10, 7, 32), SwappedTimmSwinBlock)


def _wacnn() -> nn.Module:
    torch.manual_seed(0)
    return _randomise(stf.WACNN(N=32, M=40, num_slices=5, max_support_slices=2))


def test_swapped_wacnn_keeps_outputs_and_likelihoods():
    model, x = _wacnn(), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        patch_model(model)
        actual = model(x)
    torch.testing.assert_close(actual["x_hat"], expected["x_hat"], atol=ATOL, rtol=0)
    for key, value in expected["likelihoods"].items():
        torch.testing.assert_close(actual["likelihoods"][key], value, atol=ATOL, rtol=0)


def test_swapped_wacnn_checkpoint_loads_into_an_unpatched_one():
    patched = patch_model(_wacnn())
    fresh = stf.WACNN(N=32, M=40, num_slices=5, max_support_slices=2)
    fresh.load_state_dict(patched.state_dict(), strict=True)


def test_swapped_wacnn_writes_the_same_bytes():
    model, x = _wacnn(), torch.rand(1, 3, 64, 64)
    model.update(force=True)
    with torch.no_grad():
        expected = model.compress(x)["strings"]
        patch_model(model)
        actual = model.compress(x)["strings"]
    assert actual == expected
