# SPDX-License-Identifier: Apache-2.0
"""Draws the figures of docs/concepts.md from winattn's own functions.

Run from the repository root: `python docs/figures/make_figures.py`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from winattn.functional import relative_position_index, shifted_window_mask  # noqa: E402

OUT = Path(__file__).parent


def _grid(ax, size: int, window: int) -> None:
    for t in range(0, size + 1, window):
        ax.axhline(t - 0.5, color="black", lw=2)
        ax.axvline(t - 0.5, color="black", lw=2)
    ax.set_xticks([])
    ax.set_yticks([])


def shifted_windows(size: int = 12, window: int = 4, shift: int = 2) -> None:
    """Left: a map in windows, tokens coloured by where they sit. Right: the same map after
    the cyclic shift; bottom and right windows now hold tokens from different bands."""
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    label = (rows // window) * (size // window) + cols // window  # window of each token before the shift
    rolled = np.roll(label, shift=(-shift, -shift), axis=(0, 1))
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    for ax, img, title in (
        (axes[0], label, f"windows of {window}x{window}"),
        (axes[1], rolled, f"after roll by -{shift}: bands meet in edge windows"),
    ):
        ax.imshow(img % 10, cmap="tab10", vmin=0, vmax=9)
        _grid(ax, size, window)
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(OUT / "shifted_windows.png", dpi=110)
    plt.close(fig)


def masks(size: int = 12, window: int = 4, shift: int = 2) -> None:
    """The additive mask (0 or -100) of three windows after the shift, and the relative
    position index of one window."""
    mask = shifted_window_mask((size, size), window, shift)  # (nW, N, N)
    nw = size // window
    picks = {"interior": 0, "right edge": nw - 1, "corner": nw * nw - 1}
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.4))
    for ax, (name, idx) in zip(axes, picks.items()):
        ax.imshow(mask[idx].numpy(), cmap="gray", vmin=-100, vmax=0)
        ax.set_title(f"mask, {name} window\n(black = -100)", fontsize=9)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
    index = relative_position_index(window)
    im = axes[3].imshow(index.numpy(), cmap="viridis")
    axes[3].set_title("relative_position_index\n(row of the bias table)", fontsize=9)
    fig.colorbar(im, ax=axes[3], fraction=0.046)
    fig.tight_layout()
    fig.savefig(OUT / "masks.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    torch.manual_seed(0)
    shifted_windows()
    masks()
