# SPDX-License-Identifier: Apache-2.0
"""Computations of the exact backend whose bits are compared across environments.

`python -m tests.backends.exact_env OUT THREADS` runs them with `torch.set_num_threads(THREADS)`
and saves the outputs to OUT with `torch.save`; `test_exact.py` runs it under different
`ATEN_CPU_CAPABILITY` values and thread counts and compares the files with `torch.equal`.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from winattn.functional import window_attention
from winattn.modules import WindowAttention


class ChannelContext(nn.Module):
    """A small model shaped like TCM's channel context: the already decoded latent slices
    (integers, as a codec's quantised latent is) go through a 1x1 convolution, a shifted
    window attention block on the `exact` backend and a 1x1 convolution to the mean and scale
    of the next slice.

    Every float layer besides the attention is exact by construction here: the model runs in
    float64 and its weights are multiples of 2**-6 of a few bits, so each product and sum is
    representable and the order of the sums does not matter. (A real codec needs integer
    entropy networks for that; see docs/portability.md.)
    """

    def __init__(self, in_ch: int = 8, dim: int = 16, out_ch: int = 8) -> None:
        super().__init__()
        factory = {"dtype": torch.float64}
        self.inp = nn.Conv2d(in_ch, dim, 1, **factory)
        self.attn = WindowAttention(dim, num_heads=2, window_size=4, shift_size=2, backend="exact", **factory)
        self.out = nn.Conv2d(dim, 2 * out_ch, 1, **factory)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randint(-16, 17, p.shape, generator=g).to(p.dtype) * 2.0**-6)

    def forward(self, y_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
            y_hat: `(B, in_ch, H, W)`, integer-valued.

        Returns:
            means and scales, `(B, out_ch, H, W)` each.
        """
        x = self.inp(y_hat).permute(0, 2, 3, 1)  # (B, H, W, dim)
        x = x + self.attn(x)
        means, scales = self.out(x.permute(0, 3, 1, 2)).chunk(2, dim=1)  # (B, out_ch, H, W) each
        return means, scales


def _dyadic(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """float32 values in [-4, 4), multiples of 2**-10. Built from integers: `torch.randn`
    itself is not bit-identical across instruction sets (its vectorised log and cos)."""
    return torch.randint(-(1 << 12), 1 << 12, shape, generator=g).float() * 2.0**-10


def attention_output() -> torch.Tensor:
    """The exact backend on a padded, shifted map with a bias table, in float32."""
    g = torch.Generator().manual_seed(0)
    qkv = _dyadic((2, 13, 18, 3 * 64), g)  # (B, H, W, 3C)
    table = _dyadic((13 * 13, 4), g)
    return window_attention(qkv, 4, 7, 3, bias_table=table, backend="exact")


def model_output() -> torch.Tensor:
    """`ChannelContext` on an integer latent: means and scales stacked."""
    g = torch.Generator().manual_seed(2)
    y_hat = torch.randint(-8, 9, (1, 8, 11, 14), generator=g).to(torch.float64)
    with torch.no_grad():
        return torch.stack(ChannelContext()(y_hat))


def main(path: str, threads: int) -> None:
    torch.set_num_threads(threads)
    with torch.no_grad():
        outputs = {"attention": attention_output(), "model": model_output()}
    outputs["capability"] = torch.backends.cpu.get_cpu_capability()
    outputs["threads"] = torch.get_num_threads()
    torch.save(outputs, path)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
