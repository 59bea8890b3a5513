# SPDX-License-Identifier: Apache-2.0
"""Image folders, crops and flips for the STF training and evaluation scripts.

Images are read with Pillow and turned into float tensors in `[0, 1]` without torchvision, so
the scripts need nothing beyond the `examples` extra of the package.

Example:
    >>> from winattn_examples.stf.data import ImageFolder, SMOKE_DIR
    >>> crops = ImageFolder(SMOKE_DIR, patch_size=32, train=True)
    >>> crops[0].shape
    torch.Size([3, 32, 32])
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

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


def read_image(path: str | Path) -> torch.Tensor:
    """Reads an image as RGB, converting other layouts explicitly.

    8-bit RGB and greyscale images are read as they are (grey is repeated on the three
    channels). Images that cannot be represented exactly are converted with a warning, never
    silently: 16-bit images are scaled from `[0, 65535]` to `[0, 1]` at full precision (the
    codecs and metrics work on 8-bit images, so their outputs keep 8 bits of it), and an alpha
    channel that is not fully opaque is dropped (the codecs code RGB only). Images with other
    sample types (32-bit integer or float) are refused.

    Returns:
        x: (3, H, W) float32 in [0, 1].

    Raises:
        ValueError: for a sample type that has no faithful RGB reading.
    """
    from PIL import Image

    with Image.open(path) as img:
        raw_modes = {tile.args for tile in img.tile if isinstance(tile.args, str)}  # before load
        img.load()
        return _to_rgb(img, str(path), raw_modes)


def _to_rgb(img, name: str, raw_modes: set[str]) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1] from a loaded Pillow image (see `read_image`)."""
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        array = np.asarray(img).astype(np.float64)  # (H, W)
        if mode == "I" and (array.min() < 0 or array.max() > 65535):
            raise ValueError(
                f"{name!r} holds 32-bit integer samples (range {array.min():.0f}..{array.max():.0f}); "
                "convert it to an 8- or 16-bit image first."
            )
        warnings.warn(
            f"{name!r} is a 16-bit greyscale image; it is scaled to [0, 1] from 16 bits, and the "
            "codec's output is 8-bit.",
            stacklevel=3,
        )
        grey = torch.from_numpy(array / 65535.0).float()  # (H, W)
        return grey.expand(3, *grey.shape).contiguous()  # (3, H, W)
    if mode == "F" or mode.startswith(("I;32", "F;")):
        raise ValueError(
            f"{name!r} holds floating-point or 32-bit samples (Pillow mode {mode!r}); convert it "
            "to an 8- or 16-bit image first."
        )
    if any(";16" in raw for raw in raw_modes):
        warnings.warn(
            f"{name!r} has 16 bits per channel; Pillow reads it as 8-bit {mode}, and the codec "
            "works on 8-bit images.",
            stacklevel=3,
        )
    if "A" in mode or (mode == "P" and "transparency" in img.info):
        alpha = np.asarray(img.convert("RGBA"))[..., 3]  # (H, W)
        if alpha.min() < 255:
            warnings.warn(
                f"{name!r} has transparent pixels (alpha channel); the alpha channel is dropped "
                "and those pixels keep their colour values, since the codec codes RGB only.",
                stacklevel=3,
            )
    array = np.asarray(img.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)  # (3, H, W)


def image_format_for(path: str | Path) -> str:
    """Pillow's format name for the suffix of `path` ("PNG" for `.png`).

    Raises:
        ValueError: if Pillow cannot write files with that suffix.
    """
    from PIL import Image

    suffix = Path(path).suffix.lower()
    image_format = Image.registered_extensions().get(suffix)
    if image_format is None or image_format not in Image.SAVE:
        raise ValueError(
            f"cannot write images with suffix {suffix!r} (output {str(path)!r}); use .png."
        )
    return image_format


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
