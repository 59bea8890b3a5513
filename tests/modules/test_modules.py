# SPDX-License-Identifier: Apache-2.0
"""Tests of `winattn.modules`: shapes, composition, state dicts, dropout, constructor and
input checks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given
from torch import nn

from tests.strategies import Problem, problems, randomise
from winattn import (
    ShiftedWindowAttention,
    SwinBlock,
    WindowAttention,
    WindowAttentionBlock,
    modules,
    window_attention,
)
from winattn.functional import relative_position_index

# --- WindowAttention --------------------------------------------------------------------------


@given(problem=problems())
@example(problem=Problem(2, 10, 17, 2, 3, (7, 7), (3, 3)))
@example(problem=Problem(1, 1, 1, 1, 1, (8, 8), (4, 4)))
def test_window_attention_keeps_the_shape_of_any_map(problem):
    module = WindowAttention(problem.dim, problem.num_heads, problem.window_size, problem.shift_size)
    x = torch.randn(problem.batch, problem.height, problem.width, problem.dim)
    assert module(x).shape == x.shape


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_window_attention_is_proj_of_window_attention_of_qkv(qkv_bias):
    module = randomise(WindowAttention(12, 3, (4, 3), (2, 1), qkv_bias=qkv_bias)).eval()
    x = torch.randn(2, 7, 5, 12)
    expected = module.proj(
        window_attention(
            module.qkv(x),
            3,
            (4, 3),
            (2, 1),
            bias_table=module.relative_position_bias_table,
            pad_qkv=module.qkv.bias,
            backend="reference",
        )
    )
    torch.testing.assert_close(module(x, backend="reference"), expected, atol=0, rtol=0)


def test_window_attention_pads_with_the_projection_of_a_zero_token():
    module = randomise(WindowAttention(8, 2, 4, 2)).eval()
    x = torch.randn(1, 5, 7, 8)
    padded = torch.zeros(1, 8, 8, 8)
    padded[:, :5, :7] = x
    torch.testing.assert_close(module(x), module(padded)[:, :5, :7], atol=1e-6, rtol=0)


def test_qk_scale_overrides_the_default_scale():
    module = randomise(WindowAttention(8, 2, 4, qk_scale=0.1)).eval()
    x = torch.randn(1, 4, 4, 8)
    expected = module.proj(window_attention(module.qkv(x), 2, 4, scale=0.1, bias_table=module.relative_position_bias_table))
    torch.testing.assert_close(module(x), expected, atol=1e-6, rtol=0)


def test_rel_pos_bias_false_has_no_table_and_runs():
    module = WindowAttention(8, 2, 4, 2, rel_pos_bias=False)
    assert module.relative_position_bias_table is None
    assert "relative_position_bias_table" not in module.state_dict()
    assert module(torch.randn(1, 6, 6, 8)).shape == (1, 6, 6, 8)


def test_window_attention_state_dict_uses_swin_names():
    module = WindowAttention(16, 4, (4, 6))
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert shapes == {
        "relative_position_bias_table": (7 * 11, 4),
        "qkv.weight": (48, 16),
        "qkv.bias": (48,),
        "proj.weight": (16, 16),
        "proj.bias": (16,),
    }


def test_relative_position_index_is_a_non_persistent_buffer():
    module = WindowAttention(8, 2, 4)
    assert torch.equal(module.relative_position_index, relative_position_index(4))
    assert "relative_position_index" not in module.state_dict()


def test_checkpoint_with_matching_relative_position_index_loads_strictly():
    source = randomise(WindowAttention(8, 2, 4, 2))
    state = {**source.state_dict(), "relative_position_index": relative_position_index(4)}
    target = WindowAttention(8, 2, 4, 2)
    target.load_state_dict(state, strict=True)
    torch.testing.assert_close(target.relative_position_bias_table, source.relative_position_bias_table, atol=0, rtol=0)


def test_checkpoint_with_a_different_relative_position_index_is_rejected():
    state = {**WindowAttention(8, 2, 4).state_dict(), "relative_position_index": relative_position_index(4).flip(0)}
    with pytest.raises(ValueError, match=r"relative_position_index in the checkpoint does not match.*window_size=\(4, 4\)"):
        WindowAttention(8, 2, 4).load_state_dict(state)


def test_checkpoint_of_another_window_size_is_rejected_naming_the_index():
    state = {**WindowAttention(8, 2, 4).state_dict(), "relative_position_index": relative_position_index(5)}
    with pytest.raises(ValueError, match=r"checkpoint shape \(25, 25\)"):
        WindowAttention(8, 2, 4).load_state_dict(state)


def test_shifted_window_attention_defaults_to_half_the_window():
    assert ShiftedWindowAttention(8, 2, (7, 4)).shift_size == (3, 2)
    assert ShiftedWindowAttention(8, 2, 4, shift_size=1).shift_size == (1, 1)


def test_factory_arguments_set_parameter_dtype():
    module = WindowAttention(8, 2, 4, 2, dtype=torch.float64)
    assert {p.dtype for p in module.parameters()} == {torch.float64}
    assert module(torch.randn(1, 5, 5, 8, dtype=torch.float64)).dtype == torch.float64


def test_extra_repr_names_the_configuration():
    text = repr(WindowAttention(8, 2, (4, 6), (2, 3), attn_drop=0.1, backend="reference"))
    assert "dim=8, num_heads=2, window_size=(4, 6), shift_size=(2, 3)" in text
    assert "attn_drop=0.1" in text and "backend='reference'" in text


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_gradients_reach_every_parameter(backend):
    module = randomise(WindowAttention(8, 2, 4, 2, backend=backend))
    module(torch.randn(1, 6, 7, 8)).square().sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# --- dropout --------------------------------------------------------------------------------


def _outputs_for_seeds(module: nn.Module, x: torch.Tensor, seeds=(0, 1, 0)) -> list[torch.Tensor]:
    outs = []
    for seed in seeds:
        torch.manual_seed(seed)
        outs.append(module(x))
    return outs


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_attn_drop_is_applied_in_training(backend):
    module = randomise(WindowAttention(8, 2, 4, 2, attn_drop=0.5, backend=backend)).train()
    first, other, again = _outputs_for_seeds(module, torch.randn(1, 6, 6, 8))
    assert not torch.allclose(first, other)
    torch.testing.assert_close(first, again, atol=0, rtol=0)


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_attn_drop_is_off_in_eval(backend):
    module = randomise(WindowAttention(8, 2, 4, 2, attn_drop=0.5, backend=backend)).eval()
    x = torch.randn(1, 6, 6, 8)
    without = WindowAttention(8, 2, 4, 2, backend=backend).eval()
    without.load_state_dict(module.state_dict())
    first, other, _ = _outputs_for_seeds(module, x)
    torch.testing.assert_close(first, other, atol=0, rtol=0)
    torch.testing.assert_close(first, without(x), atol=0, rtol=0)


def test_swin_block_drop_path_is_applied_in_training_only():
    block = randomise(SwinBlock(8, 2, 4, 2, drop_path=0.5))
    x = torch.randn(8, 4, 4, 8)
    first, other, _ = _outputs_for_seeds(block.train(), x)
    assert not torch.allclose(first, other)
    first, other, _ = _outputs_for_seeds(block.eval(), x)
    torch.testing.assert_close(first, other, atol=0, rtol=0)


# --- SwinBlock --------------------------------------------------------------------------------


def test_swin_block_state_dict_uses_swin_names():
    names = set(SwinBlock(8, 2, 4, 2).state_dict())
    assert names == {
        "norm1.weight",
        "norm1.bias",
        "attn.relative_position_bias_table",
        "attn.qkv.weight",
        "attn.qkv.bias",
        "attn.proj.weight",
        "attn.proj.bias",
        "norm2.weight",
        "norm2.bias",
        "mlp.fc1.weight",
        "mlp.fc1.bias",
        "mlp.fc2.weight",
        "mlp.fc2.bias",
    }


def test_swin_block_is_prenorm_attention_then_mlp_with_residuals():
    block = randomise(SwinBlock(8, 2, (4, 3), (2, 1), mlp_ratio=2.0)).eval()
    x = torch.randn(2, 5, 7, 8)
    y = x + block.attn(block.norm1(x))
    expected = y + block.mlp.fc2(nn.functional.gelu(block.mlp.fc1(block.norm2(y))))
    torch.testing.assert_close(block(x), expected, atol=0, rtol=0)
    assert block.mlp.fc1.out_features == 16


@pytest.mark.parametrize("act_layer", [nn.GELU, nn.SiLU], ids=["gelu-in-place", "other-act"])
@pytest.mark.parametrize("batch", [1, 2])
def test_swin_block_eval_runs_the_mlp_by_rows_with_the_same_bits_in_any_grad_mode(
    monkeypatch, act_layer, batch
):
    # In eval mode on the CPU the MLP runs a few rows at a time (in place without autograd).
    # An encoder under no_grad and a decoder with autograd recording must get the same bits.
    monkeypatch.setattr(modules, "MLP_CHUNK_BYTES", 5 * 32 * 4)  # 4 rows of hidden per chunk
    calls = []
    rows = modules.Mlp.forward_rows
    monkeypatch.setattr(modules.Mlp, "forward_rows", lambda *a, **k: calls.append(1) or rows(*a, **k))
    block = randomise(SwinBlock(8, 2, 4, 2, act_layer=act_layer)).eval()
    x = torch.randn(batch, 5, 7, 8)
    with torch.no_grad():
        inference, mlp_only = block(x), block.mlp(x)
    recorded, mlp_recorded = block(x), block.mlp(x)
    assert len(calls) == 4, "the MLP did not run by rows"
    assert recorded.requires_grad and mlp_recorded.requires_grad
    assert torch.equal(inference, recorded.detach())
    assert torch.equal(mlp_only, mlp_recorded.detach())
    recorded.square().sum().backward()
    assert block.mlp.fc1.weight.grad is not None
    y = x + block.attn(block.norm1(x))  # the one-shot composition, as in training
    one_shot = y + block.mlp.fc2(block.mlp.act(block.mlp.fc1(block.norm2(y))))
    torch.testing.assert_close(inference, one_shot, atol=1e-6, rtol=1e-6)


def test_mlp_forward_rows_names_bad_shapes_and_the_fix():
    mlp = modules.Mlp(8, 16).eval()
    with pytest.raises(ValueError, match=r"\(T, 8\), got x of shape \(2, 3, 8\).*reshape\(-1, 8\)"):
        mlp.forward_rows(torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match=r"\(T, 8\), got x of shape \(4, 5\)"):
        mlp.forward_rows(torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"residual must match the output rows, \(4, 8\), got residual of shape \(3, 8\)"):
        mlp.forward_rows(torch.randn(4, 8), residual=torch.randn(3, 8))


def test_swin_block_passes_its_arguments_to_the_attention():
    block = SwinBlock(12, 3, (7, 5), (3, 2), qkv_bias=False, attn_drop=0.25, qk_scale=0.5)
    attn = block.attn
    assert (attn.num_heads, attn.window_size, attn.shift_size) == (3, (7, 5), (3, 2))
    assert attn.qkv.bias is None and attn.attn_drop == 0.25 and attn.scale == 0.5


# --- WindowAttentionBlock -------------------------------------------------------------------


@given(problem=problems(max_batch=1))
def test_window_attention_block_keeps_the_shape_of_any_nchw_map(problem):
    dim = 2 * problem.num_heads
    block = WindowAttentionBlock(dim, problem.num_heads, problem.window_size, problem.shift_size)
    x = torch.randn(1, dim, problem.height, problem.width)
    assert block(x).shape == x.shape


def test_window_attention_block_gates_conv_a_with_conv_b():
    block = randomise(WindowAttentionBlock(8, 2, 4, 2)).eval()
    x = torch.randn(1, 8, 6, 9)
    expected = x + block.conv_a(x) * torch.sigmoid(block.conv_b(x))
    torch.testing.assert_close(block(x), expected, atol=0, rtol=0)


def test_window_attention_block_conv_b_starts_with_residual_window_attention():
    block = randomise(WindowAttentionBlock(8, 2, 4, 2)).eval()
    x = torch.randn(1, 8, 6, 9)
    expected = x + block.attn(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(block.conv_b[0](x), expected, atol=0, rtol=0)
    assert block.attn.shift_size == (2, 2)


def test_closed_gate_half_precision_backward_is_the_identity_and_the_gate_gets_the_branch():
    # Inputs of about 1000 give attention logits beyond float16's range.
    block = randomise(modules.GatedWindowAttentionBlock(32, 4, 4, 2))
    nn.init.zeros_(block.gate)
    x = (torch.randn(1, 32, 8, 8, generator=torch.Generator().manual_seed(0)) * 1000).half()
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).half()
    block.half()
    with torch.no_grad():
        branch = block.conv_a(x) * torch.sigmoid(block.conv_b(x))  # (1, C, H, W)
    expected = (upstream.float() * branch.float()).sum((0, 2, 3))  # (C,), finite
    leaf = x.clone().requires_grad_()
    block(leaf).backward(upstream)
    assert torch.equal(leaf.grad, upstream)
    torch.testing.assert_close(block.gate.grad.float(), expected, atol=0.5, rtol=1e-2)


def test_residual_unit_is_gelu_of_input_plus_bottleneck():
    unit = randomise(WindowAttentionBlock(8, 2, 4).conv_a[0]).eval()
    x = torch.randn(1, 8, 5, 5)
    c = unit.conv
    expected = nn.functional.gelu(x + c[4](nn.functional.gelu(c[2](nn.functional.gelu(c[0](x))))))
    torch.testing.assert_close(unit(x), expected, atol=0, rtol=0)
    assert [m.kernel_size for m in (c[0], c[2], c[4])] == [(1, 1), (3, 3), (1, 1)]


def test_residual_unit_without_autograd_computes_the_values_it_computes_with_autograd():
    # Without autograd recording, the unit runs its activations and its residual sum in place.
    unit = randomise(modules.ResidualUnit(8)).eval()
    x = torch.randn(2, 8, 5, 6)
    expected = unit(x)  # recorded: the parameters require grad
    with torch.no_grad():
        got = unit(x)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "args", "kwargs", "error", "pattern"),
    [
        (WindowAttention, (12, 5), {}, ValueError, r"dim must be divisible by num_heads, got dim=12, num_heads=5"),
        (WindowAttention, (12, 0), {}, ValueError, r"num_heads must be a positive int, got num_heads=0"),
        (WindowAttention, (12, 3), {"window_size": 0}, ValueError, r"window_size must be >= 1.*window_size=0"),
        (WindowAttention, (12, 3), {"window_size": (4, 0)}, ValueError, r"window_size=\(4, 0\)"),
        (WindowAttention, (12, 3), {"window_size": "8"}, TypeError, r"window_size must be an int.*window_size='8'"),
        (WindowAttention, (12, 3), {"shift_size": -2}, ValueError, r"shift_size must be >= 0.*shift_size=-2"),
        (WindowAttention, (12, 3), {"window_size": 4, "shift_size": 4}, ValueError, r"shift_size must be in \[0, window_size\).*shift_size=\(4, 4\)"),
        (WindowAttention, (12, 3), {"window_size": (7, 3), "shift_size": (3, 3)}, ValueError, r"shift_size=\(3, 3\) with window_size=\(7, 3\) \(width\)"),
        (WindowAttention, (12, 3), {"attn_drop": 1.0}, ValueError, r"attn_drop must be in \[0, 1\), got attn_drop=1.0"),
        (WindowAttention, (12, 3), {"backend": "fast"}, ValueError, r"unknown backend 'fast'"),
        (ShiftedWindowAttention, (12, 5), {}, ValueError, r"dim=12, num_heads=5"),
        (SwinBlock, (12, 5), {}, ValueError, r"dim=12, num_heads=5"),
        (SwinBlock, (12, 3), {"window_size": 4, "shift_size": 5}, ValueError, r"shift_size=\(5, 5\)"),
        (SwinBlock, (12, 3), {"mlp_ratio": 0}, ValueError, r"mlp_ratio must be positive, got mlp_ratio=0"),
        (SwinBlock, (12, 3), {"drop_path": 1.5}, ValueError, r"drop_path must be in \[0, 1\).*1.5"),
        (WindowAttentionBlock, (12, 5), {}, ValueError, r"dim=12, num_heads=5"),
        (WindowAttentionBlock, (9, 3), {}, ValueError, r"dim must be even.*dim=9"),
        (WindowAttentionBlock, (12, 3), {"window_size": -1}, ValueError, r"window_size=-1"),
        (WindowAttentionBlock, (12, 3), {"window_size": 4, "shift_size": 4}, ValueError, r"shift_size=\(4, 4\)"),
        (WindowAttentionBlock, (12, 3), {"backend": "fast"}, ValueError, r"unknown backend 'fast'"),
    ],
)
def test_constructors_reject_bad_arguments_naming_them(cls, args, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        cls(*args, **kwargs)


_CHANNELS_LAST_CASES = [
    (torch.randn(6, 6, 12), ValueError, r"\(B, H, W, C\), got x.shape=\(6, 6, 12\) \(3 dims\)"),
    (torch.randn(1, 6, 6, 10), ValueError, r"x has 10 channels but this module was built with dim=12.*\(B, H, W, 12\)"),
    (torch.randn(1, 12, 6, 6), ValueError, r"x has 6 channels.*permute\(0, 2, 3, 1\)"),
    (torch.ones(1, 6, 6, 12, dtype=torch.int32), TypeError, r"floating-point.*x.dtype=torch.int32"),
    (torch.ones(1, 6, 6, 12, dtype=torch.bool), TypeError, r"x.dtype=torch.bool"),
    (torch.randn(1, 0, 6, 12), ValueError, r"empty spatial size \(H, W\)=\(0, 6\)"),
    (torch.randn(1, 6, 0, 12), ValueError, r"\(H, W\)=\(6, 0\)"),
]


@pytest.mark.parametrize(("x", "error", "pattern"), _CHANNELS_LAST_CASES)
@pytest.mark.parametrize("cls", [WindowAttention, ShiftedWindowAttention, SwinBlock])
def test_channels_last_modules_reject_bad_input_naming_it(cls, x, error, pattern):
    module = cls(12, 3, 4)
    with pytest.raises(error, match=pattern):
        module(x)


@pytest.mark.parametrize(
    ("x", "error", "pattern"),
    [
        (torch.randn(12, 6, 6), ValueError, r"NCHW input \(B, 12, H, W\), got x.shape=\(12, 6, 6\) \(3 dims\)"),
        (torch.randn(1, 6, 6, 12), ValueError, r"x has 6 channels but this block was built with dim=12"),
        (torch.ones(1, 12, 6, 6, dtype=torch.int64), TypeError, r"floating-point.*x.dtype=torch.int64"),
        (torch.ones(1, 12, 6, 6, dtype=torch.bool), TypeError, r"x.dtype=torch.bool"),
        (torch.randn(1, 12, 0, 6), ValueError, r"empty spatial size \(H, W\)=\(0, 6\)"),
        (torch.randn(1, 12, 6, 0), ValueError, r"\(H, W\)=\(6, 0\)"),
        ("not a tensor", TypeError, r"x must be a torch.Tensor, got str"),
    ],
)
def test_window_attention_block_rejects_bad_input_naming_it(x, error, pattern):
    with pytest.raises(error, match=pattern):
        WindowAttentionBlock(12, 3, 4)(x)
