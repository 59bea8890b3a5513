# SPDX-License-Identifier: Apache-2.0
"""How often a swap that is not bit-exact changes a file, or breaks decoding across models.

A CompressAI `MeanScaleHyperprior` (compressai 1.2.8) gets two timm Swin blocks in its `h_s`,
which computes the means and scales of the entropy model: the place where a difference of
1e-7 matters most. For each seed the model (random weights, latents scaled to span many
symbols) is patched on a copy; each image is compressed by both models and the unpatched
model's file is decoded by both. Counted: files whose bytes differ, and cross-decodes whose
`x_hat` differs from the unpatched decode by more than 1e-3 (a desynchronised entropy decoder).
Prints a table and writes JSON under `benchmarks/results/`.

    PYTHONPATH=. python benchmarks/cross_decode.py --seeds 6 --images 8
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from compressai.models import MeanScaleHyperprior
from patch_models import ROOT, machine, versions  # puts the checkout on sys.path if needed
from timm.models.swin_transformer import SwinTransformerBlock
from torch import nn

from winattn import patch_model


class ChannelsLast(nn.Module):
    """Runs a `(B, H, W, C)` block on NCHW maps."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, C, H, W)


def build(seed: int, n: int = 64, m: int = 96, latent_gain: float = 20.0) -> nn.Module:
    """A mean-scale hyperprior with two Swin blocks (window 4, shift 0 and 2) in `h_s`."""
    torch.manual_seed(seed)
    model = MeanScaleHyperprior(n, m)
    blocks = [
        ChannelsLast(SwinTransformerBlock(m, (8, 8), num_heads=4, window_size=4, shift_size=s, dynamic_mask=True))
        for s in (0, 2)
    ]
    model.h_s = nn.Sequential(*list(model.h_s)[:2], *blocks, *list(model.h_s)[2:])
    with torch.no_grad():
        for block in blocks:
            nn.init.normal_(block.block.attn.relative_position_bias_table, std=0.5)
        model.g_a[-1].weight.mul_(latent_gain)  # latents spanning many symbols
    model.update(force=True)
    return model.eval()


def image(seed: int, size: int) -> torch.Tensor:
    """A smooth random image `(1, 3, size, size)` in [0, 1]."""
    low = torch.rand(1, 3, size // 8, size // 8, generator=torch.Generator().manual_seed(seed))
    return nn.functional.interpolate(low, size=(size, size), mode="bicubic").clamp(0, 1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=6, help="models (default: 6)")
    parser.add_argument("--images", type=int, default=8, help="images per model (default: 8)")
    parser.add_argument("--size", type=int, default=256, help="image side (default: 256)")
    parser.add_argument("--out", help="JSON path (default: benchmarks/results/cross_decode_<date>.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for seed in range(args.seeds):
        unpatched = build(seed)
        patched = patch_model(copy.deepcopy(unpatched))
        deltas = [e.max_delta for e in patched.winattn_report.entries]
        for i in range(args.images):
            x = image(1000 * seed + i, args.size)
            with torch.no_grad():
                file, other = unpatched.compress(x), patched.compress(x)
                ref = unpatched.decompress(file["strings"], file["shape"])["x_hat"]
                cross = patched.decompress(file["strings"], file["shape"])["x_hat"]
            diff = (cross - ref).abs().max().item()
            rows.append(
                {
                    "seed": seed,
                    "image": i,
                    "probe_max_delta": max(deltas),
                    "bytes_differ": file["strings"] != other["strings"],
                    "cross_decode_max_diff": diff,
                    "cross_decode_broken": diff > 1e-3,
                    "latent_symbols": unpatched.g_a(x).numel(),
                }
            )
            print(f"seed {seed} image {i}: bytes {'differ' if rows[-1]['bytes_differ'] else 'same'}, cross-decode max diff {diff:.2g}")
    files = len(rows)
    summary = {
        "files": files,
        "latent_symbols": sum(r["latent_symbols"] for r in rows),
        "bytes_differ": sum(r["bytes_differ"] for r in rows),
        "cross_decode_broken": sum(r["cross_decode_broken"] for r in rows),
        "probe_max_delta": max(r["probe_max_delta"] for r in rows),
    }
    print(summary)
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    path = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"cross_decode_{now:%Y%m%d-%H%M%S}.json"
    about = {"machine": machine(torch.device("cpu")), "versions": versions(), "settings": vars(args)}
    document = {"benchmark": "cross-decoding, swaps in h_s", "date": now.isoformat(), **about, "summary": summary, "results": rows}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
