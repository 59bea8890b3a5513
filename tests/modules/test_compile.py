# SPDX-License-Identifier: Apache-2.0
"""`torch.compile(fullgraph=True)` and `torch.export` of `WindowAttention` on the CPU, on a
shifted map that needs padding. Tiny shapes and one compile: these tests check that the module
traces as one graph and that the traced graph computes the same thing, not speed."""

from __future__ import annotations

import pytest
import torch

from tests.strategies import randomise
from winattn import WindowAttention


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
