# SPDX-License-Identifier: Apache-2.0
"""SCUNet-style `WMSA`: the official LIC_TCM code's `WMSA` and DCAE's `_WMSA` (CompressAI's
development line), which share one layout.

Children `embedding_layer` (`C -> 3C`, its output ordered `(3, heads, head_dim)`) and `linear`
(the output projection), a `relative_position_params` bias of shape `(heads, 2w-1, 2w-1)`, and
`type` `"W"` or `"SW"` (shift `w // 2`). The host rolls, partitions (its maps must be multiples
of the window; it does not pad), masks the two bands of the last window row and column, attends
and rolls back: winattn's geometry, as one `window_attention` call with the bias parameter
read as a `((2w-1)^2, heads)` table (a view, so its gradient reaches the host's parameter).

The host masks with `-inf`, winattn with -100 (Swin's value): a masked pair keeps a weight of
`exp(-100)` relative to the others, below float32 resolution, as long as a window's logits
span far less than 100 (they do in Swin-like models; the tests check 1e-5).
"""

from __future__ import annotations

from torch import Tensor, nn

from winattn._utils import Pair
from winattn.patch.hosts.base import Swap, SwappedBlock

__all__ = ["ScunetWMSA", "SwappedScunetWMSA"]


class ScunetWMSA:
    """SCUNet-style `WMSA` (official TCM, DCAE): `embedding_layer`, `relative_position_params`, `linear`."""

    name = "SCUNet-style WMSA (TCM, DCAE)"

    def matches(self, m: nn.Module) -> bool:
        params = getattr(m, "relative_position_params", None)
        return (
            set(dict(m.named_children())) == {"embedding_layer", "linear"}
            and isinstance(m.embedding_layer, nn.Linear)
            and isinstance(m.linear, nn.Linear)
            and isinstance(params, nn.Parameter)
            and params.dim() == 3
            and isinstance(getattr(m, "window_size", None), int)
            and getattr(m, "type", None) in ("W", "SW")
        )

    def build(self, m: nn.Module, path: str, window_size: Pair | None, backend: str | None) -> Swap:
        w = m.window_size
        if window_size is not None and tuple(window_size) != (w, w):
            raise ValueError(
                f"window_size={window_size} does not fit {path!r}, whose weights fix its window at "
                f"{(w, w)}; pass window_size=None to swap."
            )
        heads, rows, cols = m.relative_position_params.shape
        dim = m.embedding_layer.in_features
        if (rows, cols) != (2 * w - 1, 2 * w - 1) or m.embedding_layer.out_features != 3 * dim or dim % heads:
            raise ValueError(
                f"{path!r} has a bias of shape {(heads, rows, cols)} and projects {dim} channels to "
                f"{m.embedding_layer.out_features}; winattn needs ({heads}, {2 * w - 1}, {2 * w - 1}) "
                f"and {dim} -> {3 * dim}, with the heads dividing the channels."
            )
        shift = (w // 2, w // 2) if m.type == "SW" else (0, 0)
        scale = float(getattr(m, "scale", (dim // heads) ** -0.5))
        new = SwappedScunetWMSA(m, heads, (w, w), shift, scale, backend)
        return Swap(new, "block", dim, (w, w), shift, "rolls, no padding; -inf mask as -100")


class SwappedScunetWMSA(SwappedBlock):
    """SCUNet-style `WMSA` with its whole path as one `window_attention` call.

    Shapes:
        x: `(B, H, W, C)`, `H` and `W` multiples of the window -> `(B, H, W, C_out)`.
    """

    def forward(self, x: Tensor) -> Tensor:
        """Args:
            x: `(B, H, W, C)`.

        Returns:
            `(B, H, W, C_out)`.
        """
        (wh, ww), (h, w) = self.window_size, x.shape[1:3]
        if h % wh or w % ww:
            raise ValueError(
                f"WMSA needs H, W that are multiples of the window {(wh, ww)}, got {(h, w)}; pad "
                f"the map first, as the original module requires."
            )
        table = self.relative_position_params.flatten(1).t().contiguous()  # ((2w-1)^2, heads)
        out = self.attend(self.embedding_layer(x), table, None)  # (B, H, W, C)
        return self.linear(out)
