# SPDX-License-Identifier: Apache-2.0
"""Compresses and decompresses one photograph with a shipped model; prints bpp and PSNR.

    python -m winattn.pretrained skimage:coffee --quality 3 --out coffee-decoded.png
    python -m winattn.pretrained my_photo.png --quality 1

SOURCE is an image file, or `skimage:NAME` for a photograph bundled with scikit-image (no
download); both are read by `winattn.pretrained.images.read_source`, which converts 16-bit,
alpha, masks, CMYK and EXIF-rotated images explicitly, with a warning wherever the data changes.
`--out` never replaces the source image, and replaces another existing file only with `--force`;
its folder and format are checked before the work starts. For the held-out photographs of the model card (astronaut, coffee, chelsea) the
card's numbers are printed beside the measured ones.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from PIL import Image

from winattn import pretrained
from winattn.pretrained.images import check_output, image_format_for, read_source


def main(argv: list[str] | None = None) -> int:
    names = pretrained.available()
    p = argparse.ArgumentParser(
        prog="python -m winattn.pretrained", description=__doc__.split("\n")[0]
    )
    p.add_argument("source", help="image file, or skimage:NAME (e.g. skimage:coffee)")
    p.add_argument("--model", default=names[0] if names else None, help=f"one of {names}")
    p.add_argument("--quality", type=int, default=1, help="rate point, 1 = lowest rate")
    p.add_argument("--out", type=Path, default=None,
                   help="write the decoded image (a format Pillow writes: .png, ...)")
    p.add_argument("--force", action="store_true",
                   help="overwrite an existing --out (never the source image)")
    args = p.parse_args(argv)
    try:
        if args.model is None:
            raise ValueError("no shipped model is installed with this copy of winattn.")
        if args.out is not None:  # before the work, not after it
            image_format = image_format_for(args.out)
            check_output(args.out, force=args.force, inputs=[args.source])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            x = read_source(args.source)[None]  # (1, 3, H, W)
        for warning in caught:
            print(f"warning: {warning.message}", file=sys.stderr)
        model = pretrained.load(args.model, args.quality)
    except (ValueError, ImportError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    coded = pretrained.compress_image(model, x)
    quality_db = pretrained.psnr(x, coded.x_hat)
    h, w = x.shape[-2:]
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
        Image.fromarray(decoded).save(args.out, format=image_format)  # (3,H,W)->(H,W,3) uint8
        print(f"decoded image -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
