# SPDX-License-Identifier: Apache-2.0
"""Fine-tunes a CompressAI model patched with window attention, and saves a checkpoint.

The model comes from the CompressAI zoo (`--arch`, `--quality`; `--pretrained` downloads
CompressAI's weights, as the zoo does) or from a checkpoint of the unpatched architecture
(`--checkpoint`). It is patched with `winattn.patch_model` (inserted blocks start as an exact
identity, so the first step starts from the pretrained model's rate-distortion point), then
trained on random crops of a folder of images with CompressAI's rate-distortion loss, plus the
auxiliary loss of the entropy bottleneck on its own optimizer.

Example:
    python examples/finetune_patched.py --arch bmshj2018-hyperprior --quality 3 \\
        --pretrained --dataset ~/data/train --epochs 2 --out hyperprior-winattn.pth.tar
    python -m winattn.integrations.compressai update_model hyperprior-winattn.pth.tar \\
        -a bmshj2018-hyperprior-winattn -d exported
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from tqdm import tqdm

from winattn import patch_model

if __package__:  # imported (examples.finetune_patched, winattn_examples.finetune_patched)
    from .stf.atomic import atomic_write
    from .stf.cli import refuse_existing
    from .stf.data import find_images, read_image
else:  # run as a script: its folder is on sys.path
    from stf.atomic import atomic_write
    from stf.cli import refuse_existing
    from stf.data import find_images, read_image

# CompressAI's MSE lambdas of the zoo's qualities 1..8 (the rate point the weights were trained at).
MSE_LAMBDAS = (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800)


class ImageCrops(Dataset):
    """Random crops of every image under `root`, as `(3, size, size)` tensors in `[0, 1]`.

    Images are read by the examples' one reader (`winattn.pretrained.images.read_image`):
    16-bit grey images are scaled from 16 bits (16-bit RGB keeps its top 8 bits), an alpha
    channel is dropped, masks become 0/255 and EXIF orientation is applied, with a warning
    wherever the data changes; images smaller than `size` are zero-padded.
    """

    def __init__(self, root: str, size: int) -> None:
        self.files = find_images(root)
        self.crop = transforms.RandomCrop(size, pad_if_needed=True)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.crop(read_image(self.files[i]))


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    from compressai.zoo import image_models, load_state_dict

    model = image_models[args.arch](quality=args.quality, pretrained=args.pretrained)
    if args.checkpoint:
        state = torch.load(args.checkpoint, map_location="cpu")
        model.load_state_dict(load_state_dict(state.get("state_dict", state)))
    patch_model(model, init=args.init, window_size=args.window_size, num_heads=args.num_heads)
    print(model.winattn_report)
    return model


def optimizers(model: torch.nn.Module, lr: float, aux_lr: float):
    """CompressAI's split: the entropy bottleneck's quantiles get their own optimizer."""
    main = [p for n, p in model.named_parameters() if not n.endswith(".quantiles") and p.requires_grad]
    aux = [p for n, p in model.named_parameters() if n.endswith(".quantiles") and p.requires_grad]
    return torch.optim.Adam(main, lr=lr), torch.optim.Adam(aux, lr=aux_lr)


def train(args: argparse.Namespace) -> Path:
    from compressai.losses import RateDistortionLoss

    out = Path(args.out)
    refuse_existing([out], args.force, inputs=[args.checkpoint])  # before training, not after
    print(f"fine-tuning {args.arch} quality {args.quality} at lambda={args.lmbda}; the result "
          f"goes to {out}")
    device = torch.device(args.device)
    model = build_model(args).to(device).train()
    loader = DataLoader(
        ImageCrops(args.dataset, args.patch_size), batch_size=args.batch_size, shuffle=True,
        num_workers=args.workers, drop_last=False,
    )
    criterion = RateDistortionLoss(lmbda=args.lmbda)
    optimizer, aux_optimizer = optimizers(model, args.lr, args.aux_lr)
    for epoch in range(args.epochs):
        progress = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}")
        for x in progress:
            x = x.to(device)
            optimizer.zero_grad()
            aux_optimizer.zero_grad()
            losses = criterion(model(x), x)
            losses["loss"].backward()
            if args.clip_max_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_max_norm)
            optimizer.step()
            aux_loss = model.aux_loss()
            aux_loss.backward()
            aux_optimizer.step()
            progress.set_postfix(
                loss=f"{losses['loss'].item():.4f}",
                bpp=f"{losses['bpp_loss'].item():.3f}",
                mse=f"{losses['mse_loss'].item():.5f}",
                aux=f"{aux_loss.item():.1f}",
            )
    payload = {"state_dict": model.state_dict(), "arch": f"{args.arch}-winattn",
               "epoch": args.epochs, "quality": args.quality, "lmbda": args.lmbda}
    atomic_write(out, lambda tmp: torch.save(payload, tmp), overwrite=args.force)
    print(f"saved {out}; export it with: python -m winattn.integrations.compressai update_model "
          f"{out} -a {args.arch}-winattn")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", default="bmshj2018-hyperprior", help="CompressAI zoo architecture")
    p.add_argument("--quality", type=int, default=3, choices=range(1, len(MSE_LAMBDAS) + 1),
                   help="zoo quality (the weights' rate point); picks the lambda")
    p.add_argument("--pretrained", action="store_true", help="start from CompressAI's weights (downloads)")
    p.add_argument("--checkpoint", help="state dict of the unpatched architecture to start from")
    p.add_argument("--dataset", required=True, help="folder of training images")
    p.add_argument("--epochs", type=int, default=1, help="passes over the dataset")
    p.add_argument("--batch-size", type=int, default=8, help="images per step")
    p.add_argument("--patch-size", type=int, default=256, help="side of the random crops")
    p.add_argument("--lmbda", type=float, default=None,
                   help="rate-distortion trade-off (None: CompressAI's MSE lambda of --quality)")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate")
    p.add_argument("--aux-lr", type=float, default=1e-3, help="learning rate of the quantiles")
    p.add_argument("--clip-max-norm", type=float, default=1.0, help="0 disables clipping")
    p.add_argument("--init", choices=["identity", "paper"], default="identity",
                   help="initialisation of the inserted blocks")
    p.add_argument("--window-size", type=int, default=None,
                   help="window of the inserted blocks (None: patch_model's choice)")
    p.add_argument("--num-heads", type=int, default=8, help="heads of the inserted blocks")
    p.add_argument("--workers", type=int, default=0, help="data loading processes")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where training runs")
    p.add_argument("--out", default="checkpoint-winattn.pth.tar", help="checkpoint to write")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    args = p.parse_args(argv)
    if args.lmbda is None:
        args.lmbda = MSE_LAMBDAS[args.quality - 1]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        train(args)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted; nothing was written to {args.out}.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
