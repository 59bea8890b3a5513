# SPDX-License-Identifier: Apache-2.0
"""`torch.compile(fullgraph=True)` and `torch.export` of `WindowAttention` on the CPU, on a
shifted map that needs padding. Tiny shapes and one compile: these tests check that the module
traces as one graph and that the traced graph computes the same thing, not speed."""

from __future__ import annotations

import pytest
import torch

from tests.strategies import randomise
from winattn import SwinBlock, WindowAttention


def _shifted_padded_attention(backend: str | None = None) -> WindowAttention:
    # 7 x 5 map, 4 x 3 windows: padded to 8 x 6, shifted by (2, 1).
    return randomise(WindowAttention(8, 2, (4, 3), (2, 1), backend=backend)).eval()


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    module = _shifted_padded_attention()
    x = torch.randn(2, 7, 5, 8)
    compiled = torch.compile(module, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), module(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", ["sdpa", "reference"])
def test_export_matches_eager(backend):
    module = _shifted_padded_attention(backend)
    x = torch.randn(2, 7, 5, 8)
    exported = torch.export.export(module, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), module(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "module",
    [WindowAttention(32, 4, 8, 4), SwinBlock(32, 4, 8, 4)],
    ids=["WindowAttention", "SwinBlock"],
)
def test_dynamic_shape_compile_matches_eager_at_two_batch_sizes_and_two_map_sizes(module):
    # aot_eager traces what inductor traces (the graph and its symbolic shapes) without
    # generating code, which takes minutes on two CPU cores.
    torch._dynamo.reset()
    module = randomise(module).eval()
    compiled = torch.compile(module, dynamic=True, backend="aot_eager")
    for shape in [(2, 16, 16, 32), (3, 16, 16, 32), (2, 20, 27, 32)]:
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), module(x), atol=1e-5, rtol=0)


def test_dynamic_shape_compile_matches_eager_gradients():
    torch._dynamo.reset()
    module = randomise(WindowAttention(16, 2, 4, 2))
    compiled = torch.compile(module, dynamic=True, backend="aot_eager")
    for shape in [(2, 8, 8, 16), (3, 9, 6, 16)]:
        x = torch.randn(shape, requires_grad=True)
        (got,) = torch.autograd.grad(compiled(x).square().sum(), x)
        (want,) = torch.autograd.grad(module(x).square().sum(), x)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
