# SPDX-License-Identifier: Apache-2.0
"""winattn: window-based attention for learned image compression.

Example:
    >>> import torch
    >>> from winattn import WindowAttention
    >>> attn = WindowAttention(dim=128, num_heads=4, window_size=8, shift_size=4)
    >>> attn(torch.randn(1, 50, 70, 128)).shape
    torch.Size([1, 50, 70, 128])
"""

from winattn import functional
from winattn.backends import (
    BackendUnavailableError,
    available_backends,
    get_backend,
    set_backend,
    use_backend,
)
from winattn.functional import window_attention
from winattn.modules import (
    ShiftedWindowAttention,
    SwinBlock,
    SwinV2Block,
    WindowAttention,
    WindowAttentionBlock,
    WindowAttentionV2,
)
from winattn.patch import patch_model

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "ShiftedWindowAttention",
    "SwinBlock",
    "SwinV2Block",
    "WindowAttention",
    "WindowAttentionBlock",
    "WindowAttentionV2",
    "available_backends",
    "functional",
    "get_backend",
    "patch_model",
    "set_backend",
    "use_backend",
    "window_attention",
    "__version__",
]
