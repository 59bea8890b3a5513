# SPDX-License-Identifier: Apache-2.0
"""Window geometry, shared by everything below the modules.

The padded size, the relative position index and its dense bias, the shifted-window mask and
the mask value, their caches for the backends, the default logit scale and the argument checks.
This module imports nothing else from winattn but `winattn._utils`: `functional`, the backends
and the kernels import it.

Conventions used throughout:

* maps are channels-last, `(B, H, W, C)`;
* a window holds `N = Wh * Ww` tokens, numbered row-major inside the window;
* windows are numbered row-major over the padded map, `nW = (Hp / Wh) * (Wp / Ww)`;
* the padded map is the input padded at the bottom and right to a multiple of the window;
* a cyclic shift by `(sh, sw)` moves the token at `(i, j)` of the padded map to
  `(i - sh, j - sw)` (modulo the padded size), as `torch.roll(x, (-sh, -sw))` does.
"""

from __future__ import annotations

import math
import os

import torch
from einops import rearrange
from torch import Tensor

from winattn._utils import Pair, compile_safe_cache, to_pair

__all__ = [
    "MASK_VALUE",
    "MEMORY_BUDGET_VAR",
    "attention_bytes",
    "cached_index",
    "cached_mask",
    "check_map",
    "check_memory",
    "check_shift",
    "default_scale",
    "dense_bias",
    "memory_budget",
    "padded_size",
    "relative_coords_table",
    "relative_position_index",
    "shifted_window_mask",
]

#: Additive logit for token pairs in different regions of a shifted window, as in Swin and STF.
MASK_VALUE = -100.0

#: Environment variable that sets the memory budget of one image's attention, in bytes.
MEMORY_BUDGET_VAR = "WINATTN_MAX_ATTENTION_BYTES"

#: Default of that budget: 16 GiB, above what codecs need (an 8K image with 8x8 windows and 3
#: heads needs about 8.4 GiB at its largest stage in inference and 9.9 GiB in training, as
#: `attention_bytes` counts), below a window of 128 with 4 heads (18 GiB) or of 256 (128 GiB
#: per head) on any map.
DEFAULT_MEMORY_BUDGET = 16 << 30


def padded_size(size: tuple[int, int], window_size: int | Pair) -> tuple[int, int]:
    """Rounds a map size up to a multiple of the window.

    Args:
        size: `(H, W)`.
        window_size: `Wh` or `(Wh, Ww)`.

    Returns:
        `(Hp, Wp)`, the smallest multiples of `(Wh, Ww)` that are at least `(H, W)`.

    Example:
        >>> padded_size((10, 13), 4)
        (12, 16)
    """
    wh, ww = to_pair(window_size, "window_size")
    h, w = size
    return (-(-h // wh) * wh, -(-w // ww) * ww)


def default_scale(head_dim: int) -> float:
    """`head_dim ** -0.5`, the usual logit scale."""
    return 1.0 / math.sqrt(head_dim)


def _relative_position_index(wh: int, ww: int, device: torch.device | None) -> Tensor:
    n = wh * ww
    need, budget = n * n * 8, memory_budget()
    if need > budget:
        raise ValueError(
            f"the relative position index of window_size={(wh, ww)} ({n} tokens per window) "
            f"needs {_format_bytes(need)}, over the budget of {_format_bytes(budget)}; use a "
            f"smaller window (codecs use 4 to 16), or raise the budget with the environment "
            f"variable {MEMORY_BUDGET_VAR}."
        )
    ih, iw = torch.meshgrid(
        torch.arange(wh, device=device), torch.arange(ww, device=device), indexing="ij"
    )
    ih, iw = ih.flatten(), iw.flatten()  # (N,), (N,)
    dh = ih[:, None] - ih[None, :] + (wh - 1)  # (N, N), in [0, 2Wh-2]
    dw = iw[:, None] - iw[None, :] + (ww - 1)  # (N, N), in [0, 2Ww-2]
    return dh * (2 * ww - 1) + dw


def relative_position_index(window_size: int | Pair, device: torch.device | str | None = None) -> Tensor:
    """Index into the relative position bias table, as in Swin.

    Entry `[i, j]` is `(dh + Wh - 1) * (2 * Ww - 1) + (dw + Ww - 1)`, where `(dh, dw)` is the
    offset from key `j` to query `i` inside the window.

    Args:
        window_size: `Wh` or `(Wh, Ww)`.
        device: where to build it.

    Returns:
        `(N, N)` int64, values in `[0, (2Wh-1)(2Ww-1))`.

    Example:
        >>> relative_position_index(2).tolist()
        [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]
    """
    wh, ww = to_pair(window_size, "window_size")
    return _relative_position_index(wh, ww, None if device is None else torch.device(device))


def relative_coords_table(
    window_size: int | Pair,
    pretrained_window_size: int | Pair = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Swin-V2's log-spaced relative coordinates, the input of its continuous position bias.

    Every offset `(dh, dw)` of a window, `dh` in `[-(Wh-1), Wh-1]`, is divided by
    `max(P - 1, 1)` per axis, where `P` is `pretrained_window_size` if it is positive and the
    window otherwise, multiplied by 8 and mapped to `sign(t) * log2(1 + |t|) / 3`. Rows are
    ordered as the rows of the relative position bias table, so
    `relative_position_index` indexes the flattened table.

    timm computes exactly this. torchvision's `swin_v2_*` has no pretrained window size and
    divides by `W - 1` without the `max` (a window of 1 gives NaN there).

    Args:
        window_size: `Wh` or `(Wh, Ww)`.
        pretrained_window_size: `P` or `(Ph, Pw)`; 0 normalises by the window itself.
        device: where to build it.
        dtype: its dtype (computed in float32); defaults to float32.

    Returns:
        `(1, 2Wh-1, 2Ww-1, 2)`, `(dh, dw)` mapped as above; within
        `[-log2(9) / 3, log2(9) / 3]` (about 1.057) when normalised by the window itself.

    Example:
        >>> relative_coords_table(2).shape
        torch.Size([1, 3, 3, 2])
        >>> relative_coords_table(2)[0, 0, 0]
        tensor([-1.0566, -1.0566])
    """
    wh, ww = to_pair(window_size, "window_size")
    ph, pw = to_pair(pretrained_window_size, "pretrained_window_size", allow_zero=True)
    norm_h, norm_w = (ph, pw) if ph > 0 else (wh, ww)
    dh = torch.arange(-(wh - 1), wh, device=device, dtype=torch.float32) / max(norm_h - 1, 1)
    dw = torch.arange(-(ww - 1), ww, device=device, dtype=torch.float32) / max(norm_w - 1, 1)
    table = torch.stack(torch.meshgrid(dh, dw, indexing="ij"), dim=-1)[None] * 8  # (1, 2Wh-1, 2Ww-1, 2)
    table = torch.sign(table) * torch.log2(table.abs() + 1.0) / 3.0  # log2(8) = 3
    return table.to(dtype or torch.float32)


def _region_ids(length: int, window: int, shift: int, device: torch.device | None) -> Tensor:
    # Swin labels the shifted map in three bands per axis: [0, L-w), [L-w, L-s), [L-s, L).
    pos = torch.arange(length, device=device)
    return (pos >= length - window).long() + (pos >= length - shift).long()


def _shifted_window_mask(
    hp: int, wp: int, wh: int, ww: int, sh: int, sw: int, device: torch.device | None
) -> Tensor:
    rh = _region_ids(hp, wh, sh, device) if sh else torch.zeros(hp, dtype=torch.long, device=device)
    rw = _region_ids(wp, ww, sw, device) if sw else torch.zeros(wp, dtype=torch.long, device=device)
    region = (rh[:, None] * 3 + rw[None, :])[None, :, :, None]  # (1, Hp, Wp, 1)
    region = rearrange(
        region, "1 (nh wh) (nw ww) 1 -> (nh nw) (wh ww)", wh=wh, ww=ww
    )  # (nW, N)
    different = region[:, :, None] != region[:, None, :]  # (nW, N, N)
    return different.float() * MASK_VALUE


def shifted_window_mask(
    size: tuple[int, int],
    window_size: int | Pair,
    shift_size: int | Pair,
    device: torch.device | str | None = None,
) -> Tensor:
    """Additive attention mask of shifted windows, with Swin/STF semantics.

    After the cyclic shift, windows along the bottom and right edges hold tokens from up to
    three bands per axis that were not neighbours before the shift. Pairs of tokens from
    different bands get `MASK_VALUE` (-100); all other pairs get 0. Padding tokens are not
    masked: they belong to whatever band their position falls in, as in the official STF code.

    Args:
        size: `(Hp, Wp)`, the padded map size (multiples of the window).
        window_size: `Wh` or `(Wh, Ww)`.
        shift_size: `sh` or `(sh, sw)`, each in `[0, window)`.
        device: where to build it.

    Returns:
        `(nW, N, N)` float32 with values in `{0, -100}`.

    Example:
        >>> shifted_window_mask((8, 8), 4, 2).shape
        torch.Size([4, 16, 16])
    """
    wh, ww = to_pair(window_size, "window_size")
    sh, sw = to_pair(shift_size, "shift_size", allow_zero=True)
    hp, wp = size
    if hp % wh or wp % ww:
        raise ValueError(
            f"shifted_window_mask needs the padded size, a multiple of the window; got "
            f"size={(hp, wp)} and window_size={(wh, ww)}. Use padded_size() first."
        )
    check_shift((wh, ww), (sh, sw))
    return _shifted_window_mask(hp, wp, wh, ww, sh, sw, None if device is None else torch.device(device))


# ---------------------------------------------------------------------------------------------
# Cached geometry for the backends (see winattn._utils.compile_safe_cache).


@compile_safe_cache(maxsize=64)
def _cached_index(wh: int, ww: int, device: torch.device) -> Tensor:
    return _relative_position_index(wh, ww, device)


@compile_safe_cache(maxsize=128)
def _cached_mask(
    hp: int, wp: int, wh: int, ww: int, sh: int, sw: int, device: torch.device
) -> Tensor:
    return _shifted_window_mask(hp, wp, wh, ww, sh, sw, device)


def cached_index(window_size: Pair, device: torch.device) -> Tensor:
    """Cached `relative_position_index` for the backends. `(N, N)` int64."""
    return _cached_index(*window_size, device)


def cached_mask(
    padded: tuple[int, int], window_size: Pair, shift_size: Pair, device: torch.device
) -> Tensor:
    """Cached `shifted_window_mask` for the backends. `(nW, N, N)` float32."""
    return _cached_mask(*padded, *window_size, *shift_size, device)


def dense_bias(table: Tensor, window_size: Pair, index: Tensor | None = None) -> Tensor:
    """The relative position bias of every token pair of a window, from its table.

    Args:
        table: `((2Wh-1)(2Ww-1), heads)`, the relative position bias table.
        window_size: `(Wh, Ww)`.
        index: `(N, N)`, the relative position index; None uses the cached one on the
            table's device.

    Returns:
        `(heads, N, N)`, in the table's dtype, differentiable with respect to the table.

    Example:
        >>> dense_bias(torch.zeros(9, 3), (2, 2)).shape
        torch.Size([3, 4, 4])
    """
    n = window_size[0] * window_size[1]
    if index is None:
        index = cached_index(window_size, table.device)  # (N, N)
    dense = table[index.reshape(-1)].reshape(n, n, table.shape[-1])  # (N, N, heads)
    return dense.permute(2, 0, 1)  # (heads, N, N)


# ---------------------------------------------------------------------------------------------
# Argument checks shared by the modules and the entry point.


def check_map(x: Tensor, name: str) -> None:
    """Checks that `x` is a floating-point channels-last map `(B, H, W, C)` with `H, W >= 1`.

    Raises:
        TypeError: if it is not a floating-point tensor.
        ValueError: if it does not have 4 dims or has an empty spatial size.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if x.dim() != 4:
        raise ValueError(
            f"{name} must be a channels-last map of shape (B, H, W, C), got {name}.shape="
            f"{tuple(x.shape)} ({x.dim()} dims). For NCHW input use x.permute(0, 2, 3, 1) "
            f"or WindowAttentionBlock."
        )
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor, got {name}.dtype={x.dtype}; "
            f"convert with .float() (or .half()/.bfloat16())."
        )
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise ValueError(
            f"{name} has an empty spatial size (H, W)={tuple(x.shape[1:3])}; H and W must be >= 1."
        )


def check_shift(window: Pair, shift: Pair) -> None:
    """Checks that each shift is in `[0, window)`.

    Raises:
        ValueError: naming both, if not.
    """
    for axis, s, w in zip(("height", "width"), shift, window):
        if not 0 <= s < w:
            raise ValueError(
                f"shift_size must be in [0, window_size) on each axis, got shift_size={shift} "
                f"with window_size={window} ({axis}); use shift_size=window_size // 2 for Swin's "
                f"shifted windows or 0 for plain ones."
            )


_BYTE_UNITS = {"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def memory_budget() -> int:
    """The most bytes that the attention of one image may allocate, read at call time from the
    `WINATTN_MAX_ATTENTION_BYTES` environment variable (default 16 GiB).

    The variable holds a whole number of bytes, optionally followed by a binary unit:
    `2147483648`, `512MiB`, `8 GiB` (units `B`, `KiB`, `MiB`, `GiB`, `TiB`).

    Raises:
        ValueError: naming the variable and its value, if it holds anything else.
    """
    env = os.environ.get(MEMORY_BUDGET_VAR)
    if not env or not env.strip():
        return DEFAULT_MEMORY_BUDGET
    text = env.strip()
    digits = len(text) - len(text.lstrip("0123456789"))
    unit = text[digits:].strip()
    if not digits or unit not in _BYTE_UNITS:
        raise ValueError(
            f"environment variable {MEMORY_BUDGET_VAR}={env!r} is not a number of bytes; set it "
            f"to a whole number of bytes, optionally with a binary unit (e.g. "
            f"{DEFAULT_MEMORY_BUDGET} or 16GiB; units {', '.join(u for u in _BYTE_UNITS if u)}), "
            f"or unset it for the default of {_format_bytes(DEFAULT_MEMORY_BUDGET)}."
        )
    return int(text[:digits]) * _BYTE_UNITS[unit]


def _format_bytes(n: int) -> str:
    """`n` bytes in the largest binary unit that keeps a leading digit: `'1.5 KiB'`, `'3.0 GiB'`."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        if n >= _BYTE_UNITS[unit]:
            return f"{n / _BYTE_UNITS[unit]:.1f} {unit}"
    return f"{n} B"


def attention_bytes(
    size: tuple[int, int],
    window_size: Pair,
    num_heads: int,
    element_size: int,
    *,
    shifted: bool = False,
    bias: bool = False,
    grad: bool = False,
    channels: int = 0,
) -> int:
    """Bytes that window attention on one image allocates at its peak, an upper bound for the
    reference and sdpa backends (measured with the profiler in `tests/functional/test_geometry.py`).

    With `A = nW * heads * N * N` token pairs and float32 logits (also for half-precision
    qkv), it counts: the cached relative position index (`N * N` int64, with its temporaries
    when it is first built) and shift mask (`nW * N * N` float32); the dense bias and its copy;
    for a shift, sdpa's per-window mask of bias and shift (`A` elements); the logits and
    the softmax weights alive together (`2 A` float32, and the weights cast back to a half
    dtype); the copies of qkv and of the output; and, when autograd records, the saved weights with the gradients of the weights and
    the logits (`3 A` float32 in all).

    Args:
        size: `(H, W)` of the map (padded or not).
        window_size: `(Wh, Ww)`.
        num_heads: heads.
        element_size: bytes per element of qkv.
        shifted: whether the windows are shifted (a shift mask is added).
        bias: whether a relative position bias is added.
        grad: whether autograd records the call (a backward will follow).
        channels: `C`, for the copies of qkv (`3C` per token) and of the output (`C`) that the
            backends make while gathering tokens into windows and back (two of each).
    """
    hp, wp = padded_size(size, window_size)
    n = window_size[0] * window_size[1]
    windows = (hp // window_size[0]) * (wp // window_size[1])
    pairs = windows * num_heads * n * n  # A
    logit = max(element_size, 4)
    resident = n * n * 8 + (windows * n * n * 4 if shifted else 0)  # index, shift mask
    masks = 2 * num_heads * n * n * logit if bias else 0  # dense bias and its copy
    if shifted:
        masks += pairs * logit + windows * n * n * element_size  # sdpa's per-window mask
    attention = pairs * logit * (3 if grad else 2) + (pairs * element_size if element_size < 4 else 0)
    tokens = 2 * hp * wp * 4 * channels * element_size  # qkv and output, gathered and merged
    return max(4 * n * n * 8, resident + masks + attention + tokens)  # the index's temporaries come first


def check_memory(
    size: tuple[int, int], window_size: Pair, num_heads: int, element_size: int, **call: int
) -> None:
    """Raises before anything is allocated if window attention on one image would allocate
    more than `memory_budget()` bytes, as `attention_bytes` counts them; `call` holds its
    keyword arguments (`shifted`, `bias`, `grad`, `channels`).

    Raises:
        ValueError: naming the window, the map size and the bytes needed.
    """
    need = attention_bytes(size, window_size, num_heads, element_size, **call)
    budget = memory_budget()
    if need > budget:
        n = window_size[0] * window_size[1]
        raise ValueError(
            f"window attention with window_size={window_size} ({n} tokens per window) on a "
            f"{size[0]}x{size[1]} map with {num_heads} heads needs {_format_bytes(need)} per "
            f"image for its logits, weights and masks, over the budget of {_format_bytes(budget)}; "
            f"use a smaller window (codecs use 4 to 16), or raise the budget with the environment "
            f"variable {MEMORY_BUDGET_VAR}."
        )
