# SPDX-License-Identifier: Apache-2.0
"""The entropy model shared by both codecs of the paper: a hyperprior with a channel-wise
autoregressive Gaussian model and latent residual prediction (Minnen & Singh, 2020).

`ChannelARCodec` owns everything between the latent `y` and the bits: the hyper transforms
(`h_a`, `h_mean_s`, `h_scale_s`), the per-slice transforms (`cc_mean_transforms`,
`cc_scale_transforms`, `lrp_transforms`), CompressAI's `EntropyBottleneck` for `z` and
`GaussianConditional` for `y`. Subclasses supply the image transforms (`analysis`,
`synthesis`) and the latent stride.

The slice loop is written once (`_decode_slices`) and driven three ways, so that `forward`,
`compress` and `decompress` cannot drift apart: every slice is quantised as
`round(y - mu) + mu`, in all three, in the model's dtype. Hence `decompress(compress(x))`
equals the eval-mode `forward(x)["x_hat"].clamp(0, 1)` exactly.

Outside training the loop runs image by image: the convolutions' rounding can depend on the
batch size, and the entropy coder's indexes come from those convolutions, so a stream must be
decoded with exactly the numbers it was encoded with, whichever images shared its batch.

Every map between the latent and the bits is kept channels-last (`torch.channels_last`, NCHW
shape with the channels innermost in memory): the CPU convolutions run faster in that layout,
and a conv's rounding depends on the memory format of its input, so `forward`, `compress` and
`decompress` all convert the same tensors at the same places (`channels_last`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.entropy_models import EntropyBottleneck, EntropyModel, GaussianConditional
from compressai.models import CompressionModel
from compressai.ops import quantize_ste
from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["ChannelARCodec", "OneDNNConv2d", "channels_last", "hyper_widths", "scale_indexes"]

#: CompressAI's default likelihood lower bound, used by both entropy models here.
_LIKELIHOOD_BOUND = 1e-9

#: `step(slice_index, mu, scale) -> y_hat_slice` (before the latent residual prediction).
SliceStep = Callable[[int, Tensor, Tensor, slice], Tensor]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def channels_last(x: Tensor) -> Tensor:
    """`x` (a 4-D map) in the channels-last memory format; `x` itself when it already is.

    Shapes:
        x: `(B, C, H, W)` -> `(B, C, H, W)`, strides `(H*W*C, 1, W*C, C)`.
    """
    return x.contiguous(memory_format=torch.channels_last)


#: PyTorch sends a 3x3 convolution of one map this small (input elements) to its own kernel.
_SMALL_MAP = 20480


@functools.cache
def _onednn_for_small_maps() -> bool:
    """Whether oneDNN beats PyTorch's kernel on small maps on this CPU: measured on AVX-512
    (oneDNN faster) and AVX2 (PyTorch's kernel faster at 8x8 maps: 770 against 1094 us for
    320 -> 224 channels); unmeasured ISAs keep PyTorch's choice."""
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


class OneDNNConv2d(nn.Conv2d):
    """`nn.Conv2d` that sends fp32 CPU batches to oneDNN's convolution where it is faster.

    For a 3x3 convolution of one small map (at most 20480 input elements) PyTorch picks its
    reference kernel (`_slow_conv2d_forward`, im2col and a GEMM) over oneDNN. In the entropy
    model those are the hyper-synthesis convolutions on the hyper-latent (1/64 of the image)
    and, on small images, the slice transforms. On CPUs with AVX-512 oneDNN is faster on them
    too, so every call takes oneDNN; on other CPUs (AVX2: PyTorch's kernel is faster there) small
    maps keep PyTorch's choice and larger ones take oneDNN, as `nn.Conv2d` would. The choice
    depends only on the shape and the CPU, so `compress`, `decompress` and `forward` run the
    same kernels. Other inputs (other dtypes or devices, autocast, `torch.compile`) take
    `nn.Conv2d`'s own route. Parameters and state-dict names are those of `nn.Conv2d`.

    Shapes:
        x: `(B, C_in, H, W)` -> `(B, C_out, H', W')`, in the memory format of `x`.

    Example:
        >>> conv = OneDNNConv2d(16, 8, kernel_size=3, padding=1)
        >>> conv(torch.randn(1, 16, 4, 6)).shape
        torch.Size([1, 8, 4, 6])
    """

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if (
            x.device.type == "cpu"
            and x.dim() == 4
            and x.dtype == weight.dtype == torch.float32
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and torch.backends.mkldnn.is_available()
            and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling()
            and (x.shape[0] > 1 or x.numel() > _SMALL_MAP or _onednn_for_small_maps())
        ):
            return torch.mkldnn_convolution(x, weight, bias, self.padding, self.stride, self.dilation, self.groups)
        return super()._conv_forward(x, weight, bias)


class _GELU(nn.GELU):
    """`nn.GELU` that runs in place when there is nothing to differentiate (the same kernel, so
    the same bits). Only for the output of a layer that makes a new tensor, as everywhere
    below: a convolution or a pixel shuffle."""

    def _get_name(self) -> str:  # printed models read as the official ones
        return "GELU"

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return super().forward(x)
        return torch.ops.aten.gelu_(x, approximate=self.approximate)


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> OneDNNConv2d:
    return OneDNNConv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1)


def _subpel_conv3x3(in_channels: int, out_channels: int, r: int) -> nn.Sequential:
    # a 3x3 conv to r*r times the channels, then pixel shuffle (CompressAI's subpel_conv3x3)
    return nn.Sequential(_conv3x3(in_channels, out_channels * r**2), nn.PixelShuffle(r))


def hyper_widths(latent_channels: int, hyper_channels: int) -> list[int]:
    """Channel widths of the hyper-analysis, from the latent down to the hyper-latent in four
    equal steps (as in both official models: 384 -> 192 and 320 -> 192).

    Example:
        >>> hyper_widths(320, 192)
        [320, 288, 256, 224, 192]
    """
    step = (latent_channels - hyper_channels) / 4
    return [round(latent_channels - k * step) for k in range(5)]


def _hyper_analysis(chain: Sequence[int]) -> nn.Sequential:
    c = chain
    return nn.Sequential(
        _conv3x3(c[0], c[1]),
        _GELU(),
        _conv3x3(c[1], c[2]),
        _GELU(),
        _conv3x3(c[2], c[3], stride=2),
        _GELU(),
        _conv3x3(c[3], c[4]),
        _GELU(),
        _conv3x3(c[4], c[5], stride=2),
    )


def _hyper_synthesis(chain: Sequence[int]) -> nn.Sequential:
    c = chain
    return nn.Sequential(
        _conv3x3(c[0], c[1]),
        _GELU(),
        _subpel_conv3x3(c[1], c[2], 2),
        _GELU(),
        _conv3x3(c[2], c[3]),
        _GELU(),
        _subpel_conv3x3(c[3], c[4], 2),
        _GELU(),
        _conv3x3(c[4], c[5]),
    )


def _slice_transform(in_channels: int, hidden: Sequence[int], out_channels: int) -> nn.Sequential:
    widths = [in_channels, *hidden, out_channels]
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [_conv3x3(a, b), _GELU()]
    return nn.Sequential(*layers[:-1])


def scale_indexes(conditional: GaussianConditional, scales: Tensor) -> Tensor:
    """`conditional.build_indexes(scales)` in one `torch.bucketize`: the same integers (the
    number of entries but the last of the scale table below each scale) without CompressAI's
    two passes over the scales per table entry.

    Shapes:
        scales: `(B, C, H, W)`, any memory format -> `(B, C, H, W)` int32, contiguous.

    Raises:
        ValueError: if the conditional's scale table is empty (before `update()`).
    """
    if conditional.scale_table.numel() == 0:
        raise ValueError(
            "the GaussianConditional's scale table is empty (scale_table.numel() == 0); call "
            "model.update() (or conditional.update_scale_table(...)) before indexing scales."
        )
    scales = conditional.lower_bound_scale(scales).contiguous()
    table = conditional.scale_table[:-1].to(device=scales.device, dtype=scales.dtype)
    return torch.bucketize(scales, table).int()


def _likelihoods_fp32(model: EntropyModel, *inputs: Tensor) -> Tensor:
    """`model(*inputs)[1]` (the likelihoods), computed in fp32 whatever the model's dtype.

    On a model cast to fp16, CompressAI's likelihood lower bound (1e-9) has underflowed to 0
    in the module's buffer, so it is applied again here. Gradients reach the parameters.
    """
    tensors = dict(model.named_parameters())
    tensors.update(model.named_buffers())
    if all(t.dtype == torch.float32 for t in tensors.values() if t.is_floating_point()):
        return model(*(t.float() for t in inputs))[1]
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    likelihoods = functional_call(model, tensors, tuple(t.float() for t in inputs))[1]
    return likelihoods.clamp_min(_LIKELIHOOD_BOUND)


class ChannelARCodec(CompressionModel):
    """Base class of the two codecs: hyperprior + channel-wise autoregressive entropy model.

    Subclasses build their image transforms, call `_build_entropy_model(...)`, and implement
    `analysis(x) -> y` and `synthesis(y_hat) -> x_hat`; `latent_stride` is the ratio between
    the image and the latent. `analysis` must map `(H, W)` to
    `(ceil(H / s), ceil(W / s))` and `synthesis` must map `(h, w)` to `(s * h, s * w)`.

    Interface (as CompressAI's models):
        - `forward(x)` -> `{"x_hat": (B, 3, H, W), "likelihoods": {"y": ..., "z": ...}}`;
        - `compress(x)` -> `{"strings": [y_strings, z_strings], "shape": (H, W)}`, one
          string per image in each list, `shape` the original image size;
        - `decompress(strings, shape)` -> `{"x_hat": (B, 3, H, W)}` in `[0, 1]`;
        - `update(force=...)` fills the CDF tables; `aux_loss()` trains the quantiles.
    """

    latent_stride: int = 16
    hyper_stride: int = 4
    in_chans: int = 3

    def _build_entropy_model(
        self,
        latent_channels: int,
        hyper_channels: int,
        num_slices: int,
        max_support_slices: int,
        cc_hidden: Sequence[int],
        hyper_synthesis_chain: Sequence[int],
    ) -> None:
        if latent_channels % num_slices:
            raise ValueError(
                f"the latent's {latent_channels} channels must split evenly into slices, got "
                f"num_slices={num_slices}; pick a divisor of {latent_channels}."
            )
        if max_support_slices >= num_slices:
            raise ValueError(
                f"max_support_slices must be below num_slices={num_slices} (or negative for "
                f"all decoded slices), got max_support_slices={max_support_slices}."
            )
        if len(cc_hidden) != 4:
            raise ValueError(f"cc_hidden must list 4 widths, got cc_hidden={tuple(cc_hidden)!r}.")
        self.latent_channels = latent_channels
        self.num_slices = num_slices
        self.max_support_slices = max_support_slices
        self.slice_channels = c = latent_channels // num_slices
        m = latent_channels

        def support(i: int) -> int:
            return i if max_support_slices < 0 else min(i, max_support_slices)

        self.h_a = _hyper_analysis([m, *hyper_widths(m, hyper_channels)])
        self.h_mean_s = _hyper_synthesis(hyper_synthesis_chain)
        self.h_scale_s = _hyper_synthesis(hyper_synthesis_chain)
        self.cc_mean_transforms = nn.ModuleList(
            _slice_transform(m + c * support(i), cc_hidden, c) for i in range(num_slices)
        )
        self.cc_scale_transforms = nn.ModuleList(
            _slice_transform(m + c * support(i), cc_hidden, c) for i in range(num_slices)
        )
        self.lrp_transforms = nn.ModuleList(
            _slice_transform(m + c * (support(i) + 1), cc_hidden, c) for i in range(num_slices)
        )
        self.entropy_bottleneck = EntropyBottleneck(hyper_channels)
        self.gaussian_conditional = GaussianConditional(None)

    # -- image transforms, supplied by subclasses ------------------------------------------

    def analysis(self, x: Tensor) -> Tensor:
        """`x: (B, 3, H, W)` -> `y: (B, M, ceil(H / s), ceil(W / s))`."""
        raise NotImplementedError

    def synthesis(self, y_hat: Tensor) -> Tensor:
        """`y_hat: (B, M, h, w)` -> `(B, 3, s * h, s * w)`, before cropping."""
        raise NotImplementedError

    # -- sizes -------------------------------------------------------------------------------

    def latent_size(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Sizes of `y` and `z` for an image of `height x width`.

        Returns:
            `((h_y, w_y), (h_z, w_z))`.
        """
        s, t = self.latent_stride, self.hyper_stride
        y = (_ceil_div(height, s), _ceil_div(width, s))
        return y, (_ceil_div(y[0], t), _ceil_div(y[1], t))

    def _check_image(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.in_chans:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"x must be an image batch (B, {self.in_chans}, H, W), got x of shape {got}."
            )
        if min(x.shape[-2:]) < 1 or x.shape[0] < 1:
            raise ValueError(f"x must hold at least one pixel, got x of shape {tuple(x.shape)}.")

    # -- the slice loop ------------------------------------------------------------------------

    def _decode_slices(
        self, z_hat: Tensor, y_size: tuple[int, int], step: SliceStep, per_image: bool, latent: bool = True
    ) -> Tensor | None:
        """Runs the channel-wise autoregression; `step` quantises (or decodes) each slice.

        Args:
            z_hat: `(B, Z, h_z, w_z)`, the quantised hyper-latent.
            y_size: `(h, w)` of the latent.
            step: `step(i, mu, scale, rows) -> y_hat_i`, all `(b, M / num_slices, h, w)` for
                the batch rows `rows` (all of them, or one image with `per_image`).
            per_image: run each image on its own (see the module docstring).
            latent: whether the caller needs `y_hat`; without it (compress), the latent
                residual prediction runs only for the slices that later slices read.

        Returns:
            `(B, M, h, w)`, the reconstructed latent `y_hat`, or None without `latent`.
        """
        if per_image and z_hat.shape[0] > 1:
            parts = [self._slices(z_hat[b : b + 1], y_size, step, slice(b, b + 1), latent) for b in range(z_hat.shape[0])]
            return torch.cat(parts) if latent else None
        return self._slices(z_hat, y_size, step, slice(0, z_hat.shape[0]), latent)

    def _is_support(self, i: int) -> bool:
        """Whether a later slice reads slice `i`'s `y_hat` as context."""
        k = self.max_support_slices
        return i < self.num_slices - 1 if k < 0 else i < k

    def _slices(
        self, z_hat: Tensor, y_size: tuple[int, int], step: SliceStep, rows: slice, latent: bool
    ) -> Tensor | None:
        # every conv input is made channels-last here, whatever layout the caller's tensors
        # had, so that the three drivers round identically (see the module docstring)
        h, w = y_size
        z_hat = channels_last(z_hat)
        latent_means = channels_last(self.h_mean_s(z_hat)[:, :, :h, :w])  # (b, M, h, w)
        latent_scales = channels_last(self.h_scale_s(z_hat)[:, :, :h, :w])  # (b, M, h, w)
        y_hat_slices: list[Tensor] = []
        for i in range(self.num_slices):
            k = self.max_support_slices
            support = y_hat_slices if k < 0 else y_hat_slices[:k]
            mean_support = channels_last(torch.cat([latent_means, *support], dim=1))
            mu = self.cc_mean_transforms[i](mean_support)
            scale = self.cc_scale_transforms[i](channels_last(torch.cat([latent_scales, *support], dim=1)))
            y_hat_slice = channels_last(step(i, mu, scale, rows))
            if not latent and not self._is_support(i):
                continue  # nothing reads this slice's y_hat again
            lrp = self.lrp_transforms[i](channels_last(torch.cat([mean_support, y_hat_slice], dim=1)))
            y_hat_slices.append(y_hat_slice + 0.5 * torch.tanh(lrp))
        return channels_last(torch.cat(y_hat_slices, dim=1)) if latent else None

    # -- CompressAI interface ------------------------------------------------------------------

    def forward(self, x: Tensor) -> dict[str, Tensor | dict[str, Tensor]]:
        """Runs the codec with differentiable quantisation (training) or rounding (eval).

        `y` is rounded around the predicted means with a straight-through gradient in both
        modes (as in the official code); `z` too. The likelihoods use CompressAI's noise
        proxy while training.

        Args:
            x: `(B, 3, H, W)`, values in `[0, 1]`, any `H, W >= 1`.

        Returns:
            `{"x_hat": (B, 3, H, W), "likelihoods": {"y": (B, M, h, w), "z": (B, Z, h/4, w/4)}}`
            with `h = ceil(H / latent_stride)`; `x_hat` is not clamped.
        """
        self._check_image(x)
        height, width = x.shape[-2:]
        # one memory format for y in forward and compress: the convs' rounding depends on it
        y = channels_last(self.analysis(x))
        z = self.h_a(y)
        z_likelihoods = _likelihoods_fp32(self.entropy_bottleneck, z)
        z_offset = self.entropy_bottleneck._get_medians()
        z_hat = quantize_ste(z - z_offset) + z_offset

        y_slices = y.chunk(self.num_slices, dim=1)
        y_likelihoods: list[list[Tensor]] = [[] for _ in range(self.num_slices)]

        def step(i: int, mu: Tensor, scale: Tensor, rows: slice) -> Tensor:
            y_i = y_slices[i][rows]
            y_likelihoods[i].append(_likelihoods_fp32(self.gaussian_conditional, y_i, scale, mu))
            return quantize_ste(y_i - mu) + mu

        y_hat = self._decode_slices(z_hat, y.shape[-2:], step, per_image=not self.training)
        x_hat = self.synthesis(y_hat)[:, :, :height, :width].contiguous()  # (B, 3, H, W)
        y_lik = torch.cat([torch.cat(parts, dim=0) for parts in y_likelihoods], dim=1)
        return {"x_hat": x_hat, "likelihoods": {"y": y_lik, "z": z_likelihoods}}

    def _coder_tables(self) -> tuple[list[list[int]], list[int], list[int]]:
        gc = self.gaussian_conditional
        if gc._quantized_cdf.numel() == 0 or self.entropy_bottleneck._quantized_cdf.numel() == 0:
            raise RuntimeError(
                "the entropy coder's CDF tables are empty; call model.update() (after loading "
                "the weights) before compress() or decompress()."
            )
        return (
            gc.quantized_cdf.tolist(),
            gc.cdf_length.reshape(-1).int().tolist(),
            gc.offset.reshape(-1).int().tolist(),
        )

    @torch.no_grad()
    def compress(self, x: Tensor) -> dict[str, list[list[bytes]] | tuple[int, int]]:
        """Encodes a batch of images, one independent pair of strings per image.

        Args:
            x: `(B, 3, H, W)`, values in `[0, 1]`, any `H, W >= 1`.

        Returns:
            `{"strings": [y_strings, z_strings], "shape": (H, W)}`: `y_strings[b]` and
            `z_strings[b]` are the bytes of image `b`; `shape` is the original image size,
            which `decompress` needs to crop (store it with the strings).
        """
        self._check_image(x)
        cdf, cdf_lengths, offsets = self._coder_tables()
        height, width = x.shape[-2:]
        # one memory format for y in forward and compress: the convs' rounding depends on it
        y = channels_last(self.analysis(x))
        z = self.h_a(y)
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat = self.entropy_bottleneck.decompress(z_strings, z.shape[-2:])

        y_slices = y.chunk(self.num_slices, dim=1)
        symbols: list[list[int]] = [[] for _ in range(y.shape[0])]  # per image, slice-major
        indexes: list[list[int]] = [[] for _ in range(y.shape[0])]

        def step(i: int, mu: Tensor, scale: Tensor, rows: slice) -> Tensor:
            q = torch.round(y_slices[i][rows] - mu)
            symbols[rows.start] += q.int().flatten().tolist()
            indexes[rows.start] += scale_indexes(self.gaussian_conditional, scale).flatten().tolist()
            return q + mu

        self._decode_slices(z_hat, y.shape[-2:], step, per_image=True, latent=False)
        y_strings = []
        for sym, idx in zip(symbols, indexes):
            encoder = BufferedRansEncoder()
            encoder.encode_with_indexes(sym, idx, cdf, cdf_lengths, offsets)
            y_strings.append(encoder.flush())
        return {"strings": [y_strings, z_strings], "shape": (int(height), int(width))}

    @torch.no_grad()
    def decompress(self, strings: Sequence[Sequence[bytes]], shape: Sequence[int]) -> dict[str, Tensor]:
        """Decodes what `compress` returned; the images need not come from one batch call.

        Args:
            strings: `[y_strings, z_strings]`, two lists of `B` byte strings.
            shape: `(H, W)`, the original image size (`compress(x)["shape"]`).

        Returns:
            `{"x_hat": (B, 3, H, W)}`, clamped to `[0, 1]`.
        """
        if not isinstance(strings, (list, tuple)) or len(strings) != 2:
            raise ValueError(
                "strings must be [y_strings, z_strings] as compress() returns it, got "
                f"{type(strings).__name__} of length {len(strings) if hasattr(strings, '__len__') else '?'}."
            )
        y_strings, z_strings = strings
        if len(y_strings) != len(z_strings) or len(y_strings) == 0:
            raise ValueError(
                f"strings must hold one y string and one z string per image, got "
                f"{len(y_strings)} y strings and {len(z_strings)} z strings."
            )
        if len(shape) != 2 or min(int(s) for s in shape) < 1:
            raise ValueError(
                f"shape must be the original image size (H, W) from compress(), got shape={tuple(shape)!r}."
            )
        height, width = (int(s) for s in shape)
        cdf, cdf_lengths, offsets = self._coder_tables()
        y_size, z_size = self.latent_size(height, width)
        z_hat = self.entropy_bottleneck.decompress(list(z_strings), z_size)
        decoders = []
        for s in y_strings:
            decoder = RansDecoder()
            decoder.set_stream(s)
            decoders.append(decoder)

        def step(i: int, mu: Tensor, scale: Tensor, rows: slice) -> Tensor:
            indexes = scale_indexes(self.gaussian_conditional, scale).flatten().tolist()
            values = decoders[rows.start].decode_stream(indexes, cdf, cdf_lengths, offsets)
            q = torch.tensor(values, dtype=mu.dtype, device=mu.device).reshape(mu.shape)
            return q + mu

        y_hat = self._decode_slices(z_hat, y_size, step, per_image=True)
        x_hat = self.synthesis(y_hat)[:, :, :height, :width].contiguous()  # (B, 3, H, W)
        return {"x_hat": x_hat.clamp(0, 1)}

    def update(self, scale_table: Tensor | None = None, force: bool = False, update_quantiles: bool = False) -> bool:
        """Fills the entropy coder's CDF tables (needed once before `compress`/`decompress`).

        The tables are computed in fp32 even when the model has been cast to fp16/bf16.

        Args:
            scale_table: scales of the Gaussian CDF table; CompressAI's default (64 scales
                from 0.11 to 256) when None.
            force: recompute tables that are already filled.
            update_quantiles: refit the entropy bottleneck's quantiles by bisection first.

        Returns:
            Whether any table was (re)computed.
        """
        dtypes = {}
        for m in self.modules():
            if isinstance(m, EntropyModel):
                floats = [t for t in (*m.parameters(), *m.buffers()) if t.is_floating_point()]
                if floats and floats[0].dtype != torch.float32:
                    dtypes[m] = floats[0].dtype
                    m.float()
        try:
            return super().update(scale_table=scale_table, force=force, update_quantiles=update_quantiles)
        finally:
            for m, dtype in dtypes.items():
                m.to(dtype)
