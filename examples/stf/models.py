# SPDX-License-Identifier: Apache-2.0
"""The two codecs of "The Devil Is in the Details: Window-based Attention for Image
Compression" (Zou, Song, Zhang, CVPR 2022), built from winattn's public modules.

* `SymmetricalTransFormer` ("stf"): Swin-transformer analysis and synthesis.
* `WACNN` ("cnn"): a CNN with GDN and four window-attention blocks.

Both share the channel-wise autoregressive entropy model of `examples.stf.entropy`. With
default arguments their state dicts have the names and shapes of the official models
(github.com/Googolxx/STF) built on CompressAI 1.2.8, less the `relative_position_index`
buffers, which winattn computes instead of storing (checkpoints that carry them still load
strictly; see `examples.stf.loader` for official checkpoint files).

Interface (CompressAI's):

* `model(x)` with `x: (B, 3, H, W)` in `[0, 1]`, any `H, W >= 1` ->
  `{"x_hat": (B, 3, H, W), "likelihoods": {"y": (B, M, h, w), "z": (B, Z, h', w')}}`.
* `model.update(force=False)`: fill the entropy coder's tables once after training/loading.
* `model.compress(x)` -> `{"strings": [y_strings, z_strings], "shape": (H, W)}`: two lists
  with one `bytes` per image (each image decodes on its own), and the original size.
* `model.decompress(strings, shape)` -> `{"x_hat": (B, 3, H, W)}` clamped to `[0, 1]`; for
  one image of a batch pass `[[y_strings[b]], [z_strings[b]]]`.
* `model.aux_loss()`: the entropy bottleneck's quantile loss (its own optimizer).
* `model.use_checkpoint = True`: activation checkpointing of the heavy transforms in training.
* fp16/bf16: `model.update()` then `model.half()` (or `.to(torch.bfloat16)`) works, including
  the entropy coder.

Example:
    >>> model = WACNN(N=32, M=40, num_slices=5, max_support_slices=2).eval()
    >>> _ = model.update()
    >>> x = torch.rand(1, 3, 40, 56)
    >>> out = model.compress(x)
    >>> model.decompress(out["strings"], out["shape"])["x_hat"].shape
    torch.Size([1, 3, 40, 56])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from compressai.layers import GDN
from compressai.models.utils import conv, deconv
from torch import Tensor, nn

from winattn import WindowAttentionBlock

from .entropy import ChannelARCodec, channels_last, hyper_widths
from .layers import (
    PatchEmbed,
    PatchMerging,
    PatchSplit,
    SwinStage,
    run_maybe_checkpointed,
)

__all__ = ["SymmetricalTransFormer", "WACNN"]

_CC_HIDDEN = (224, 176, 128, 64)

#: In eval mode on the CPU, (inverse) GDN runs on bands of rows of about this many bytes.
GDN_BAND_BYTES = 2 * 1024 * 1024


class _GDN(GDN):
    """CompressAI's `GDN` (same parameters, state dict and numbers) that, when autograd does
    not record on the CPU, runs a few rows of the map at a time: the square, the 1x1
    convolution, the (r)sqrt and the product of each band stay in cache, where those of a
    whole high-resolution map are four fresh allocations whose pages fault in on every call.
    Each pixel goes through the same operations, so the bits are the same; about 2x faster
    at 128x192 and 256x384 on two cores.

    Shapes:
        x: `(B, C, H, W)` -> `(B, C, H, W)`, in the memory format of `x`.
    """

    def _get_name(self) -> str:  # printed models read as the official ones
        return "GDN"

    def forward(self, x: Tensor) -> Tensor:
        if (
            x.device.type != "cpu"
            or x.dim() != 4
            or x.numel() == 0
            or (torch.is_grad_enabled() and (x.requires_grad or self.beta.requires_grad or self.gamma.requires_grad))
            or torch.compiler.is_compiling()
            or torch.is_autocast_enabled("cpu")
        ):
            return super().forward(x)
        c, h, w = x.shape[1:]
        beta = self.beta_reparam(self.beta)
        gamma = self.gamma_reparam(self.gamma).reshape(c, c, 1, 1)
        out = torch.empty_like(x)
        step = max(1, GDN_BAND_BYTES // (x.shape[0] * c * w * x.element_size()))
        for top in range(0, h, step):
            band = x[:, :, top : top + step]
            norm = F.conv2d(band * band, gamma, beta)
            norm = norm.sqrt_() if self.inverse else norm.rsqrt_()
            torch.mul(band, norm, out=out[:, :, top : top + step])
        return out


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {name}={value!r}.")


class SymmetricalTransFormer(ChannelARCodec):
    """STF: a Swin-transformer encoder and a mirrored decoder around the channel-wise
    autoregressive entropy model.

    Encoder: `PatchEmbed` (stride `patch_size`), then one `SwinStage` per entry of `depths`
    with `PatchMerging` between stages; the latent has `M = embed_dim * 2 ** (L - 1)` channels
    at `1 / (patch_size * 2 ** (L - 1))` of the image. Decoder: the same stages in reverse
    order with `PatchSplit`, then a 5x5 conv, pixel shuffle and a 3x3 conv to RGB.

    Args:
        patch_size: patch side of the embedding.
        in_chans: image channels.
        embed_dim: channels after the embedding.
        depths: Swin blocks per stage.
        num_heads: attention heads per stage.
        window_size: attention window of every block (every second block shifts by half).
        num_slices: slices of the latent in the entropy model.
        max_support_slices: decoded slices used as context; `num_slices // 2` when None,
            negative for all.
        mlp_ratio: MLP width over the block width.
        qkv_bias: whether qkv projections have a bias.
        qk_scale: logit scale; `head_dim ** -0.5` when None.
        drop_rate: dropout after projections and in MLPs.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth, rising linearly to this over the blocks.
        patch_norm: LayerNorm after the patch embedding.
        hyper_channels: channels `Z` of the hyper-latent; `embed_dim * 4` when None.
        cc_hidden: hidden widths of the slice transforms.
        use_checkpoint: activation checkpointing of the Swin blocks while training.

    Shapes:
        x: `(B, in_chans, H, W)` -> x_hat `(B, in_chans, H, W)`.

    Example:
        >>> model = SymmetricalTransFormer(embed_dim=16, depths=(1, 1, 1, 1),
        ...     num_heads=(1, 2, 2, 4), num_slices=4)
        >>> model(torch.rand(1, 3, 50, 70))["x_hat"].shape
        torch.Size([1, 3, 50, 70])
    """

    def __init__(
        self,
        patch_size: int = 2,
        in_chans: int = 3,
        embed_dim: int = 48,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 4,
        num_slices: int = 12,
        max_support_slices: int | None = None,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        patch_norm: bool = True,
        hyper_channels: int | None = None,
        cc_hidden: Sequence[int] = _CC_HIDDEN,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        _check_positive(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, window_size=window_size, num_slices=num_slices)
        depths, num_heads = tuple(depths), tuple(num_heads)
        if len(depths) != len(num_heads) or not depths:
            raise ValueError(
                f"depths and num_heads need one entry per stage, got {depths=}, {num_heads=}."
            )
        num_layers = len(depths)
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.num_layers = num_layers
        self.latent_stride = patch_size * 2 ** (num_layers - 1)
        latent_channels = embed_dim * 2 ** (num_layers - 1)
        hyper_channels = embed_dim * 4 if hyper_channels is None else hyper_channels

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, norm=patch_norm)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        shared = {
            "window_size": window_size,
            "mlp_ratio": mlp_ratio,
            "qkv_bias": qkv_bias,
            "qk_scale": qk_scale,
            "drop": drop_rate,
            "attn_drop": attn_drop_rate,
            "use_checkpoint": use_checkpoint,
        }
        self.layers = nn.ModuleList(
            SwinStage(
                embed_dim * 2**i,
                depths[i],
                num_heads[i],
                drop_path=dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                downsample=PatchMerging if i < num_layers - 1 else None,
                **shared,
            )
            for i in range(num_layers)
        )
        # the decoder mirrors the encoder; its drop-path rates follow the reversed depths
        rdepths, rheads = depths[::-1], num_heads[::-1]
        self.syn_layers = nn.ModuleList(
            SwinStage(
                embed_dim * 2 ** (num_layers - 1 - i),
                rdepths[i],
                rheads[i],
                drop_path=dpr[sum(rdepths[:i]) : sum(rdepths[: i + 1])],
                downsample=PatchSplit if i < num_layers - 1 else None,
                **shared,
            )
            for i in range(num_layers)
        )
        self.end_conv = nn.Sequential(
            nn.Conv2d(embed_dim, embed_dim * patch_size**2, kernel_size=5, padding=2),
            nn.PixelShuffle(patch_size),
            nn.Conv2d(embed_dim, in_chans, kernel_size=3, padding=1),
        )
        widths = hyper_widths(latent_channels, hyper_channels)
        self._build_entropy_model(
            latent_channels,
            hyper_channels,
            num_slices,
            num_slices // 2 if max_support_slices is None else max_support_slices,
            cc_hidden,
            hyper_synthesis_chain=[*widths[::-1], latent_channels],
        )
        # conv weights in the layout the convs run in (see examples.stf.entropy), so that
        # no call has to copy them
        self.to(memory_format=torch.channels_last)

    @property
    def use_checkpoint(self) -> bool:
        """Whether the Swin blocks use activation checkpointing while training."""
        return all(stage.use_checkpoint for stage in (*self.layers, *self.syn_layers))

    @use_checkpoint.setter
    def use_checkpoint(self, value: bool) -> None:
        for stage in (*self.layers, *self.syn_layers):
            stage.use_checkpoint = bool(value)

    def analysis(self, x: Tensor) -> Tensor:
        """`x: (B, 3, H, W)` -> `y: (B, M, ceil(H / s), ceil(W / s))`."""
        x = self.pos_drop(self.patch_embed(channels_last(x)))  # (B, H/p, W/p, C)
        for stage in self.layers:
            x = stage(x)
        return x.permute(0, 3, 1, 2)  # (B, M, h, w), channels-last in memory: a free view

    def synthesis(self, y_hat: Tensor) -> Tensor:
        """`y_hat: (B, M, h, w)` -> `(B, 3, s * h, s * w)`."""
        x = channels_last(y_hat).permute(0, 2, 3, 1)  # (B, h, w, M), a contiguous view
        for stage in self.syn_layers:
            x = stage(x)
        return self.end_conv(x.permute(0, 3, 1, 2))  # (B, 3, s*h, s*w), channels-last convs


class WACNN(ChannelARCodec):
    """WACNN: a convolutional codec (GDN) with window-attention blocks around the channel-wise
    autoregressive entropy model.

    Encoder: four stride-2 5x5 convs (GDN after the first three), with a window-attention
    block after the second (window 8, shift 4, at 1/4 of the image) and after the fourth
    (window 4, shift 2, on the latent). The decoder mirrors it with transposed convs and
    inverse GDN.

    Args:
        N: channels of the transforms and of the hyper-latent.
        M: channels of the latent.
        num_slices: slices of the latent in the entropy model.
        max_support_slices: decoded slices used as context; `num_slices // 2` when None,
            negative for all.
        num_heads: attention heads of the window-attention blocks.
        window_sizes: windows at 1/4 resolution and on the latent.
        shift_sizes: shifts at 1/4 resolution and on the latent.
        cc_hidden: hidden widths of the slice transforms.
        use_checkpoint: activation checkpointing of the transforms while training.

    Shapes:
        x: `(B, 3, H, W)` -> x_hat `(B, 3, H, W)`.

    Example:
        >>> model = WACNN(N=32, M=40, num_slices=5)
        >>> model(torch.rand(2, 3, 50, 70))["x_hat"].shape
        torch.Size([2, 3, 50, 70])
    """

    latent_stride = 16

    def __init__(
        self,
        N: int = 192,
        M: int = 320,
        num_slices: int = 10,
        max_support_slices: int | None = None,
        num_heads: int = 8,
        window_sizes: tuple[int, int] = (8, 4),
        shift_sizes: tuple[int, int] = (4, 2),
        cc_hidden: Sequence[int] = _CC_HIDDEN,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        _check_positive(N=N, M=M, num_slices=num_slices, num_heads=num_heads)
        self.N, self.M = N, M
        self.use_checkpoint = use_checkpoint
        (w_hi, w_lo), (s_hi, s_lo) = window_sizes, shift_sizes

        def attention(dim: int, window: int, shift: int) -> WindowAttentionBlock:
            return WindowAttentionBlock(dim, num_heads=num_heads, window_size=window, shift_size=shift)

        self.g_a = nn.Sequential(
            conv(3, N, kernel_size=5, stride=2),
            _GDN(N),
            conv(N, N, kernel_size=5, stride=2),
            _GDN(N),
            attention(N, w_hi, s_hi),
            conv(N, N, kernel_size=5, stride=2),
            _GDN(N),
            conv(N, M, kernel_size=5, stride=2),
            attention(M, w_lo, s_lo),
        )
        self.g_s = nn.Sequential(
            attention(M, w_lo, s_lo),
            deconv(M, N, kernel_size=5, stride=2),
            _GDN(N, inverse=True),
            deconv(N, N, kernel_size=5, stride=2),
            _GDN(N, inverse=True),
            attention(N, w_hi, s_hi),
            deconv(N, N, kernel_size=5, stride=2),
            _GDN(N, inverse=True),
            deconv(N, 3, kernel_size=5, stride=2),
        )
        widths = hyper_widths(M, N)
        self._build_entropy_model(
            M,
            N,
            num_slices,
            num_slices // 2 if max_support_slices is None else max_support_slices,
            cc_hidden,
            hyper_synthesis_chain=[N, *widths[::-1]],
        )
        # conv weights in the layout the convs run in (see examples.stf.entropy), so that
        # no call has to copy them
        self.to(memory_format=torch.channels_last)

    def _run(self, transform: nn.Sequential, x: Tensor) -> Tensor:
        enabled = self.use_checkpoint and self.training
        for layer in transform:
            x = run_maybe_checkpointed(layer, x, enabled)
        return x

    def analysis(self, x: Tensor) -> Tensor:
        """`x: (B, 3, H, W)` -> `y: (B, M, ceil(H / 16), ceil(W / 16))`, channels-last."""
        return self._run(self.g_a, channels_last(x))

    def synthesis(self, y_hat: Tensor) -> Tensor:
        """`y_hat: (B, M, h, w)` -> `(B, 3, 16 h, 16 w)`, channels-last."""
        return self._run(self.g_s, channels_last(y_hat))
