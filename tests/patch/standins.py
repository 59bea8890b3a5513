# SPDX-License-Identifier: Apache-2.0
"""Small stand-ins for Swin blocks of research code that winattn knows only by structure.

* `SwinTransformerBlock`/`WindowAttention`: the SwinT-ChARM-like block of
  `benchmarks/swin_hosts.py` (shared with the benchmark).
* `RollThenPadBlock`: the same block rolling before it pads (a different computation wherever
  a map needs padding and a shift).
* `SwinIRBlock`, `RSTB`, `CausalAttentionModule`, `TicLike`: a TIC-like codec (Lu et al.):
  SwinIR-style blocks called as `block(x, x_size)`, and a causal neighbourhood attention in the
  context model that projects `dim -> 2 * dim`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.swin_hosts import Mlp, SwinTransformerBlock, WindowAttention
from winattn.functional import padded_size, shifted_window_mask, window_partition, window_reverse


class RollThenPadBlock(SwinTransformerBlock):
    """As `SwinTransformerBlock`, but rolls the map before padding it."""

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        _, h, w, c = x.shape
        ws, s = self.window_size, self.shift_size
        hp, wp = padded_size((h, w), ws)
        x = F.pad(torch.roll(x, (-s, -s), dims=(1, 2)), (0, 0, 0, wp - w, 0, hp - h))  # (B, Hp, Wp, C)
        out = self.attn(window_partition(x, ws).flatten(1, 2), mask=self.attn_mask).view(-1, ws, ws, c)
        return torch.roll(window_reverse(out, ws, hp, wp)[:, :h, :w], (s, s), dims=(1, 2))


class SwinIRBlock(SwinTransformerBlock):
    """SwinIR-style block (as in TIC): `block(x, x_size)`, maps that are multiples of the window."""

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        (h, w), (b, length, c) = x_size, x.shape
        if h % self.window_size or w % self.window_size:
            raise ValueError("the map must be a multiple of the window")
        mask = shifted_window_mask((h, w), self.window_size, self.shift_size) if self.shift_size else None
        ws, s = self.window_size, self.shift_size
        y = torch.roll(self.norm1(x).view(b, h, w, c), (-s, -s), dims=(1, 2))
        out = self.attn(window_partition(y, ws).flatten(1, 2), mask=mask).view(-1, ws, ws, c)
        y = torch.roll(window_reverse(out, ws, h, w), (s, s), dims=(1, 2)).reshape(b, length, c)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class RSTB(nn.Module):
    """Two SwinIR blocks (no shift, then a half-window shift) on NCHW maps."""

    def __init__(self, dim: int, resolution: tuple[int, int], window_size: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinIRBlock(dim, resolution, 2, window_size, shift) for shift in (0, window_size // 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        for block in self.blocks:
            y = block(y, (h, w))
        return x + y.transpose(1, 2).reshape(b, c, h, w)


class CausalAttentionModule(nn.Module):
    """Each position attends to the causal part of its `block_len x block_len` neighbourhood."""

    def __init__(self, dim: int, out_dim: int, block_len: int = 5, num_heads: int = 2) -> None:
        super().__init__()
        self.block_len, self.num_heads, self.scale = block_len, num_heads, (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * block_len - 1) ** 2, num_heads))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, out_dim)
        n = block_len * block_len
        self.register_buffer("causal", torch.arange(n) > n // 2)  # (N,): positions after the centre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n, p = self.block_len**2, self.block_len // 2
        patches = F.unfold(x, self.block_len, padding=p).view(b, c, n, h * w).permute(0, 3, 2, 1)  # (B, HW, N, C)
        q, k, v = self.qkv(patches).chunk(3, dim=-1)
        q = q[:, :, n // 2 : n // 2 + 1]  # (B, HW, 1, C): the centre
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, HW, 1, N)
        attn = attn.masked_fill(self.causal, float("-inf")).softmax(-1)
        out = self.proj((attn @ v).squeeze(2))  # (B, HW, out_dim)
        return out.transpose(1, 2).reshape(b, -1, h, w)


class TicLike(nn.Module):
    """A TIC-like codec core: analysis with Swin blocks, and a causal context model."""

    def __init__(self, dim: int = 16, window_size: int = 4) -> None:
        super().__init__()
        self.g_a = nn.Sequential(nn.Conv2d(3, dim, 3, 2, 1), RSTB(dim, (8, 8), window_size))
        self.context_prediction = CausalAttentionModule(dim, 2 * dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.g_a(x)
        return y, self.context_prediction(y)


class StfSwinTransformerBlock(nn.Module):
    """The official STF block's layout: `H`, `W` set by the caller, `block(x, mask_matrix)` on
    tokens, pad then roll, the caller's mask for the shifted windows."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift_size: int) -> None:
        super().__init__()
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.drop_path = nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim)
        self.H: int | None = None
        self.W: int | None = None

    def forward(self, x: torch.Tensor, mask_matrix: torch.Tensor) -> torch.Tensor:
        (b, length, c), h, w = x.shape, self.H, self.W
        ws, s = self.window_size, self.shift_size
        hp, wp = padded_size((h, w), ws)
        y = F.pad(self.norm1(x).view(b, h, w, c), (0, 0, 0, wp - w, 0, hp - h))  # (B, Hp, Wp, C)
        y = torch.roll(y, (-s, -s), dims=(1, 2))
        out = self.attn(window_partition(y, ws).flatten(1, 2), mask=mask_matrix if s else None)
        y = torch.roll(window_reverse(out.view(-1, ws, ws, c), ws, hp, wp), (s, s), dims=(1, 2))
        x = x + self.drop_path(y[:, :h, :w].reshape(b, length, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class StfBasicLayer(nn.Module):
    """STF's `BasicLayer`: builds the shifted-window mask once, sets `H`, `W` on its blocks."""

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        self.window_size = window_size
        self.blocks = nn.ModuleList(
            StfSwinTransformerBlock(dim, num_heads, window_size, s) for s in (0, window_size // 2)
        )

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        ws = self.window_size
        mask = shifted_window_mask(padded_size((h, w), ws), ws, ws // 2)  # (nW, N, N)
        for block in self.blocks:
            block.H, block.W = h, w
            x = block(x, mask)
        return x
