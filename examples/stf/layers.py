# SPDX-License-Identifier: Apache-2.0
"""Building blocks of the Symmetrical TransFormer (STF): patch embedding, patch merging and
splitting, and a stage of Swin blocks.

Everything here works on channels-last maps `(B, H, W, C)` and accepts any `H, W >= 1`: odd
maps are padded with zeros at the bottom and right before a merge, as in the official code.
The attention itself is `winattn.SwinBlock`. State-dict names follow the official STF code
(`proj`, `norm`, `reduction`, `blocks.N.*`, `downsample.*`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from winattn import SwinBlock

__all__ = ["PatchEmbed", "PatchMerging", "PatchSplit", "SwinStage", "run_maybe_checkpointed"]


def run_maybe_checkpointed(module: nn.Module, x: Tensor, enabled: bool) -> Tensor:
    """Runs `module(x)`, through activation checkpointing when `enabled` and grads are on.

    Args:
        module: any single-input module.
        x: its input.
        enabled: whether to recompute the activations in the backward pass instead of
            storing them.

    Returns:
        `module(x)`.
    """
    if enabled and torch.is_grad_enabled():
        return checkpoint(module, x, use_reentrant=False)
    return module(x)


class PatchEmbed(nn.Module):
    """Cuts an image into `patch_size` patches and embeds each one with a strided conv.

    The image is padded with zeros at the bottom and right to a multiple of the patch first.

    Args:
        patch_size: side of a square patch.
        in_chans: channels of the image.
        embed_dim: channels of the embedding.
        norm: whether to LayerNorm the embedding (`patch_norm` in the official code).

    Shapes:
        x: `(B, in_chans, H, W)` -> `(B, ceil(H / p), ceil(W / p), embed_dim)`.

    Example:
        >>> PatchEmbed(patch_size=2, embed_dim=48)(torch.randn(1, 3, 7, 10)).shape
        torch.Size([1, 4, 5, 48])
    """

    def __init__(self, patch_size: int = 2, in_chans: int = 3, embed_dim: int = 48, norm: bool = True) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else None

    def forward(self, x: Tensor) -> Tensor:
        p = self.patch_size
        x = F.pad(x, (0, -x.shape[-1] % p, 0, -x.shape[-2] % p))  # (B, C, Hp, Wp)
        x = self.proj(x).permute(0, 2, 3, 1)  # (B, H/p, W/p, embed_dim)
        return x if self.norm is None else self.norm(x)


class PatchMerging(nn.Module):
    """Halves the resolution and doubles the channels: 2x2 neighbours are concatenated,
    normalised and projected by a linear layer without bias.

    The concatenation order is (top-left, bottom-left, top-right, bottom-right), as in Swin.

    Args:
        dim: input channels `C`.

    Shapes:
        x: `(B, H, W, C)` -> `(B, ceil(H / 2), ceil(W / 2), 2C)`.

    Example:
        >>> PatchMerging(dim=48)(torch.randn(1, 5, 8, 48)).shape
        torch.Size([1, 3, 4, 96])
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))  # (B, Hp, Wp, C), even sides
        x = rearrange(x, "b (h i) (w j) c -> b h w (j i c)", i=2, j=2)  # (B, Hp/2, Wp/2, 4C)
        return self.reduction(self.norm(x))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class PatchSplit(nn.Module):
    """Doubles the resolution and halves the channels: normalise, project `C -> 2C` linearly
    without bias, then pixel-shuffle by 2 (the inverse of `PatchMerging` in the STF decoder).

    Args:
        dim: input channels `C` (even).

    Shapes:
        x: `(B, H, W, C)` -> `(B, 2H, 2W, C / 2)`.

    Example:
        >>> PatchSplit(dim=96)(torch.randn(1, 3, 4, 96)).shape
        torch.Size([1, 6, 8, 48])
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"PatchSplit halves the channels, so dim must be even, got {dim=}.")
        self.dim = dim
        self.reduction = nn.Linear(dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.reduction(self.norm(x))  # (B, H, W, 2C)
        # channel (c, i, j) goes to pixel (2h + i, 2w + j), as nn.PixelShuffle(2) does
        return rearrange(x, "b h w (c i j) -> b (h i) (w j) c", i=2, j=2)  # (B, 2H, 2W, C/2)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class SwinStage(nn.Module):
    """`depth` Swin blocks alternating plain and shifted windows, then an optional resampling
    layer (`PatchMerging` in the encoder, `PatchSplit` in the decoder).

    Block `i` shifts by `window_size // 2` when `i` is odd.

    Args:
        dim: channels `C` of the blocks.
        depth: number of blocks.
        num_heads: attention heads of every block.
        window_size: attention window.
        mlp_ratio: hidden width of the MLPs over `dim`.
        qkv_bias: whether the qkv projections have a bias.
        qk_scale: logit scale; defaults to `head_dim ** -0.5`.
        drop: dropout after projections and in the MLPs.
        attn_drop: dropout on the attention weights.
        drop_path: stochastic depth rate, one per block or one for all.
        downsample: `PatchMerging`, `PatchSplit` or None, built as `downsample(dim)`.
        use_checkpoint: recompute each block's activations in the backward pass.

    Shapes:
        x: `(B, H, W, C)` -> `(B, H', W', C')`, resampled by `downsample`.

    Example:
        >>> stage = SwinStage(dim=48, depth=2, num_heads=3, window_size=4, downsample=PatchMerging)
        >>> stage(torch.randn(1, 9, 6, 48)).shape
        torch.Size([1, 5, 3, 96])
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int = 4,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float | Sequence[float] = 0.0,
        downsample: type[PatchMerging] | type[PatchSplit] | None = None,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(drop_path, (int, float)):
            drop_path = [float(drop_path)] * depth
        if len(drop_path) != depth:
            raise ValueError(f"drop_path needs one rate per block, got {len(drop_path)} for {depth=}.")
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim,
                num_heads,
                window_size=window_size,
                shift_size=0 if i % 2 == 0 else window_size // 2,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                drop=drop,
                attn_drop=attn_drop,
                drop_path=drop_path[i],
            )
            for i in range(depth)
        )
        self.downsample = downsample(dim) if downsample is not None else None

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = run_maybe_checkpointed(block, x, self.use_checkpoint and self.training)
        return x if self.downsample is None else self.downsample(x)

