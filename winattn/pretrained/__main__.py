# SPDX-License-Identifier: Apache-2.0
"""Compresses and decompresses one photograph with a shipped model; prints bpp and PSNR.

    python -m winattn.pretrained skimage:coffee --quality 3 --out coffee-decoded.png
    python -m winattn.pretrained my_photo.png --quality 1

SOURCE is an image file, or `skimage:NAME` for a photograph bundled with scikit-image (no
download). For the held-out photographs of the model card (astronaut, coffee, chelsea) the
card's numbers are printed beside the measured ones.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from winattn import pretrained


def read_image(source: str) -> np.ndarray:
    """`(H, W, 3)` uint8 from a file path or `skimage:NAME`."""
    if source.startswith("skimage:"):
        name = source.split(":", 1)[1]
        try:
            import skimage.data
        except ImportError as err:
            raise ValueError(f"{source!r} needs scikit-image: pip install scikit-image") from err
        if not hasattr(skimage.data, name):
            raise ValueError(f"scikit-image has no photograph {name!r}; try skimage:coffee.")
        img = getattr(skimage.data, name)()
        img = np.repeat(img[:, :, None], 3, axis=2) if img.ndim == 2 else img[:, :, :3]
        return np.ascontiguousarray(img)
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"no image file at {source!r}; give a path or skimage:NAME.")
    return np.asarray(Image.open(path).convert("RGB"))


def main(argv: list[str] | None = None) -> int:
    names = pretrained.available()
    p = argparse.ArgumentParser(
        prog="python -m winattn.pretrained", description=__doc__.split("\n")[0]
    )
    p.add_argument("source", help="image file, or skimage:NAME (e.g. skimage:coffee)")
    p.add_argument("--model", default=names[0] if names else None, help=f"one of {names}")
    p.add_argument("--quality", type=int, default=1, help="rate point, 1 = lowest rate")
    p.add_argument("--out", type=Path, default=None, help="write the decoded image (PNG)")
    args = p.parse_args(argv)
    try:
        if args.model is None:
            raise ValueError("no shipped model is installed with this copy of winattn.")
        array = read_image(args.source)
        model = pretrained.load(args.model, args.quality)
    except (ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    x = torch.from_numpy(array).permute(2, 0, 1).float().div(255)[None]  # (1, 3, H, W)
    coded = pretrained.compress_image(model, x)
    quality_db = pretrained.psnr(x, coded.x_hat)
    h, w = array.shape[:2]
    print(f"{args.source}: {w}x{h}, {args.model} quality {args.quality}")
    print(
        f"{coded.num_bytes} bytes, {coded.bpp:.4f} bpp, PSNR {quality_db:.2f} dB "
        f"(encode {coded.encode_seconds:.2f} s, decode {coded.decode_seconds:.2f} s)"
    )
    photo = args.source.split(":", 1)[1] if args.source.startswith("skimage:") else None
    card_row = pretrained.card(args.model)["qualities"][str(args.quality)]["heldout"].get(photo)
    if card_row:
        print(f"model card: {card_row['bpp']:.4f} bpp, PSNR {card_row['psnr-rgb']:.2f} dB")
    if args.out:
        decoded = (coded.x_hat[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(decoded).save(args.out)  # (3,H,W)->(H,W,3) uint8
        print(f"decoded image -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
