# SPDX-License-Identifier: Apache-2.0
"""Hypothesis strategies and small builders shared by the test modules."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st
from torch import nn

WINDOW_SIDES = (1, 2, 3, 4, 5, 7, 8)


@dataclass(frozen=True)
class Problem:
    """The shape of one window-attention call.

    `H` and `W` range from smaller than the window to a little over two windows, so most
    draws need padding; `head_dim` includes odd values.
    """

    batch: int
    height: int
    width: int
    num_heads: int
    head_dim: int
    window_size: tuple[int, int]
    shift_size: tuple[int, int]

    @property
    def dim(self) -> int:
        return self.num_heads * self.head_dim

    def qkv(self, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """`(B, H, W, 3C)` random qkv."""
        shape = (self.batch, self.height, self.width, 3 * self.dim)
        return torch.randn(shape, generator=generator, dtype=dtype)

    def bias_table(self, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """`((2Wh-1)(2Ww-1), heads)` random relative position bias table."""
        wh, ww = self.window_size
        rows = (2 * wh - 1) * (2 * ww - 1)
        return torch.randn(rows, self.num_heads, generator=generator, dtype=dtype)

    def pad_qkv(self, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """`(3C,)` random qkv of a padding token."""
        return torch.randn(3 * self.dim, generator=generator, dtype=dtype)


@st.composite
def windows(draw: st.DrawFn, shifted: bool | None = None) -> tuple[tuple[int, int], tuple[int, int]]:
    """`(window_size, shift_size)`: square or not, with a shift on none, one or both axes.

    Args:
        shifted: True to force a shift on at least one axis, False for none, None for either.
    """
    square = draw(st.booleans())
    # A forced shift needs a height of at least 2 (the width may then be anything).
    wh = draw(st.sampled_from(WINDOW_SIDES[1:] if shifted else WINDOW_SIDES))
    ww = wh if square else draw(st.sampled_from(WINDOW_SIDES))
    if shifted is False:
        return (wh, ww), (0, 0)
    sh = draw(st.integers(0, wh - 1))
    sw = draw(st.integers(0, ww - 1))
    if shifted and sh == sw == 0:
        sh = wh // 2
    return (wh, ww), (sh, sw)


@st.composite
def problems(draw: st.DrawFn, shifted: bool | None = None, max_batch: int = 2) -> Problem:
    """A `Problem` with a map of 1 to about 2.5 windows per axis."""
    window, shift = draw(windows(shifted))
    height = draw(st.integers(1, 2 * window[0] + 3))
    width = draw(st.integers(1, 2 * window[1] + 3))
    return Problem(
        batch=draw(st.integers(1, max_batch)),
        height=height,
        width=width,
        num_heads=draw(st.integers(1, 3)),
        head_dim=draw(st.sampled_from((1, 2, 3, 5, 8))),
        window_size=window,
        shift_size=shift,
    )


@st.composite
def one_axis_shifts(draw: st.DrawFn, max_batch: int = 2) -> Problem:
    """A `Problem` shifted on one axis only, `(s, 0)` or `(0, s)` with `s > 0` (torchvision
    shifts so when a window covers the whole map on the other axis), with maps of 1 to about
    2.5 windows per axis."""
    shifted = draw(st.sampled_from(WINDOW_SIDES[1:]))
    other = draw(st.sampled_from(WINDOW_SIDES))
    s = draw(st.integers(1, shifted - 1))
    if draw(st.booleans()):
        window, shift = (shifted, other), (s, 0)
    else:
        window, shift = (other, shifted), (0, s)
    return Problem(
        batch=draw(st.integers(1, max_batch)),
        height=draw(st.integers(1, 2 * window[0] + 3)),
        width=draw(st.integers(1, 2 * window[1] + 3)),
        num_heads=draw(st.integers(1, 3)),
        head_dim=draw(st.sampled_from((1, 2, 3, 5, 8))),
        window_size=window,
        shift_size=shift,
    )


def seeded(seed: int) -> torch.Generator:
    """A CPU generator with a fixed seed."""
    return torch.Generator().manual_seed(seed)


@st.composite
def _wrapped_axis(draw: st.DrawFn, shifted: bool) -> tuple[int, int, int]:
    """`(window, shift, length)` for one axis. With `shifted`, the shift is positive and the
    last row of windows holds real (not padding) tokens on both sides of the wrap."""
    window = draw(st.sampled_from(WINDOW_SIDES[1:] if shifted else WINDOW_SIDES))
    if not shifted:
        return window, draw(st.integers(0, window - 1)), draw(st.integers(1, 2 * window + 3))
    shift = draw(st.integers(1, window - 1))
    tiles = draw(st.integers(1, 3))
    # Real tokens in the last row of windows: more than the `shift` wrapped ones.
    last = draw(st.integers(shift + 1, window))
    return window, shift, (tiles - 1) * window + last


@st.composite
def wrapped_problems(draw: st.DrawFn, axis: str) -> Problem:
    """A shifted `Problem` whose wrapped tokens share windows with real, unwrapped tokens on
    `axis` ("height", "width" or "corner" for both)."""
    wh, sh, height = draw(_wrapped_axis(axis in ("height", "corner")))
    ww, sw, width = draw(_wrapped_axis(axis in ("width", "corner")))
    return Problem(
        batch=draw(st.integers(1, 2)),
        height=height,
        width=width,
        num_heads=draw(st.integers(1, 3)),
        head_dim=draw(st.sampled_from((1, 2, 3, 5, 8))),
        window_size=(wh, ww),
        shift_size=(sh, sw),
    )


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Gives every parameter random values that make every part of the module matter (the
    default init leaves the bias table and the biases near zero): weights with standard
    deviation `1 / sqrt(fan_in)`, so activations stay of order one, vectors and the bias table
    with standard deviation 0.5."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            fan_in = p[0].numel() if p.dim() > 1 and "bias_table" not in name else 4
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) / fan_in**0.5)
    return module
