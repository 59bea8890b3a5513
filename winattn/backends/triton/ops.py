# SPDX-License-Identifier: Apache-2.0
"""The Triton kernels as `torch.library` custom ops, with autograd.

`winattn::triton_window_attention` (forward) and `winattn::triton_window_attention_backward`
are opaque to `torch.compile`: each is one node in the graph, shaped by its fake
implementation. `TritonWindowAttention` (an `autograd.Function`) ties them together.
"""

from __future__ import annotations

import torch
from torch import Tensor

from winattn.backends.dispatcher import AttentionCall
from winattn.backends.triton import kernels

_EMPTY = (0,)


@torch.library.custom_op("winattn::triton_window_attention", mutates_args=())
def window_attention_op(
    qkv: Tensor,
    bias_table: Tensor | None,
    bias: Tensor | None,
    pad_qkv: Tensor | None,
    num_heads: int,
    wh: int,
    ww: int,
    sh: int,
    sw: int,
    scale: float,
) -> Tensor:
    """Fused forward. `qkv: (B, H, W, 3C)` -> `(B, H, W, C)`."""
    return kernels.forward(qkv, bias_table, bias, pad_qkv, num_heads, (wh, ww), (sh, sw), scale)


@window_attention_op.register_fake
def _(qkv, bias_table, bias, pad_qkv, num_heads, wh, ww, sh, sw, scale):
    b, h, w, c3 = qkv.shape
    return qkv.new_empty(b, h, w, c3 // 3)


@torch.library.custom_op("winattn::triton_window_attention_backward", mutates_args=())
def window_attention_backward_op(
    dout: Tensor,
    qkv: Tensor,
    bias_table: Tensor | None,
    bias: Tensor | None,
    pad_qkv: Tensor | None,
    num_heads: int,
    wh: int,
    ww: int,
    sh: int,
    sw: int,
    scale: float,
    bias_grad: bool,
    pad_grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Fused backward. Returns `(dqkv, dbias, dpad)`; a gradient not asked for (or of an
    argument that is None) is an empty `(0,)` tensor."""
    dqkv, dbias, dpad = kernels.backward(
        dout, qkv, bias_table, bias, pad_qkv, num_heads, (wh, ww), (sh, sw), scale,
        bias_grad, pad_grad,
    )
    dbias = qkv.new_empty(_EMPTY) if dbias is None else dbias
    return dqkv, dbias, qkv.new_empty(_EMPTY) if dpad is None else dpad


@window_attention_backward_op.register_fake
def _(dout, qkv, bias_table, bias, pad_qkv, num_heads, wh, ww, sh, sw, scale, bias_grad, pad_grad):
    biased = bias_table if bias_table is not None else bias
    dbias = torch.empty_like(biased) if bias_grad and biased is not None else qkv.new_empty(_EMPTY)
    dpad = torch.empty_like(pad_qkv) if pad_grad and pad_qkv is not None else qkv.new_empty(_EMPTY)
    return torch.empty_like(qkv), dbias, dpad


class TritonWindowAttention(torch.autograd.Function):
    """Autograd for the fused kernels: gradients of qkv, the bias (table or dense) and
    `pad_qkv`. The bias gradient is reduced in a fixed order (see `kernels.backward`)."""

    @staticmethod
    def forward(ctx, qkv, bias_table, bias, pad_qkv, num_heads, window, shift, scale):
        ctx.save_for_backward(qkv, bias_table, bias, pad_qkv)
        ctx.geometry = (num_heads, *window, *shift, scale)
        if torch.compiler.is_compiling():
            return window_attention_op(qkv, bias_table, bias, pad_qkv, *ctx.geometry)
        # Eager: straight to the launcher, sparing the custom op's dispatch (tens of us).
        return kernels.forward(qkv, bias_table, bias, pad_qkv, num_heads, window, shift, scale)

    @staticmethod
    def backward(ctx, dout):
        qkv, bias_table, bias, pad_qkv = ctx.saved_tensors
        need_qkv, need_table, need_bias, need_pad = ctx.needs_input_grad[:4]
        args = (dout, qkv, bias_table, bias, pad_qkv)
        if torch.compiler.is_compiling():
            dqkv, dbias, dpad = window_attention_backward_op(
                *args, *ctx.geometry, need_table or need_bias, need_pad
            )
        else:  # eager: straight to the launcher, as in forward
            num_heads, wh, ww, sh, sw, scale = ctx.geometry
            dqkv, dbias, dpad = kernels.backward(
                *args, num_heads, (wh, ww), (sh, sw), scale, need_table or need_bias, need_pad
            )
        return (
            dqkv if need_qkv else None,
            dbias if need_table else None,
            dbias if need_bias else None,
            dpad if need_pad else None,
            None,
            None,
            None,
            None,
        )


def triton_window_attention(call: AttentionCall) -> Tensor:
    """Runs a validated call on the fused kernels. Returns `(B, H, W, C)`."""
    return TritonWindowAttention.apply(
        call.qkv,
        call.bias_table,
        call.bias,
        call.pad_qkv,
        call.num_heads,
        call.window_size,
        call.shift_size,
        call.scale,
    )
