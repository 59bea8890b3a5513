# SPDX-License-Identifier: Apache-2.0
"""The `"triton"` backend: one fused kernel per call, forward and backward.

The forward kernel reads q, k and v straight from the qkv projection's output, applies the
padding and the cyclic shift by index arithmetic, gathers the relative position bias from its
table, builds the shift mask from coordinates, does the softmax in fp32 and writes the output
in map layout. The backward kernel recomputes the attention weights and writes the gradient
of qkv in map layout, plus deterministic partial sums of the bias-table and padding-token
gradients. See `docs/triton.md` for the design and the measured speed.

This module does not import Triton: the kernels (`kernels.py`) and the custom ops (`ops.py`)
are imported on the first call. On CPU tensors the kernels run in Triton's interpreter when
`TRITON_INTERPRET=1` is set (slow; for tests), and the backend says why it cannot run
otherwise.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch
from torch import Tensor

from winattn.backends.dispatcher import AttentionCall, Backend, register_backend
from winattn.backends.triton import verification

#: Largest window (tokens) and head dim that the kernels handle.
MAX_TOKENS = 256
MAX_HEAD_DIM = 128
DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Looked up once, without importing triton (find_spec cannot run under torch.compile).
_TRITON_FOUND = importlib.util.find_spec("triton") is not None


def _interpreter_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@register_backend
class TritonBackend(Backend):
    """Fused Triton kernels (forward and backward) on CUDA; Triton's interpreter on the CPU
    when `TRITON_INTERPRET=1`.

    Supports fp32, fp16 and bf16, head dims up to 128, windows of up to 256 tokens (any
    shape, 7x7 included), any shift and any map size. Attention dropout is not supported.
    Automatic selection picks it only for configurations in the verification record of the
    device class (`verification.py`); `backend="triton"` runs any supported call.

    Example:
        >>> import winattn
        >>> "triton" in winattn.backends.backend_reasons()
        True
    """

    name = "triton"

    def missing_software(self) -> list[str]:
        if not _TRITON_FOUND:
            return ["the triton package is not installed (pip install 'winattn[triton]')"]
        return []

    def not_supported_reasons(self, call: AttentionCall) -> list[str]:
        reasons = []
        qkv = call.qkv
        if qkv.device.type == "cpu":
            kernels = sys.modules.get("winattn.backends.triton.kernels")
            if not _interpreter_requested():
                reasons.append(
                    "qkv is on the CPU: set TRITON_INTERPRET=1 (before the first call) to run the "
                    "kernels in Triton's interpreter, or pass a CUDA tensor"
                )
            elif kernels is not None and not kernels.INTERPRET:
                reasons.append(
                    "qkv is on the CPU but the kernels were loaded for the GPU in this process; "
                    "set TRITON_INTERPRET=1 before the first call"
                )
        elif qkv.device.type != "cuda":
            reasons.append(f"qkv is on {qkv.device}; the triton backend runs on CUDA devices")
        if qkv.dtype not in DTYPES:
            reasons.append(f"qkv.dtype={qkv.dtype} is not supported; use float32, float16 or bfloat16")
        if call.dropout_p > 0:
            reasons.append(
                f"dropout_p={call.dropout_p} is not supported (attention dropout is not fused); "
                "use dropout_p=0 or backend='sdpa'"
            )
        if call.head_dim > MAX_HEAD_DIM:
            reasons.append(f"head_dim={call.head_dim} is over {MAX_HEAD_DIM}")
        tokens = call.window_size[0] * call.window_size[1]
        if tokens > MAX_TOKENS:
            reasons.append(
                f"window_size={call.window_size} has {tokens} tokens, over {MAX_TOKENS}"
            )
        if call.cosine:
            reasons.append(
                "cosine attention (logit_scale, Swin-V2) has no Triton kernel yet; use "
                "backend='sdpa'"
            )
        for name in ("bias_table", "bias", "pad_qkv"):
            t = getattr(call, name)
            if t is not None and t.device != qkv.device:
                reasons.append(f"{name} is on {t.device} but qkv is on {qkv.device}")
        return reasons

    def unverified_reasons(self, call: AttentionCall) -> list[str]:
        # Only configuration classes that the GPU test run recorded for this device class.
        return verification.unverified_reasons(call)

    def forward(self, call: AttentionCall) -> Tensor:
        from winattn.backends.triton.ops import triton_window_attention

        return triton_window_attention(call)
