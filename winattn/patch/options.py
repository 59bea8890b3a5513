# SPDX-License-Identifier: Apache-2.0
"""The checked options of `patch_model`, shared by every action."""

from __future__ import annotations

from dataclasses import dataclass

from winattn._utils import Pair

__all__ = ["LATENT_WINDOW", "STAGE_WINDOW", "Options", "check_heads"]

#: Windows of the paper's WACNN: 8x8 (shift 4) on N-channel features, 4x4 (shift 2) on the latent.
STAGE_WINDOW = 8
LATENT_WINDOW = 4


@dataclass(frozen=True)
class Options:
    window_size: Pair | None
    num_heads: int
    backend: str | None
    init: str

    def window(self, latent: bool) -> tuple[Pair, Pair]:
        """Window and shift of a new block on the latent or on a stage's features."""
        if self.window_size is not None:
            wh, ww = self.window_size
        else:
            wh = ww = LATENT_WINDOW if latent else STAGE_WINDOW
        return (wh, ww), (wh // 2, ww // 2)


def check_heads(channels: int, path: str, opts: Options) -> None:
    """Raises `ValueError` unless `opts.num_heads` fits a new block of `channels` at `path`."""
    if channels % opts.num_heads or channels % 2:
        raise ValueError(
            f"num_heads={opts.num_heads} does not fit the {channels} channels at {path!r}: the "
            f"channels must be even and divisible by num_heads; pick num_heads among the "
            f"divisors of {channels}."
        )
