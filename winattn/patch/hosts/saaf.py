# SPDX-License-Identifier: Apache-2.0
"""SAAF's `_CrossSparseWindowAttention` (CompressAI's development line): recognised and refused.

Each of its windows also attends to learned global key/value tokens built from the window's
mean, in a second softmax mixed into the output by `global_alpha`. One `window_attention` call
cannot compute that, and swapping only the local part would leave most of the module's cost in
place, so swapping it is refused with a `ValueError` that leaves the model unchanged.
"""

from __future__ import annotations

from torch import nn

from winattn._utils import Pair
from winattn.patch.hosts.base import Swap

__all__ = ["GlobalTokenWindowAttention"]


class GlobalTokenWindowAttention:
    """Window attention with learned global tokens (`global_tokens`, `global_kv`), as in SAAF."""

    name = "window attention with global tokens (SAAF)"

    def matches(self, m: nn.Module) -> bool:
        return isinstance(getattr(m, "global_tokens", None), nn.Parameter) and hasattr(m, "global_kv")

    def build(self, m: nn.Module, path: str, window_size: Pair | None, backend: str | None) -> Swap:
        raise ValueError(
            f"{path!r} ({type(m).__qualname__}) mixes learned global key/value tokens into its "
            f"window attention, which winattn does not compute; it cannot be swapped, and the "
            f"model was left unchanged. Use mode='insert' to add winattn blocks next to it anyway."
        )
