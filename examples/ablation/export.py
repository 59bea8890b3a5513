# SPDX-License-Identifier: Apache-2.0
"""Ships the patched models of an evaluated run as `winattn.pretrained` weights with a model card.

Each patched model (one per λ, ordered by rate: quality 1 is the lowest) is stored weights-only
in fp16. The card's numbers are measured after that rounding, through `winattn.pretrained.load`,
exactly as a user loads the model, on every held-out photograph; export refuses to ship a model
whose decoded image differs from its forward output.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

import winattn.pretrained as pretrained

from .data import EVAL_IMAGES, TRAIN_IMAGES, load_images
from .evaluate import learned_point, load_trained, mean_point
from .train import TrainConfig


def _anchor_psnr_at(points: list[dict], bpp: float) -> float | None:
    """PSNR of an anchor curve at `bpp`, interpolated in log-rate; None outside its range."""
    pts = sorted(points, key=lambda p: p["bpp"])
    rates = np.log([p["bpp"] for p in pts])
    if not rates[0] <= np.log(bpp) <= rates[-1]:
        return None
    return round(float(np.interp(np.log(bpp), rates, [p["psnr-rgb"] for p in pts])), 2)


def export_run(run_dir: Path, name: str, *, dest: Path | None = None, force: bool = False) -> dict:
    """Writes `dest/name/` (default: inside `winattn.pretrained`): weights, card.json, MODEL_CARD.md.

    Raises:
        FileNotFoundError: `run_dir` has no evaluated run.
        FileExistsError: the model folder exists and `force` is False.
        RuntimeError: a rounded model decodes differently from its forward output.
    """
    summary_path = run_dir / "ablation.json"
    if not summary_path.exists():
        raise FileNotFoundError(f"no evaluated run in {run_dir}; run `evaluate` first.")
    summary = json.loads(summary_path.read_text())
    folder = (dest or Path(pretrained.__file__).parent) / name
    if folder.exists() and not force:
        raise FileExistsError(f"{folder} exists; pass --force to replace the shipped model.")
    config = TrainConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in summary["config"].items()}
    )
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    qualities = {}
    for quality, lmbda in enumerate(sorted(config.lmbdas), start=1):
        model = load_trained(run_dir, config, lmbda, "patched")
        state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
        weights = f"q{quality}.pt"
        torch.save(state, tmp / weights)
        qualities[str(quality)] = {"lmbda": lmbda, "weights": weights}
    card = {
        "name": name,
        "architecture": {
            "zoo_name": config.arch,
            "N": config.N,
            "M": config.M,
            "patch_model": {},
            "params": summary["cost"]["params"]["patched"],
        },
        "storage": "fp16 weights (int entropy-coder tables as is); loaded as fp32",
        "training": {
            "data": f"random {config.crop}x{config.crop} crops of scikit-image photographs "
            f"{list(TRAIN_IMAGES)}",
            "steps": summary["steps"],
            "batch_size": config.batch_size,
            "optimizer": f"Adam, lr {config.lr} cosine to {config.min_lr}, clip {config.clip}",
            "seed": config.seed,
            "train_seconds": {
                k: v["train_seconds"] for k, v in summary["train"].items() if "patched" in k
            },
            "machine": summary["machine"]["cpu"],
        },
        "eval_images": list(EVAL_IMAGES),
        "bd_rate_percent": summary["bd_rate_percent"],
        "qualities": qualities,
    }
    (tmp / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    photos = load_images(EVAL_IMAGES)
    for quality, entry in qualities.items():
        rows = learned_point(pretrained.load_folder(tmp, int(quality)), photos)
        if not all(r["decode_equals_forward"] for r in rows):
            raise RuntimeError(f"{name} quality {quality}: the decoded image differs from forward.")
        mean = mean_point(rows)
        entry["heldout_mean"] = {k: round(mean[k], 4) for k in ("bpp", "psnr-rgb", "ms-ssim-rgb")}
        entry["heldout"] = {
            img: {k: round(r[k], 4) for k in ("bpp", "psnr-rgb", "ms-ssim-rgb")}
            for img, r in zip(EVAL_IMAGES, rows)
        }
        entry["jpeg_psnr_at_same_bpp"] = _anchor_psnr_at(summary["points"]["JPEG"], mean["bpp"])
        entry["webp_psnr_at_same_bpp"] = _anchor_psnr_at(summary["points"]["WebP"], mean["bpp"])
    (tmp / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (tmp / "MODEL_CARD.md").write_text(model_card_markdown(card))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.replace(folder)
    pretrained._card.cache_clear()  # a replaced model is read again
    return card


def model_card_markdown(card: dict) -> str:
    """The human-readable model card."""
    arch, train = card["architecture"], card["training"]
    lines = [
        f"# {card['name']}",
        "",
        f"CompressAI `{arch['zoo_name']}` (`ScaleHyperprior`) at N={arch['N']}, M={arch['M']}, "
        f"patched with `winattn.patch_model` (defaults): {arch['params']:,} parameters, "
        f"{card['storage']}.",
        "",
        "```python",
        "from winattn import pretrained",
        "",
        f'model = pretrained.load("{card["name"]}", quality=1)  # 1 (lowest rate) .. '
        f"{len(card['qualities'])}",
        "```",
        "",
        "## Training",
        "",
        f"- Data: {train['data']}. No held-out photograph is ever cropped for training.",
        f"- Steps: {train['steps']} at batch {train['batch_size']}; {train['optimizer']}; "
        f"seed {train['seed']}.",
        "- Loss: CompressAI's `λ·255²·MSE + bpp`, one λ per quality (below).",
        f"- Machine: {train['machine']} (CPU), wall time per model in seconds: "
        f"{train['train_seconds']}.",
        "- This is a small CPU budget: the model is far from converged and far below "
        "CompressAI's published hyperprior. It is a working demo, not a state-of-the-art codec.",
        "",
        f"## Held-out results ({', '.join(card['eval_images'])}; whole images)",
        "",
        "bpp from the real bitstream, PSNR and MS-SSIM on the decoded 8-bit image, "
        "averaged over the photographs. JPEG/WebP: Pillow, PSNR interpolated at the same bpp.",
        "",
        "| quality | λ | bpp | PSNR (dB) | MS-SSIM | JPEG PSNR at same bpp | WebP PSNR at same bpp |",
        "|---|---|---|---|---|---|---|",
    ]
    for q, e in card["qualities"].items():
        m = e["heldout_mean"]
        lines.append(
            f"| {q} | {e['lmbda']} | {m['bpp']:.4f} | {m['psnr-rgb']:.2f} | "
            f"{m['ms-ssim-rgb']:.4f} | {_or_dash(e['jpeg_psnr_at_same_bpp'])} | "
            f"{_or_dash(e['webp_psnr_at_same_bpp'])} |"
        )
    lines += ["", "Per photograph:", "", "| quality | photograph | bpp | PSNR (dB) | MS-SSIM |"]
    lines.append("|---|---|---|---|---|")
    for q, e in card["qualities"].items():
        for img, m in e["heldout"].items():
            lines.append(
                f"| {q} | {img} | {m['bpp']:.4f} | {m['psnr-rgb']:.2f} | {m['ms-ssim-rgb']:.4f} |"
            )
    lines += ["", "BD-rate (%, negative is better) on the held-out photographs:", ""]
    for pair, v in card["bd_rate_percent"].items():
        lines.append(
            f"- {pair}: PSNR {_or_dash(v['psnr'], '+.1f')}, MS-SSIM {_or_dash(v['ms-ssim'], '+.1f')}"
        )
    lines += [
        "",
        "Reproduce one row (compresses and decompresses the photograph, prints bpp and PSNR):",
        "",
        "```bash",
        f"python -m winattn.pretrained skimage:coffee --model {card['name']} --quality 1",
        "```",
        "",
    ]
    return "\n".join(lines)


def _or_dash(value: float | None, fmt: str = ".2f") -> str:
    return "–" if value is None else format(value, fmt)
