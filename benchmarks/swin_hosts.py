# SPDX-License-Identifier: Apache-2.0
"""A SwinT-ChARM-like codec core whose Swin blocks are its own classes (no timm, no STF), as
research code re-implements them: winattn can only know them by structure.

`SwinTransformerBlock`/`WindowAttention` follow the Swin paper's block with padding: tokens
`(B, H * W, C)` of a fixed `input_resolution`, a precomputed `attn_mask`, pad, then roll,
partition, attend, reverse, roll back, crop; pre-norm residuals. `SwinTCharmLike` stacks them
as SwinT-ChARM's transforms do (four stages each way, a resampling convolution then Swin blocks),
at a small configuration, for one image size. Used by `benchmarks/patch_models.py` and by the
tests of `patch_model` (`tests/patch/`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from winattn.functional import padded_size, shifted_window_mask, window_partition, window_reverse

__all__ = ["HyperLatentCodec", "Mlp", "SwinTCharmLike", "SwinTransformerBlock", "WindowAttention"]


def _swin_index(window: int) -> torch.Tensor:
    coords = torch.stack(
        torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + window - 1  # (N, N, 2)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]  # (N, N)


class WindowAttention(nn.Module):
    """Swin-v1 window attention on windows `(B * nW, N, C)`, with an optional `(nW, N, N)` mask."""

    def __init__(
        self, dim: int, window_size: int, num_heads: int, out_dim: int | None = None
    ) -> None:
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, (window_size, window_size), num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.randn((2 * window_size - 1) ** 2, num_heads) * 0.5
        )
        self.register_buffer("relative_position_index", _swin_index(window_size))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, out_dim or dim)
        self.proj_drop = nn.Dropout(0.0)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        bw, n, c = x.shape
        qkv = (
            self.qkv(x)
            .reshape(bw, n, 3, self.num_heads, c // self.num_heads)
            .permute(2, 0, 3, 1, 4)
        )
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]  # (B*nW, heads, N, d)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        attn = q @ k.transpose(-2, -1) + bias.reshape(n, n, -1).permute(
            2, 0, 1
        )  # (B*nW, heads, N, N)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.num_heads, n, n) + mask[None, :, None]
            attn = attn.view(bw, self.num_heads, n, n)
        out = (
            (self.attn_drop(self.softmax(attn)) @ v).transpose(1, 2).reshape(bw, n, c)
        )  # (B*nW, N, C)
        return self.proj_drop(self.proj(out))


class Mlp(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinTransformerBlock(nn.Module):
    """SwinT-ChARM-like block: tokens of `input_resolution`, padded, then shifted."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int = 4,
        shift_size: int = 0,
    ) -> None:
        super().__init__()
        self.dim, self.input_resolution = dim, input_resolution
        if min(input_resolution) <= window_size:
            shift_size, window_size = 0, min(input_resolution)
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.drop_path = nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim)
        hp, wp = padded_size(input_resolution, window_size)
        mask = shifted_window_mask((hp, wp), window_size, shift_size) if shift_size else None
        self.register_buffer("attn_mask", mask)

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        """`(B, H, W, C)` -> `(B, H, W, C)`: pad, roll, partition, attend, reverse, roll back, crop."""
        _, h, w, c = x.shape
        ws, s = self.window_size, self.shift_size
        hp, wp = padded_size((h, w), ws)
        x = torch.roll(
            F.pad(x, (0, 0, 0, wp - w, 0, hp - h)), (-s, -s), dims=(1, 2)
        )  # (B, Hp, Wp, C)
        out = self.attn(window_partition(x, ws).flatten(1, 2), mask=self.attn_mask).view(
            -1, ws, ws, c
        )
        return torch.roll(window_reverse(out, ws, hp, wp), (s, s), dims=(1, 2))[:, :h, :w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (h, w), (b, length, c) = self.input_resolution, x.shape
        shortcut = x
        x = self._attention(self.norm1(x).view(b, h, w, c)).reshape(b, length, c)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SwinStage(nn.Module):
    """Analysis (`up=False`): a stride-2 convolution from `cin` to `dim` channels, then Swin
    blocks; synthesis (`up=True`): Swin blocks on `dim` channels, then a stride-2 transposed
    convolution to `cout`. Blocks alternate no shift and a half-window shift, on NCHW maps."""

    def __init__(
        self, dim: int, other: int, resolution: tuple[int, int], depth: int, window: int, up: bool
    ) -> None:
        super().__init__()
        self.up = up
        self.resample = nn.ConvTranspose2d(dim, other, 2, 2) if up else nn.Conv2d(other, dim, 2, 2)
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim, resolution, max(dim // 32, 1), window, (i % 2) * (window // 2)
            )
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.up:
            x = self.resample(x)
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        for block in self.blocks:
            tokens = block(tokens)
        x = tokens.transpose(1, 2).reshape(b, c, h, w)  # (B, C, H, W)
        return self.resample(x) if self.up else x


class SwinTCharmLike(nn.Module):
    """`g_a` and `g_s` of SwinT-ChARM's shape (4 stages each, depths 2, 2, 6, 2, window 8), and a
    `latent_codec` with convolutional `h_a`, `h_s`, built for images of `image_size` (a
    multiple of 16).

    Example:
        >>> model = SwinTCharmLike((64, 64), dims=(16, 16, 16, 16), depths=(2, 2, 2, 2), window=4)
        >>> model.g_a(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 16, 4, 4])
    """

    def __init__(
        self,
        image_size: tuple[int, int] = (256, 256),
        dims: tuple[int, ...] = (128, 192, 256, 320),
        depths: tuple[int, ...] = (2, 2, 6, 2),
        window: int = 8,
    ) -> None:
        super().__init__()
        h, w = image_size
        n = len(dims)
        if h % 2**n or w % 2**n:
            raise ValueError(f"image_size={image_size} must be a multiple of {2**n}.")
        res = [(h // 2 ** (i + 1), w // 2 ** (i + 1)) for i in range(n)]
        ins = (3, *dims[:-1])
        self.g_a = nn.Sequential(
            *(SwinStage(dims[i], ins[i], res[i], depths[i], window, up=False) for i in range(n))
        )
        self.g_s = nn.Sequential(
            *(
                SwinStage(dims[i], ins[i], res[i], depths[i], window, up=True)
                for i in reversed(range(n))
            )
        )
        self.latent_codec = HyperLatentCodec(dims[-1])


class HyperLatentCodec(nn.Module):
    """A convolutional hyperprior's transforms: `h_s(round(h_a(y)))` -> means and scales."""

    def __init__(self, m: int) -> None:
        super().__init__()
        self.h_a = nn.Sequential(nn.Conv2d(m, m, 3, 1, 1), nn.GELU(), nn.Conv2d(m, m, 3, 2, 1))
        self.h_s = nn.Sequential(
            nn.ConvTranspose2d(m, m, 2, 2), nn.GELU(), nn.Conv2d(m, 2 * m, 3, 1, 1)
        )

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.h_s(torch.round(self.h_a(y)))
