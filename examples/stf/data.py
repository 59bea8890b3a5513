# SPDX-License-Identifier: Apache-2.0
"""Image folders, crops and flips for the STF training and evaluation scripts.

Images are read with `winattn.pretrained.images.read_image` (Pillow, no torchvision), which
converts 16-bit, alpha, palette, 1-bit, CMYK and EXIF-rotated images explicitly, with a warning
wherever the data changes; every script of the examples reads images through it.

Example:
    >>> from winattn_examples.stf.data import ImageFolder, SMOKE_DIR
    >>> crops = ImageFolder(SMOKE_DIR, patch_size=32, train=True)
    >>> crops[0].shape
    torch.Size([3, 32, 32])
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

# The one careful image reader (16-bit, alpha, EXIF orientation, masks, ...), shared with the
# `python -m winattn.pretrained` demo.
from winattn.pretrained.images import image_format_for, read_image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
SMOKE_DIR = Path(__file__).resolve().parent / "assets" / "smoke"
# 5-scale MS-SSIM with 11-tap windows (pytorch_msssim) needs each side above (11 - 1) * 2**4.
MIN_MS_SSIM_SIDE = 161


def find_images(root: str | Path) -> list[Path]:
    """Lists the image files under `root` (recursively), sorted by path.

    Raises:
        FileNotFoundError: if `root` is not a directory or holds no image.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist; pass a directory.")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {str(root)!r}."
        )
    return files


def write_image(x: torch.Tensor, path: str | Path, image_format: str | None = None) -> None:
    """Writes `x: (3, H, W)` in [0, 1] as an 8-bit RGB image.

    Args:
        x: (3, H, W) image; values outside [0, 1] are clamped.
        path: the file to write.
        image_format: Pillow format name; from the suffix of `path` when None.
    """
    from PIL import Image

    array = to_uint8(x).permute(1, 2, 0).cpu().numpy()  # (H, W, 3)
    Image.fromarray(array).save(path, format=image_format or image_format_for(path))


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Rounds `x` in [0, 1] to 8-bit levels (values outside are clamped), same shape."""
    return x.float().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)


def random_crop_flip(x: torch.Tensor, size: int, generator: torch.Generator | None = None):
    """A random `size` x `size` crop with random horizontal and vertical flips.

    Images smaller than `size` on a side are reflect-padded first (replicate-padded where the
    image is too small to reflect).

    Args:
        x: (3, H, W) image.
        size: side of the square crop.
        generator: random source (the global one when None).

    Returns:
        crop: (3, size, size).
    """
    x = pad_to_at_least(x, size)
    _, h, w = x.shape
    top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
    crop = x[:, top : top + size, left : left + size]
    flips = torch.rand(2, generator=generator) < 0.5
    if flips[0]:
        crop = crop.flip(-1)
    if flips[1]:
        crop = crop.flip(-2)
    return crop.contiguous()


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central `size` x `size` crop of `x: (3, H, W)` (padded like `random_crop_flip`)."""
    x = pad_to_at_least(x, size)
    _, h, w = x.shape
    top, left = (h - size) // 2, (w - size) // 2
    return x[:, top : top + size, left : left + size].contiguous()


def pad_to_at_least(x: torch.Tensor, size: int) -> torch.Tensor:
    """Pads `x: (3, H, W)` at the bottom/right to at least `size` on each side."""
    _, h, w = x.shape
    pad_h, pad_w = max(size - h, 0), max(size - w, 0)
    if pad_h == 0 and pad_w == 0:
        return x
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    padded = torch.nn.functional.pad(x[None], (0, pad_w, 0, pad_h), mode=mode)  # (1, 3, H', W')
    return padded[0]


class ImageFolder(Dataset):
    """The images of a folder as fixed-size crops.

    Training crops are random with random flips; validation crops are central, so validation
    losses are comparable from one run to the next.

    Args:
        root: folder searched recursively for images.
        patch_size: side of the square crops.
        train: random crops and flips when True, central crops when False.

    Example:
        >>> from winattn_examples.stf.data import ImageFolder, SMOKE_DIR
        >>> val = ImageFolder(SMOKE_DIR, patch_size=48, train=False)
        >>> val[0].shape
        torch.Size([3, 48, 48])
    """

    def __init__(self, root: str | Path, patch_size: int = 256, train: bool = True):
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size=}.")
        self.files = find_images(root)
        self.patch_size = patch_size
        self.train = train

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: int | tuple[int, int]) -> torch.Tensor:
        """The crop of image `key`, or of image `key[0]` drawn with the seed `key[1]`.

        A seeded key (what `ResumableSampler` yields) makes the crop a function of the key
        alone, whichever worker process reads it; a plain index draws from the global source.
        """
        index, seed = key if isinstance(key, tuple) else (key, None)
        x = read_image(self.files[index])
        if not self.train:
            return center_crop(x, self.patch_size)
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        return random_crop_flip(x, self.patch_size, generator)


class ResumableSampler(Sampler):
    """Shuffled epochs of `(index, seed)` keys that can start at any training step.

    Epoch `e` is a permutation of the dataset drawn from `(seed, e)`; with several processes,
    each takes every `world_size`-th entry of it (the tail that does not fill a whole step on
    every process is dropped, as `DistributedSampler(drop_last=True)` does). Every key carries
    its own crop seed, drawn from `(seed, e, rank, position)`. Hence the order and the crops of
    the data from step `n` on depend on `n` only: a run resumed at step `n` sees exactly the
    batches an uninterrupted run sees.

    Args:
        size: number of images.
        batch_size: images per step and process.
        seed: the run's seed.
        rank, world_size: this process and the number of processes.

    Example:
        >>> from winattn_examples.stf.data import ResumableSampler
        >>> sampler = ResumableSampler(5, batch_size=2, seed=0)
        >>> sampler.steps_per_epoch
        2
        >>> sampler.start_at(3)  # the second step of the second epoch
        >>> len(list(sampler))
        2
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.steps_per_epoch = size // world_size // batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"{size} images are fewer than one step needs ({batch_size=} x {world_size} "
                "processes); lower --batch-size or add images."
            )
        self.start_step = 0

    def start_at(self, step: int) -> None:
        """Makes the next iteration yield the rest of the epoch that holds `step`."""
        self.start_step = step

    def _epoch_and_skip(self) -> tuple[int, int]:
        return divmod(self.start_step, self.steps_per_epoch)

    def __len__(self) -> int:
        return (self.steps_per_epoch - self._epoch_and_skip()[1]) * self.batch_size

    def __iter__(self):
        epoch, skip = self._epoch_and_skip()
        generator = torch.Generator().manual_seed(_mix(self.seed, epoch))
        order = torch.randperm(self.size, generator=generator)  # (size,)
        mine = order[self.rank :: self.world_size][: self.steps_per_epoch * self.batch_size]
        for position in range(skip * self.batch_size, len(mine)):
            yield int(mine[position]), _mix(self.seed, epoch, self.rank, position)


def _mix(*numbers: int) -> int:
    """A 63-bit seed drawn from a tuple of non-negative integers."""
    low, high = np.random.SeedSequence(list(numbers)).generate_state(2)
    return (int(high) << 31) ^ int(low)
