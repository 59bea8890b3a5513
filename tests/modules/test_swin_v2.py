# SPDX-License-Identifier: Apache-2.0
"""Swin-V2's modules (`WindowAttentionV2`, `SwinV2Block`) and geometry
(`relative_coords_table`, `continuous_position_bias`): names, checkpoints and outputs as timm's
and torchvision's, and gradients through the SDPA backend as through the reference."""

from __future__ import annotations

import pytest
import torch

from tests.strategies import randomise
from winattn import SwinV2Block, WindowAttentionV2
from winattn.functional import continuous_position_bias, relative_coords_table

timm_v2 = pytest.importorskip("timm.models.swin_transformer_v2")


@pytest.mark.parametrize("window, pretrained", [((4, 4), 0), ((4, 6), 0), ((8, 8), (12, 12)), ((1, 3), 0)])
def test_relative_coords_table_is_timms(window, pretrained):
    host = timm_v2.WindowAttention(16, window, 2, pretrained_window_size=pretrained or (0, 0))
    torch.testing.assert_close(relative_coords_table(window, pretrained), host.relative_coords_table, atol=0, rtol=0)


def test_relative_coords_table_is_torchvisions():
    tv = pytest.importorskip("torchvision.models.swin_transformer")
    host = tv.ShiftedWindowAttentionV2(16, [4, 6], [2, 3], 2)
    torch.testing.assert_close(relative_coords_table((4, 6)), host.relative_coords_table, atol=0, rtol=0)


def test_continuous_position_bias_is_bounded_by_16():
    mlp = torch.nn.Linear(2, 3)
    with torch.no_grad():
        mlp.weight.mul_(100.0)
    table = continuous_position_bias(mlp, relative_coords_table(4), 3)
    assert table.shape == (49, 3) and (table >= 0).all() and (table <= 16).all()


def test_window_attention_v2_state_dict_has_timms_keys():
    host = timm_v2.WindowAttention(16, (4, 4), 2)
    assert set(WindowAttentionV2(16, 2, 4).state_dict()) == set(host.state_dict())


@pytest.mark.parametrize("shift", [0, 2])
@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_swin_v2_block_loads_timms_block_and_computes_the_same(shift, backend):
    host = randomise(timm_v2.SwinTransformerV2Block(32, (8, 12), 4, window_size=4, shift_size=shift, pretrained_window_size=6)).eval()
    ours = SwinV2Block(32, 4, 4, shift, pretrained_window_size=6, backend=backend).eval()
    ours.load_state_dict(host.state_dict(), strict=True)
    x = torch.randn(2, 8, 12, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), host(x), atol=1e-5, rtol=0)


def test_window_attention_v2_without_qkv_bias_has_no_q_or_v_bias():
    attn = WindowAttentionV2(16, 2, 4, qkv_bias=False)
    assert attn.q_bias is None and attn.v_bias is None and attn.qkv.bias is None
    assert attn(torch.randn(1, 5, 5, 16)).shape == (1, 5, 5, 16)


def test_window_attention_v2_gradients_on_sdpa_match_reference():
    attn = randomise(WindowAttentionV2(16, 2, 4, 2), seed=1)
    x = torch.randn(2, 9, 7, 16, requires_grad=True)
    upstream = torch.randn(2, 9, 7, 16)
    leaves = [x, *attn.parameters()]

    def grads(backend: str) -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad(attn(x, backend=backend), leaves, upstream, materialize_grads=True)

    names = ["x", *(n for n, _ in attn.named_parameters())]
    for name, got, want in zip(names, grads("sdpa"), grads("reference")):
        atol = 2e-5 * max(want.abs().max().item(), 1.0)
        torch.testing.assert_close(got, want, atol=atol, rtol=0, msg=lambda m, n=name: f"{n}: {m}")


def test_window_attention_v2_accepts_a_matching_coords_table_in_a_checkpoint():
    attn = WindowAttentionV2(16, 2, 4)
    state = {**attn.state_dict(), "relative_coords_table": relative_coords_table(4)}
    attn.load_state_dict(state, strict=True)


def test_window_attention_v2_refuses_a_coords_table_of_another_window():
    attn = WindowAttentionV2(16, 2, 4)
    state = {**attn.state_dict(), "relative_coords_table": relative_coords_table(4, pretrained_window_size=8)}
    with pytest.raises(ValueError, match="pretrained_window_size"):
        attn.load_state_dict(state, strict=True)


def test_swin_v2_block_compiles_without_graph_breaks():
    block = randomise(SwinV2Block(16, 2, 4, 2)).eval()
    x = torch.randn(1, 6, 9, 16)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), block(x), atol=1e-5, rtol=0)
