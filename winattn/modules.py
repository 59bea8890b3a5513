# SPDX-License-Identifier: Apache-2.0
"""Modules: window attention, shifted window attention, the Swin block, and the paper's
window-attention block for CNN codecs.

Modules own parameters, projections and layout; all attention math goes through
`winattn.functional.window_attention`, which picks the backend at call time.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from winattn._utils import positive_int, to_pair
from winattn.backends import check_backend_name
from winattn.functional import continuous_position_bias, window_attention
from winattn.geometry import check_map, check_shift, relative_coords_table, relative_position_index

__all__ = [
    "WindowAttention",
    "ShiftedWindowAttention",
    "WindowAttentionV2",
    "SwinBlock",
    "SwinV2Block",
    "WindowAttentionBlock",
    "GatedWindowAttentionBlock",
    "Mlp",
    "DropPath",
    "ResidualUnit",
]


def _check_dim_heads(dim: int, num_heads: int) -> tuple[int, int]:
    dim, num_heads = positive_int(dim, "dim"), positive_int(num_heads, "num_heads")
    if dim % num_heads:
        raise ValueError(
            f"dim must be divisible by num_heads, got {dim=}, {num_heads=}; pick num_heads "
            f"among the divisors of {dim}."
        )
    return dim, num_heads


def _check_channels_last(x: Tensor, dim: int, weight: Tensor) -> None:
    check_map(x, "x")
    if x.shape[-1] != dim:
        raise ValueError(
            f"x has {x.shape[-1]} channels but this module was built with {dim=}; "
            f"x must be (B, H, W, {dim}) (for NCHW input, permute(0, 2, 3, 1) first)."
        )
    _check_like(x, weight)


def _check_like(x: Tensor, weight: Tensor) -> None:
    """Checks that `x` has the dtype and device of the module's parameters (autocast casts
    itself, so any dtype passes inside an autocast region)."""
    if x.device != weight.device:
        raise ValueError(
            f"x is on {x.device} but the module's parameters are on {weight.device}; move one "
            f"to the other (x.to({str(weight.device)!r}) or module.to({str(x.device)!r}))."
        )
    if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(
            f"x.dtype={x.dtype} but the module's parameters are {weight.dtype}; convert one to "
            f"the other (x.to({weight.dtype}) or module.to({x.dtype})), or run under "
            f"torch.autocast."
        )


def _check_backend(backend: str | None) -> None:
    if backend is not None:
        check_backend_name(backend, "backend=")


class WindowAttention(nn.Module):
    """Multi-head self-attention inside (shifted) windows of a channels-last map.

    Pads the map at the bottom and right to a multiple of the window, applies the cyclic shift
    and Swin's mask (value `MASK_VALUE`, -100; padding tokens are not masked, as in the official STF code),
    attends inside every window with a learned relative position bias, reverses the shift and
    crops back. Any `H, W >= 1` works.

    Parameter names follow Swin (timm, STF): `qkv`, `proj`, `relative_position_bias_table`.
    `relative_position_index` is a non-persistent buffer; a checkpoint that carries one still
    loads with `strict=True` once it is checked to match.

    Args:
        dim: channels `C` of the input and output.
        num_heads: attention heads; `dim` must be divisible by it.
        window_size: `Wh` or `(Wh, Ww)`.
        shift_size: `sh` or `(sh, sw)`, each in `[0, window)`; 0 means plain windows.
        qkv_bias: whether the qkv projection has a bias.
        qk_scale: logit scale; defaults to `head_dim ** -0.5`.
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after the output projection.
        rel_pos_bias: whether to learn a relative position bias.
        backend: a backend name to use for this module; None follows the global choice.
        device: device of the parameters.
        dtype: dtype of the parameters.

    Shapes:
        x: `(B, H, W, C)` -> `(B, H, W, C)`.

    Example:
        >>> attn = WindowAttention(dim=64, num_heads=4, window_size=8, shift_size=4)
        >>> attn(torch.randn(2, 30, 45, 64)).shape
        torch.Size([2, 30, 45, 64])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int | tuple[int, int] = 8,
        shift_size: int | tuple[int, int] = 0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        rel_pos_bias: bool = True,
        backend: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dim, num_heads = _check_dim_heads(dim, num_heads)
        self.window_size = to_pair(window_size, "window_size")
        self.shift_size = to_pair(shift_size, "shift_size", allow_zero=True)
        check_shift(self.window_size, self.shift_size)
        for name, p in (("attn_drop", attn_drop), ("proj_drop", proj_drop)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {name}={p!r}.")
        _check_backend(backend)
        factory = {"device": device, "dtype": dtype}
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale if qk_scale is not None else self.head_dim**-0.5
        self.backend = backend

        wh, ww = self.window_size
        if rel_pos_bias:
            self.relative_position_bias_table = nn.Parameter(
                torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads, **factory)
            )  # ((2Wh-1)(2Ww-1), heads)
            self.register_buffer(
                "relative_position_index",
                relative_position_index(self.window_size, device=device),
                persistent=False,
            )  # (N, N)
        else:
            self.register_parameter("relative_position_bias_table", None)
            self.relative_position_index = None
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **factory)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim, **factory)
        self.proj_drop = nn.Dropout(proj_drop)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Swin's initialisation of the bias table: truncated normal, std 0.02."""
        if self.relative_position_bias_table is not None:
            nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02, a=-0.04, b=0.04)

    def forward(self, x: Tensor, backend: str | None = None) -> Tensor:
        """Args:
            x: `(B, H, W, C)`.
            backend: per-call backend override (beats the module's own).

        Returns:
            `(B, H, W, C)`.
        """
        _check_channels_last(x, self.dim, self.qkv.weight)
        _check_backend(backend)
        out = window_attention(
            self.qkv(x),  # (B, H, W, 3C)
            self.num_heads,
            self.window_size,
            self._shift_for((x.shape[1], x.shape[2])),
            bias_table=self.relative_position_bias_table,
            scale=self.scale,
            pad_qkv=self.qkv.bias,
            dropout_p=self.attn_drop if self.training else 0.0,
            backend=backend if backend is not None else self.backend,
        )  # (B, H, W, C)
        return self.proj_drop(self.proj(out))

    def _shift_for(self, size: tuple[int, int]) -> tuple[int, int]:
        """The shift used on a map of `size` `(H, W)`: `shift_size`. A hook for subclasses that
        adapt it to the map (torchvision's convention, `winattn.patch.hosts.torchvision`)."""
        return self.shift_size

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # Swin/STF checkpoints saved relative_position_index as a persistent buffer. Accept it
        # (so strict loading works) after checking that it is the index this module uses.
        key = prefix + "relative_position_index"
        if key in state_dict:
            given = state_dict[key]
            if "relative_position_index" in self._non_persistent_buffers_set:
                del state_dict[key]  # load_state_dict works on its own copy of the dict
            ours = relative_position_index(self.window_size)
            if self.relative_position_index is None or tuple(given.shape) != tuple(ours.shape) or not torch.equal(given.cpu().long(), ours):
                raise ValueError(
                    f"{key} in the checkpoint does not match this module (window_size="
                    f"{self.window_size}, rel_pos_bias={self.relative_position_index is not None}): "
                    f"checkpoint shape {tuple(given.shape)}; build the module with the "
                    f"checkpoint's window size."
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        s = (
            f"dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}, "
            f"shift_size={self.shift_size}"
        )
        if self.relative_position_bias_table is None:
            s += ", rel_pos_bias=False"
        if self.attn_drop:
            s += f", attn_drop={self.attn_drop}"
        if self.backend is not None:
            s += f", backend={self.backend!r}"
        return s


class ShiftedWindowAttention(WindowAttention):
    """`WindowAttention` with `shift_size` defaulting to `window_size // 2` (Swin's SW-MSA).

    Shapes:
        x: `(B, H, W, C)` -> `(B, H, W, C)`.

    Example:
        >>> attn = ShiftedWindowAttention(dim=32, num_heads=2, window_size=7)
        >>> attn.shift_size
        (3, 3)
        >>> attn(torch.randn(1, 20, 20, 32)).shape
        torch.Size([1, 20, 20, 32])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int | tuple[int, int] = 8,
        shift_size: int | tuple[int, int] | None = None,
        **kwargs: Any,
    ) -> None:
        if shift_size is None:
            wh, ww = to_pair(window_size, "window_size")
            shift_size = (wh // 2, ww // 2)
        super().__init__(dim, num_heads, window_size, shift_size, **kwargs)


#: Hidden width of Swin-V2's continuous position bias MLP (`cpb_mlp`).
CPB_HIDDEN = 512


class WindowAttentionV2(WindowAttention):
    """Swin-V2's window attention: scaled cosine attention and a continuous position bias.

    The logits are `cos(q, k) * exp(min(logit_scale, log(100)))` per head plus
    `16 * sigmoid(cpb_mlp(relative_coords_table))`, gathered by the relative position index;
    padding, shift and mask are those of `WindowAttention`. The qkv projection has no bias of
    its own: with `qkv_bias`, q and v have one (`q_bias`, `v_bias`) and k's is zero.

    Parameter and buffer names follow timm's `swinv2_*` (`qkv`, `q_bias`, `v_bias`,
    `logit_scale` of shape `(num_heads, 1, 1)`, `cpb_mlp.0`, `cpb_mlp.2`, `proj`), so their
    attention weights load with `strict=True`; `relative_coords_table` and
    `relative_position_index` are non-persistent buffers (a checkpoint that carries them still
    loads once they are checked to match).

    Args:
        dim: channels `C` of the input and output.
        num_heads: attention heads; `dim` must be divisible by it.
        window_size: `Wh` or `(Wh, Ww)`.
        shift_size: `sh` or `(sh, sw)`, each in `[0, window)`; 0 means plain windows.
        qkv_bias: whether q and v have a bias (`q_bias`, `v_bias`).
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after the output projection.
        pretrained_window_size: `P` or `(Ph, Pw)`, the window the weights were trained with,
            which scales the relative coordinates (`relative_coords_table`); 0: this window.
        backend: a backend name to use for this module; None follows the global choice.
        device: device of the parameters.
        dtype: dtype of the parameters.

    Shapes:
        x: `(B, H, W, C)` -> `(B, H, W, C)`.

    Example:
        >>> attn = WindowAttentionV2(dim=64, num_heads=4, window_size=8, shift_size=4)
        >>> attn(torch.randn(2, 30, 45, 64)).shape
        torch.Size([2, 30, 45, 64])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int | tuple[int, int] = 8,
        shift_size: int | tuple[int, int] = 0,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        pretrained_window_size: int | tuple[int, int] = 0,
        backend: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        factory = {"device": device, "dtype": dtype}
        super().__init__(
            dim, num_heads, window_size, shift_size, qkv_bias=False, attn_drop=attn_drop,
            proj_drop=proj_drop, rel_pos_bias=False, backend=backend, **factory,
        )
        self.pretrained_window_size = to_pair(pretrained_window_size, "pretrained_window_size", allow_zero=True)
        self.logit_scale = nn.Parameter(torch.empty(num_heads, 1, 1, **factory))  # (heads, 1, 1)
        self.cpb_mlp = nn.Sequential(
            nn.Linear(2, CPB_HIDDEN, **factory),
            nn.ReLU(inplace=True),
            nn.Linear(CPB_HIDDEN, num_heads, bias=False, **factory),
        )
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.empty(dim, **factory))
            self.v_bias = nn.Parameter(torch.empty(dim, **factory))
        else:
            self.register_parameter("q_bias", None)
            self.register_parameter("v_bias", None)
        self.register_buffer(
            "relative_coords_table",
            relative_coords_table(self.window_size, self.pretrained_window_size, device=device, dtype=dtype),
            persistent=False,
        )  # (1, 2Wh-1, 2Ww-1, 2)
        del self.relative_position_index  # WindowAttention's None, without a bias table
        self.register_buffer(
            "relative_position_index", relative_position_index(self.window_size, device=device), persistent=False
        )  # (N, N)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Swin-V2's initialisation: `logit_scale = log(10)`, zero q and v biases."""
        if "logit_scale" not in self._parameters:  # called by WindowAttention.__init__, before they exist
            return
        nn.init.constant_(self.logit_scale, math.log(10.0))
        if self.q_bias is not None:
            nn.init.zeros_(self.q_bias)
            nn.init.zeros_(self.v_bias)

    def qkv_bias(self) -> Tensor | None:
        """`(3C,)`: `q_bias`, zeros for k, `v_bias`; None without biases."""
        if self.q_bias is None:
            return None
        return torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))

    def bias_table(self) -> Tensor:
        """`((2Wh-1)(2Ww-1), heads)`, the continuous position bias as a bias table."""
        return continuous_position_bias(self.cpb_mlp, self.relative_coords_table, self.num_heads)

    def forward(self, x: Tensor, backend: str | None = None) -> Tensor:
        """Args:
            x: `(B, H, W, C)`.
            backend: per-call backend override (beats the module's own).

        Returns:
            `(B, H, W, C)`.
        """
        _check_channels_last(x, self.dim, self.qkv.weight)
        _check_backend(backend)
        bias = self.qkv_bias()
        out = window_attention(
            F.linear(x, self.qkv.weight, bias),  # (B, H, W, 3C)
            self.num_heads,
            self.window_size,
            self._shift_for((x.shape[1], x.shape[2])),
            bias_table=self.bias_table(),
            logit_scale=self.logit_scale,
            pad_qkv=bias,
            dropout_p=self.attn_drop if self.training else 0.0,
            backend=backend if backend is not None else self.backend,
        )  # (B, H, W, C)
        return self.proj_drop(self.proj(out))

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # The official Swin-V2 checkpoints save relative_coords_table; accept it once it matches.
        key = prefix + "relative_coords_table"
        if key in state_dict:
            given = state_dict.pop(key)
            ours = self.relative_coords_table
            if tuple(given.shape) != tuple(ours.shape) or not torch.allclose(given.to(ours), ours):
                raise ValueError(
                    f"{key} in the checkpoint does not match this module (window_size="
                    f"{self.window_size}, pretrained_window_size={self.pretrained_window_size}); "
                    f"build the module with the checkpoint's window sizes."
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        s = (
            f"dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}, "
            f"shift_size={self.shift_size}"
        )
        if any(self.pretrained_window_size):
            s += f", pretrained_window_size={self.pretrained_window_size}"
        if self.q_bias is None:
            s += ", qkv_bias=False"
        if self.attn_drop:
            s += f", attn_drop={self.attn_drop}"
        if self.backend is not None:
            s += f", backend={self.backend!r}"
        return s


#: In eval mode on the CPU, MLPs run on this many bytes of hidden activations at a time
#: (`Mlp.forward_rows`).
MLP_CHUNK_BYTES = 4 * 1024 * 1024


def _records(module: nn.Module, *tensors: Tensor | None) -> bool:
    """Whether autograd records a call of `module` on `tensors`."""
    return torch.is_grad_enabled() and (
        any(t is not None and t.requires_grad for t in tensors) or any(p.requires_grad for p in module.parameters())
    )


def _by_rows(x: Tensor, module: nn.Module) -> bool:
    """Whether `module` runs `x` a few rows at a time: eager, eval mode (no dropout), on the
    CPU, without autocast. The grad mode does not matter, so that an encoder run under
    `no_grad` and a decoder run with autograd recording compute the same bits."""
    return (
        x.device.type == "cpu"
        and not module.training
        and x.is_floating_point()
        and not torch.compiler.is_compiling()
        and not torch.is_autocast_enabled("cpu")
    )


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample while training.

    Shapes:
        x: `(B, ...)` -> `(B, ...)`.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {drop_prob=}.")
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Module):
    """Two linear layers with an activation between, as in Swin (`fc1`, `act`, `fc2`).

    Shapes:
        x: `(..., in_features)` -> `(..., out_features)`.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, **factory)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features, **factory)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        if _by_rows(x, self):
            rows = x.reshape(-1, x.shape[-1])  # (T, in_features)
            return self.forward_rows(rows).view(*x.shape[:-1], -1)
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))

    def forward_rows(self, x: Tensor, norm: nn.Module | None = None, residual: Tensor | None = None) -> Tensor:
        """`residual + mlp(norm(x))` in eval mode, a few rows at a time.

        The hidden activations of `MLP_CHUNK_BYTES` at a time stay in cache and are reused
        from chunk to chunk, where those of a whole high-resolution map would be allocated,
        and their pages faulted in, on every call; without autograd recording, the activation
        runs in place and each chunk is written straight into the output. With or without
        autograd, the same operations run on the same chunks, so the result has the same bits.
        Dropout is not applied.

        Shapes:
            x: `(T, in_features)`, residual: `(T, out_features)` or None -> `(T, out_features)`.
        """
        n_in, n_out = self.fc1.in_features, self.fc2.out_features
        if x.dim() != 2 or x.shape[1] != n_in:
            raise ValueError(
                f"x must be rows of shape (T, {n_in}), got x of shape {tuple(x.shape)}; "
                f"flatten the leading dimensions with x.reshape(-1, {n_in})."
            )
        if residual is not None and tuple(residual.shape) != (x.shape[0], n_out):
            raise ValueError(
                f"residual must match the output rows, ({x.shape[0]}, {n_out}), got residual of "
                f"shape {tuple(residual.shape)}."
            )
        record = _records(self, x, residual)
        # a power of two: GEMMs on such row blocks round like one on all rows (seen with MKL)
        step = 1 << max(0, (MLP_CHUNK_BYTES // (self.fc1.out_features * x.element_size())).bit_length() - 1)
        gelu = self.act.approximate if type(self.act) is nn.GELU and not record else None
        out = None if record else x.new_empty(x.shape[0], self.fc2.out_features)
        pieces = []
        for i in range(0, x.shape[0], step):
            part = x[i : i + step] if norm is None else norm(x[i : i + step])
            hidden = self.fc1(part)  # (rows, hidden_features)
            hidden = self.act(hidden) if gelu is None else torch.ops.aten.gelu_(hidden, approximate=gelu)
            y = self.fc2(hidden)  # (rows, out_features)
            if out is None:
                pieces.append(y if residual is None else residual[i : i + step] + y)
            elif residual is None:
                out[i : i + step] = y
            else:
                torch.add(residual[i : i + step], y, out=out[i : i + step])
        return out if out is not None else torch.cat(pieces)


class SwinBlock(nn.Module):
    """Pre-norm transformer block with (shifted) window attention, as in Swin and STF.

    `x + attn(norm1(x))`, then `x + mlp(norm2(x))`, with stochastic depth on both branches.
    State-dict names: `norm1`, `attn.*`, `norm2`, `mlp.fc1`, `mlp.fc2`.

    Args:
        dim: channels `C`.
        num_heads: attention heads.
        window_size: `Wh` or `(Wh, Ww)`.
        shift_size: `sh` or `(sh, sw)`; Swin alternates 0 and `window_size // 2`.
        mlp_ratio: hidden width of the MLP over `dim`.
        qkv_bias: whether the qkv projection has a bias.
        drop: dropout after the projections and in the MLP.
        attn_drop: dropout on the attention weights.
        drop_path: stochastic depth rate.
        act_layer: activation of the MLP.
        norm_layer: normalisation layer, built as `norm_layer(dim)`.
        backend: backend for this block's attention; None follows the global choice.
        qk_scale: logit scale; defaults to `head_dim ** -0.5`.
        device: device of the parameters.
        dtype: dtype of the parameters.

    Shapes:
        x: `(B, H, W, C)` -> `(B, H, W, C)`.

    Example:
        >>> block = SwinBlock(dim=48, num_heads=3, window_size=4, shift_size=2)
        >>> block(torch.randn(1, 17, 9, 48)).shape
        torch.Size([1, 17, 9, 48])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int | tuple[int, int] = 8,
        shift_size: int | tuple[int, int] = 0,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        backend: str | None = None,
        qk_scale: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not (isinstance(mlp_ratio, (int, float)) and math.isfinite(mlp_ratio) and mlp_ratio > 0):
            raise ValueError(
                f"mlp_ratio must be positive, got {mlp_ratio=}; pass a finite number (Swin "
                f"uses 4.0)."
            )
        dim = positive_int(dim, "dim")
        factory = {"device": device, "dtype": dtype}
        self.dim = dim
        self.norm1 = norm_layer(dim, **factory)
        self.attn = WindowAttention(
            dim,
            num_heads,
            window_size,
            shift_size,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            attn_drop=attn_drop,
            proj_drop=drop,
            backend=backend,
            **factory,
        )
        self.drop_path = DropPath(drop_path)
        self.norm2 = norm_layer(dim, **factory)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop, **factory)

    def forward(self, x: Tensor) -> Tensor:
        """Args:
            x: `(B, H, W, C)`.

        Returns:
            `(B, H, W, C)`.
        """
        _check_channels_last(x, self.dim, self.attn.qkv.weight)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        if _by_rows(x, self):
            rows = x.reshape(-1, self.dim)  # (B*H*W, C)
            return self.mlp.forward_rows(rows, self.norm2, rows).view(x.shape)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SwinV2Block(nn.Module):
    """Post-norm transformer block with Swin-V2's window attention (`WindowAttentionV2`).

    `x + norm1(attn(x))`, then `x + norm2(mlp(x))`, with stochastic depth on both branches:
    Swin-V2 normalises the branch outputs where Swin-V1 normalises their inputs. State-dict
    names are timm's `SwinTransformerV2Block`'s: `attn.*`, `norm1`, `mlp.fc1`, `mlp.fc2`,
    `norm2`.

    Args:
        dim: channels `C`.
        num_heads: attention heads.
        window_size: `Wh` or `(Wh, Ww)`.
        shift_size: `sh` or `(sh, sw)`; Swin alternates 0 and `window_size // 2`.
        mlp_ratio: hidden width of the MLP over `dim`.
        qkv_bias: whether q and v have a bias.
        drop: dropout after the projections and in the MLP.
        attn_drop: dropout on the attention weights.
        drop_path: stochastic depth rate.
        act_layer: activation of the MLP.
        norm_layer: normalisation layer, built as `norm_layer(dim)`.
        pretrained_window_size: see `WindowAttentionV2`.
        backend: backend for this block's attention; None follows the global choice.
        device: device of the parameters.
        dtype: dtype of the parameters.

    Shapes:
        x: `(B, H, W, C)` -> `(B, H, W, C)`.

    Example:
        >>> block = SwinV2Block(dim=48, num_heads=3, window_size=4, shift_size=2)
        >>> block(torch.randn(1, 17, 9, 48)).shape
        torch.Size([1, 17, 9, 48])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int | tuple[int, int] = 8,
        shift_size: int | tuple[int, int] = 0,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        pretrained_window_size: int | tuple[int, int] = 0,
        backend: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not (isinstance(mlp_ratio, (int, float)) and math.isfinite(mlp_ratio) and mlp_ratio > 0):
            raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio=}; Swin uses 4.0.")
        dim = positive_int(dim, "dim")
        factory = {"device": device, "dtype": dtype}
        self.dim = dim
        self.attn = WindowAttentionV2(
            dim,
            num_heads,
            window_size,
            shift_size,
            qkv_bias=qkv_bias,
            attn_drop=attn_drop,
            proj_drop=drop,
            pretrained_window_size=pretrained_window_size,
            backend=backend,
            **factory,
        )
        self.norm1 = norm_layer(dim, **factory)
        self.drop_path = DropPath(drop_path)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop, **factory)
        self.norm2 = norm_layer(dim, **factory)

    def forward(self, x: Tensor) -> Tensor:
        """Args:
            x: `(B, H, W, C)`.

        Returns:
            `(B, H, W, C)`.
        """
        _check_channels_last(x, self.dim, self.attn.qkv.weight)
        x = x + self.drop_path(self.norm1(self.attn(x)))
        return x + self.drop_path(self.norm2(self.mlp(x)))


def _conv(in_ch: int, out_ch: int, k: int, factory: dict[str, Any]) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=k, padding=k // 2, **factory)


class ResidualUnit(nn.Module):
    """`GELU(x + conv(x))` with `conv` = 1x1 (N -> N/2), GELU, 3x3, GELU, 1x1 (N/2 -> N).

    The residual unit of the paper's window-attention block (`conv.0`, `conv.2`, `conv.4`).

    Shapes:
        x: `(B, N, H, W)` -> `(B, N, H, W)`.
    """

    def __init__(
        self, channels: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        half = channels // 2
        self.conv = nn.Sequential(
            _conv(channels, half, 1, factory),
            nn.GELU(),
            _conv(half, half, 3, factory),
            nn.GELU(),
            _conv(half, channels, 1, factory),
        )
        self.relu = nn.GELU()  # named as in the paper's code

    def forward(self, x: Tensor) -> Tensor:
        if _records(self, x):
            return self.relu(x + self.conv(x))
        # Nothing to differentiate: every GELU that follows a convolution runs in place on
        # its fresh output (the same kernel, so the same bits), and so does the residual sum.
        h, prev = x, None
        for layer in self.conv:
            if type(layer) is nn.GELU and isinstance(prev, nn.Conv2d):
                h = torch.ops.aten.gelu_(h, approximate=layer.approximate)
            else:
                h = layer(h)
            prev = layer
        if type(self.relu) is nn.GELU and isinstance(prev, nn.Conv2d) and h.shape == x.shape and h.dtype == x.dtype:
            return torch.ops.aten.gelu_(h.add_(x), approximate=self.relu.approximate)
        return self.relu(x + h)


class _ResidualWindowAttention(nn.Module):
    """`x + WindowAttention(x)` on an NCHW map (the paper's `WinBasedAttention`).

    Shapes:
        x: `(B, C, H, W)` -> `(B, C, H, W)`.
    """

    def __init__(self, attn: WindowAttention) -> None:
        super().__init__()
        self.attn = attn

    def forward(self, x: Tensor) -> Tensor:
        # for channels-last x both permutes are free views, and the sum stays channels-last
        out = self.attn(x.permute(0, 2, 3, 1))  # (B, H, W, C)
        return x + out.permute(0, 3, 1, 2)  # (B, C, H, W)


class WindowAttentionBlock(nn.Module):
    """The paper's window-attention module for CNN codecs, on NCHW maps.

    `x + conv_a(x) * sigmoid(conv_b(x))`, where `conv_a` is three residual units and `conv_b`
    is window attention with a residual connection, three residual units and a 1x1 conv. Its
    state dict has the layout of `Win_noShift_Attention` in the official STF code (which,
    despite its name, shifts), so WACNN weights load strictly. Any `H, W >= 1` works.

    Channels-last input (`x.contiguous(memory_format=torch.channels_last)`) is the fast layout
    on the CPU: the convolutions run in it, the permute to the `(B, H, W, C)` map the attention
    works on is a free view, and the output is channels-last too. Contiguous NCHW input gives
    contiguous NCHW output.

    Args:
        dim: channels `C` (must be even: the residual units halve it).
        num_heads: attention heads.
        window_size: `Wh` or `(Wh, Ww)`.
        shift_size: `sh` or `(sh, sw)`.
        qkv_bias: whether the qkv projection has a bias.
        qk_scale: logit scale; defaults to `head_dim ** -0.5`.
        attn_drop: dropout on the attention weights.
        backend: backend for the attention; None follows the global choice.
        device: device of the parameters.
        dtype: dtype of the parameters.

    Shapes:
        x: `(B, C, H, W)` -> `(B, C, H, W)`.

    Example:
        >>> block = WindowAttentionBlock(dim=64, num_heads=8, window_size=8, shift_size=4)
        >>> block(torch.randn(1, 64, 20, 28)).shape
        torch.Size([1, 64, 20, 28])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        window_size: int | tuple[int, int] = 8,
        shift_size: int | tuple[int, int] = 0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        backend: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dim, num_heads = _check_dim_heads(dim, num_heads)
        if dim < 2 or dim % 2:
            raise ValueError(f"dim must be even (the residual units halve it), got {dim=}.")
        factory = {"device": device, "dtype": dtype}
        self.dim = dim
        self.conv_a = nn.Sequential(*(ResidualUnit(dim, **factory) for _ in range(3)))
        attn = WindowAttention(
            dim,
            num_heads,
            window_size,
            shift_size,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            attn_drop=attn_drop,
            backend=backend,
            **factory,
        )
        self.conv_b = nn.Sequential(
            _ResidualWindowAttention(attn),
            *(ResidualUnit(dim, **factory) for _ in range(3)),
            _conv(dim, dim, 1, factory),
        )

    @property
    def attn(self) -> WindowAttention:
        """The window attention inside `conv_b`."""
        return self.conv_b[0].attn

    def forward(self, x: Tensor) -> Tensor:
        """Args:
            x: `(B, C, H, W)`.

        Returns:
            `(B, C, H, W)`.
        """
        self._check_input(x)
        return x + self.conv_a(x) * torch.sigmoid(self.conv_b(x))

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}.")
        if x.dim() != 4:
            raise ValueError(
                f"{type(self).__name__} expects NCHW input (B, {self.dim}, H, W), got "
                f"x.shape={tuple(x.shape)} ({x.dim()} dims)."
            )
        if x.shape[1] != self.dim:
            raise ValueError(
                f"x has {x.shape[1]} channels but this block was built with dim={self.dim}; "
                f"x must be NCHW (B, {self.dim}, H, W)."
            )
        # The attention checks dtype and size too, but only after conv_a would have failed.
        check_map(x.permute(0, 2, 3, 1), "x")  # (B, H, W, C)
        _check_like(x, self.attn.qkv.weight)

    def extra_repr(self) -> str:
        a = self.attn
        return f"dim={self.dim}, num_heads={a.num_heads}, window_size={a.window_size}, shift_size={a.shift_size}"


class GatedWindowAttentionBlock(WindowAttentionBlock):
    """`WindowAttentionBlock` whose output branch is scaled by a learned per-channel gate.

    `x + gate * conv_a(x) * sigmoid(conv_b(x))`. With the gate at zero the block is an exact
    identity (`x + 0 == x` in floating point), so inserting it into a pretrained codec changes
    nothing, bit for bit, until fine-tuning moves the gate; with the gate at one it is the
    paper's block. The identity holds even where the branch overflows (a half-precision map
    with very large values): a zero gate never multiplies an infinite or NaN branch value, and
    its gradient stays finite. The state dict is that of `WindowAttentionBlock` plus `gate`.

    Args:
        dim: channels `C`.
        num_heads: attention heads.
        window_size: `Wh` or `(Wh, Ww)`.
        shift_size: `sh` or `(sh, sw)`.
        gate: initial value of the gate, 0.0 (identity) or 1.0 (the paper's block).
        **kwargs: the other arguments of `WindowAttentionBlock`.

    Shapes:
        x: `(B, C, H, W)` -> `(B, C, H, W)`.

    Example:
        >>> block = GatedWindowAttentionBlock(32, num_heads=4, window_size=8, shift_size=4)
        >>> x = torch.randn(1, 32, 12, 20)
        >>> torch.equal(block(x), x)
        True
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        window_size: int | tuple[int, int] = 8,
        shift_size: int | tuple[int, int] = 0,
        gate: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(dim, num_heads, window_size, shift_size, **kwargs)
        factory = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        self.gate = nn.Parameter(torch.full((dim,), float(gate), **factory))  # (C,)

    def forward(self, x: Tensor) -> Tensor:
        """Args:
            x: `(B, C, H, W)`.

        Returns:
            `(B, C, H, W)`.
        """
        self._check_input(x)
        gate = self.gate.view(1, -1, 1, 1)  # (1, C, 1, 1)
        branch = self.conv_a(x) * torch.sigmoid(self.conv_b(x))  # (B, C, H, W)
        # 0 * inf is NaN: where the gate is closed, use a finite stand-in for the branch.
        branch = torch.where(gate == 0, torch.nan_to_num(branch), branch)
        return x + gate * branch

