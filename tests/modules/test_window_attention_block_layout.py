# SPDX-License-Identifier: Apache-2.0
"""`WindowAttentionBlock` on channels-last NCHW maps: the layout the codecs run in on the CPU."""

from __future__ import annotations

import torch
from hypothesis import example, given

from tests.strategies import Problem, problems, randomise
from winattn import WindowAttentionBlock


def _block(problem: Problem) -> WindowAttentionBlock:
    dim = 2 * problem.num_heads
    return randomise(WindowAttentionBlock(dim, problem.num_heads, problem.window_size, problem.shift_size)).eval()


def _channels_last_map(problem: Problem, dim: int) -> torch.Tensor:
    x = torch.randn(problem.batch, dim, problem.height, problem.width)  # (B, C, H, W)
    return x.contiguous(memory_format=torch.channels_last)


@given(problem=problems())
@example(problem=Problem(2, 9, 13, 2, 3, (7, 7), (3, 3)))
def test_channels_last_input_gives_the_values_of_the_contiguous_input(problem):
    block = _block(problem)
    x = _channels_last_map(problem, block.dim)
    with torch.no_grad():
        torch.testing.assert_close(block(x), block(x.contiguous()), atol=1e-5, rtol=0)


@given(problem=problems())
def test_channels_last_input_gives_a_channels_last_output(problem):
    block = _block(problem)
    x = _channels_last_map(problem, block.dim)
    with torch.no_grad():
        out = block(x)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_attention_reads_a_channels_last_input_in_place():
    block = randomise(WindowAttentionBlock(8, 2, 4, 2)).eval()
    x = _channels_last_map(Problem(2, 6, 9, 2, 4, (4, 4), (2, 2)), 8)
    seen = []
    block.attn.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        block(x)
    (attn_input,) = seen  # (B, H, W, C)
    assert attn_input.is_contiguous() and attn_input.data_ptr() == x.data_ptr()


@given(problem=problems())
def test_contiguous_input_gives_a_contiguous_output(problem):
    block = _block(problem)
    x = torch.randn(problem.batch, block.dim, problem.height, problem.width)  # (B, C, H, W)
    with torch.no_grad():
        out = block(x)
    assert out.is_contiguous()
