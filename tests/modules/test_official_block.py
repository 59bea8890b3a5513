# SPDX-License-Identifier: Apache-2.0
"""`WindowAttentionBlock` against the official STF `Win_noShift_Attention` (WACNN's g_a / g_s
window-attention blocks).

The official code is not part of this repository. The state-dict layout comes from
`tests/modules/data/wacnn_window_attention_blocks.tsv`: the lines of those four blocks in the layout of
an official WACNN state dict (name, shape, dtype, param/buffer; the project's
`shared/reference/cnn_official_state_dict.tsv`). The attention's outputs are checked against timm's Swin, which
computes what the official `WinBasedAttention` computes on maps that are multiples of the
window (the official module does not pad).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from tests.strategies import seeded
from winattn import WindowAttentionBlock

TSV = Path(__file__).resolve().parent / "data" / "wacnn_window_attention_blocks.tsv"
_BLOCK = re.compile(r"^(g_[as]\.\d+)\.conv_b\.0\.attn\.relative_position_index$")


def _official_layout() -> dict[str, dict[str, tuple[tuple[int, ...], str]]]:
    """`{block prefix: {key within the block: (shape, dtype)}}` for every window-attention
    block of the official WACNN."""
    rows = [line.split("\t") for line in TSV.read_text().splitlines() if line.strip()]
    entries = {name: (tuple(int(n) for n in re.findall(r"\d+", shape)), dtype) for name, shape, dtype, *_ in rows}
    prefixes = [m.group(1) for m in map(_BLOCK.match, entries) if m]
    return {p: {k[len(p) + 1 :]: v for k, v in entries.items() if k.startswith(p + ".")} for p in prefixes}


@pytest.fixture(scope="module")
def layout():
    return _official_layout()


@pytest.fixture(scope="module")
def timm_swin():
    return pytest.importorskip("timm.models.swin_transformer")


def _config(block_layout) -> tuple[int, int, int]:
    """`(dim, num_heads, window)` of an official block, read off its shapes."""
    dim = block_layout["conv_b.0.attn.qkv.weight"][0][1]
    heads = block_layout["conv_b.0.attn.relative_position_bias_table"][0][1]
    window = math.isqrt(block_layout["conv_b.0.attn.relative_position_index"][0][0])
    return dim, heads, window


def _official_state_dict(block_layout, timm_swin, seed: int) -> dict[str, torch.Tensor]:
    """Random tensors in the official layout, with the official (persistent) index buffer."""
    g = seeded(seed)
    _, _, window = _config(block_layout)
    state = {}
    for key, (shape, dtype) in block_layout.items():
        if key.endswith("relative_position_index"):
            state[key] = timm_swin.get_relative_position_index(window, window)
        else:
            assert dtype == "float32", key
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else 4
            state[key] = torch.randn(shape, generator=g) / math.sqrt(fan_in)
    return state


def test_reference_layout_has_the_four_wacnn_blocks(layout):
    assert sorted(layout) == ["g_a.4", "g_a.8", "g_s.0", "g_s.5"]
    assert [_config(layout[p]) for p in sorted(layout)] == [(192, 8, 8), (320, 8, 4), (320, 8, 4), (192, 8, 8)]


@pytest.mark.parametrize("prefix", ["g_a.4", "g_a.8", "g_s.0", "g_s.5"])
def test_block_has_the_official_state_dict_layout(layout, prefix):
    dim, heads, window = _config(layout[prefix])
    ours = WindowAttentionBlock(dim, heads, window, window // 2)
    shapes = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in ours.state_dict().items()}
    official = dict(layout[prefix])
    # The official index buffer is persistent; winattn's is not (it is accepted on load).
    assert official.pop("conv_b.0.attn.relative_position_index") == ((window**2, window**2), "int64")
    assert shapes == official


@pytest.mark.parametrize("prefix", ["g_a.4", "g_a.8", "g_s.0", "g_s.5"])
def test_official_state_dict_loads_strictly(layout, timm_swin, prefix):
    dim, heads, window = _config(layout[prefix])
    state = _official_state_dict(layout[prefix], timm_swin, seed=0)
    ours = WindowAttentionBlock(dim, heads, window, window // 2)
    ours.load_state_dict(state, strict=True)
    for key, value in ours.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_official_state_dict_with_a_wrong_index_is_rejected(layout, timm_swin):
    state = _official_state_dict(layout["g_a.8"], timm_swin, seed=0)
    state["conv_b.0.attn.relative_position_index"] = state["conv_b.0.attn.relative_position_index"].t().contiguous() + 1
    with pytest.raises(ValueError, match=r"conv_b\.0\.attn\.relative_position_index in the checkpoint does not match"):
        WindowAttentionBlock(320, 8, 4, 2).load_state_dict(state, strict=True)


@pytest.mark.parametrize(("prefix", "shift", "size"), [("g_a.4", 4, (16, 24)), ("g_s.0", 2, (8, 8)), ("g_a.8", 0, (4, 8))])
def test_attention_with_official_weights_matches_timm_swin(layout, timm_swin, prefix, shift, size):
    dim, heads, window = _config(layout[prefix])
    ours = WindowAttentionBlock(dim, heads, window, shift).eval()
    ours.load_state_dict(_official_state_dict(layout[prefix], timm_swin, seed=1), strict=True)
    oracle = timm_swin.SwinTransformerBlock(
        dim, input_resolution=size, num_heads=heads, window_size=window, shift_size=shift, always_partition=True, dynamic_mask=True
    ).eval()
    oracle.attn.load_state_dict(ours.attn.state_dict(), strict=True)
    x = torch.randn(1, dim, *size)
    with torch.no_grad():
        expected = x + oracle._attn(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, C, H, W)
        torch.testing.assert_close(ours.conv_b[0](x), expected, atol=1e-5, rtol=0)


def test_block_output_is_finite_and_depends_on_every_submodule(layout, timm_swin):
    # With official-layout weights, perturbing conv_a, the attention or the final conv each
    # changes the output: no part of the official structure is silently bypassed.
    state = _official_state_dict(layout["g_a.8"], timm_swin, seed=2)
    block = WindowAttentionBlock(320, 8, 4, 2).eval()
    block.load_state_dict(state, strict=True)
    x = torch.randn(1, 320, 8, 8)
    with torch.no_grad():
        base = block(x)
        assert torch.isfinite(base).all()
        for key in ("conv_a.2.conv.4.bias", "conv_b.0.attn.relative_position_bias_table", "conv_b.4.bias"):
            changed = WindowAttentionBlock(320, 8, 4, 2).eval()
            changed.load_state_dict({**state, key: state[key] + 1.0}, strict=True)
            assert not torch.allclose(changed(x), base), key
