# SPDX-License-Identifier: Apache-2.0
"""Real photographs that install with scikit-image, split once into training and held-out images.

Nothing is downloaded at run time: every image below ships inside the scikit-image wheel
(`pip install scikit-image`). The split is fixed by name:

- `EVAL_IMAGES`: three colour photographs, always evaluated whole and never cropped for
  training (astronaut, coffee, chelsea the cat).
- `TRAIN_IMAGES`: every other bundled photograph: colour (rocket, the stereo motorcycle pair,
  Hubble deep field, retina, immunohistochemistry) and grayscale photographs and textures
  (camera, moon, coins, clock, cell, brick, grass, gravel), the grayscale ones repeated over
  three channels.

Synthetic images (checkerboards, colour wheels, logos, text renderings, binary masks) are left
out of both sets.

Example:
    >>> from examples.ablation.data import load_images, EVAL_IMAGES
    >>> [img.shape for img in load_images(EVAL_IMAGES)]
    [torch.Size([3, 512, 512]), torch.Size([3, 400, 600]), torch.Size([3, 300, 451])]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from winattn.pretrained.images import from_array

EVAL_IMAGES: tuple[str, ...] = ("astronaut", "coffee", "chelsea")
TRAIN_IMAGES: tuple[str, ...] = (
    "rocket",
    "motorcycle_left",
    "motorcycle_right",
    "hubble_deep_field",
    "retina",
    "immunohistochemistry",
    "camera",
    "moon",
    "coins",
    "clock",
    "cell",
    "brick",
    "grass",
    "gravel",
)


def _read(name: str) -> np.ndarray:
    """One bundled photograph as scikit-image gives it (`(H, W)` or `(H, W, C)`)."""
    try:
        import skimage.data
    except ImportError as err:
        raise ImportError(
            "the ablation photographs ship with scikit-image: pip install scikit-image"
        ) from err
    if name in ("motorcycle_left", "motorcycle_right"):
        left, right, _ = skimage.data.stereo_motorcycle()
        img = left if name == "motorcycle_left" else right
    elif name in EVAL_IMAGES or name in TRAIN_IMAGES:
        img = getattr(skimage.data, name)()
    else:
        raise ValueError(
            f"unknown photograph name={name!r}; choose one of "
            f"EVAL_IMAGES={EVAL_IMAGES} or TRAIN_IMAGES={TRAIN_IMAGES}."
        )
    return img


def load_image(name: str) -> Tensor:
    """A bundled photograph by name.

    Args:
        name: one of `EVAL_IMAGES` or `TRAIN_IMAGES`.

    Returns:
        `(3, H, W)` float32 tensor in `[0, 1]`.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    return from_array(_read(name), f"skimage:{name}")  # the examples' one careful reader


def load_images(names: Sequence[str]) -> list[Tensor]:
    """Several bundled photographs, each `(3, H, W)` in `[0, 1]` (sizes differ)."""
    return [load_image(n) for n in names]


class RandomCrops:
    """Endless batches of random crops, with random horizontal flips, from a list of images.

    The same `seed` gives the same batches in the same order, so two models trained from one
    `RandomCrops` each see exactly the same data.

    Args:
        images: `(3, H, W)` tensors, each at least `size` on both sides.
        size: side of the square crops.
        batch_size: crops per batch.
        seed: seed of the generator that picks images, positions and flips.

    Example:
        >>> crops = RandomCrops([torch.rand(3, 80, 90)], size=64, batch_size=2, seed=0)
        >>> next(crops).shape
        torch.Size([2, 3, 64, 64])
    """

    def __init__(self, images: Sequence[Tensor], size: int, batch_size: int, seed: int) -> None:
        if not images:
            raise ValueError("RandomCrops needs at least one image; got images=[].")
        small = [tuple(im.shape[-2:]) for im in images if min(im.shape[-2:]) < size]
        if small:
            raise ValueError(
                f"crop size={size} is larger than image(s) of size {small}; use a smaller --crop."
            )
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1.")
        self.images = list(images)
        self.size = size
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> RandomCrops:
        return self

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator))

    def __next__(self) -> Tensor:
        crops = []
        for _ in range(self.batch_size):
            img = self.images[self._randint(len(self.images))]
            top = self._randint(img.shape[1] - self.size + 1)
            left = self._randint(img.shape[2] - self.size + 1)
            crop = img[:, top : top + self.size, left : left + self.size]
            if self._randint(2):
                crop = crop.flip(-1)
            crops.append(crop)
        return torch.stack(crops)  # (batch_size, 3, size, size)

    def state_dict(self) -> dict:
        """The generator state, so a resumed run continues the same sequence of batches."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
