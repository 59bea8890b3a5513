# SPDX-License-Identifier: Apache-2.0
"""Evaluates a trained ablation run on the held-out photographs, with JPEG and WebP as anchors.

Every codec is measured the same way on each whole held-out photograph: bpp from the actual
bytes (`compress()` for the learned codecs, Pillow's encoder for JPEG and WebP), PSNR and
MS-SSIM of the decoded image rounded to 8 bits, then averaged over the photographs as
CompressAI's `eval_model` does. The run folder receives one JSON per codec in `eval_model`'s
format, `ablation.json` (BD-rates, steps, wall times, machine, per-image values) and `rd.png`.
"""

from __future__ import annotations

import io
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pytorch_msssim import ms_ssim
from torch import Tensor, nn
from tqdm import tqdm

from winattn.pretrained import compress_image, psnr

from .data import EVAL_IMAGES, load_images
from .train import VARIANTS, TrainConfig, build_model

JPEG_QUALITIES = (1, 3, 5, 10, 20, 30, 50, 70, 90)
WEBP_QUALITIES = (0, 2, 5, 10, 20, 40, 60, 80, 95)


def to_8bit(x: Tensor) -> Tensor:
    """`x` rounded to the 256 levels an 8-bit image file can hold, still in `[0, 1]`."""
    return (x.clamp(0, 1) * 255).round() / 255


def image_metrics(x: Tensor, x_hat: Tensor, num_bytes: int) -> dict[str, float]:
    """bpp, PSNR (dB) and MS-SSIM of one decoded image `(1, 3, H, W)` against `x`."""
    x_hat = to_8bit(x_hat)
    return {
        "bpp": num_bytes * 8 / (x.shape[-2] * x.shape[-1]),
        "psnr-rgb": psnr(x, x_hat),
        "ms-ssim-rgb": ms_ssim(x, x_hat, data_range=1.0).item(),
    }


def learned_point(model: nn.Module, images: Sequence[Tensor]) -> list[dict[str, float]]:
    """Per-image metrics of a CompressAI model (after `update()`) with its real entropy coder.

    Each entry also says whether the decoded image equals the model's forward output exactly.
    """
    rows = []
    for x in images:
        x = x[None]  # (1, 3, H, W)
        coded = compress_image(model, x)
        row = image_metrics(x, coded.x_hat, coded.num_bytes)
        row["encoding_time"] = coded.encode_seconds
        row["decoding_time"] = coded.decode_seconds
        row["decode_equals_forward"] = bool(torch.equal(coded.x_hat, forward_x_hat(model, x)))
        rows.append(row)
    return rows


@torch.inference_mode()
def forward_x_hat(model: nn.Module, x: Tensor, multiple: int = 64) -> Tensor:
    """The eval-mode forward reconstruction of `x`, padded and cropped like `compress_image`."""
    from winattn.pretrained import _pad_amounts

    h, w = x.shape[-2:]
    left, right, top, bottom = _pad_amounts(h, w, multiple)
    out = model(nn.functional.pad(x, (left, right, top, bottom)))["x_hat"].clamp(0, 1)
    return out[..., top : top + h, left : left + w]  # (B, 3, H, W)


def pillow_point(images: Sequence[Tensor], fmt: str, quality: int) -> list[dict[str, float]]:
    """Per-image metrics of Pillow's `fmt` ("JPEG" or "WEBP") encoder at `quality`."""
    rows = []
    for x in images:
        array = (x.permute(1, 2, 0) * 255).round().byte().numpy()  # (3,H,W)->(H,W,3) uint8
        buffer = io.BytesIO()
        start = time.perf_counter()
        Image.fromarray(array).save(buffer, format=fmt, quality=quality)
        mid = time.perf_counter()
        decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
        end = time.perf_counter()
        x_hat = torch.from_numpy(decoded.copy()).permute(2, 0, 1).float().div(255)[None]
        row = image_metrics(x[None], x_hat, len(buffer.getvalue()))
        row["encoding_time"], row["decoding_time"] = mid - start, end - mid
        rows.append(row)
    return rows


def mean_point(rows: list[dict]) -> dict[str, float]:
    """Metrics averaged over images, as CompressAI's `eval_model` averages them."""
    return {
        k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "decode_equals_forward"
    }


def eval_model_json(name: str, description: str, points: list[dict[str, float]]) -> dict:
    """Points, ordered by rate, in the layout of CompressAI's `eval_model` output."""
    points = sorted(points, key=lambda p: p["bpp"])
    keys = ("psnr-rgb", "ms-ssim-rgb", "bpp", "encoding_time", "decoding_time")
    return {
        "name": name,
        "description": description,
        "results": {k: [p[k] for p in points] for k in keys},
    }


def bd_rate(anchor: dict, test: dict, metric: str = "psnr-rgb") -> float | None:
    """BD-rate (%) of `test` against `anchor` (eval_model JSONs), by `bjontegaard` with PCHIP.

    Negative means `test` needs fewer bits for the same quality. None when the curves do not
    overlap in quality or are not monotone (the message is in the JSON then).
    """
    import bjontegaard

    a, t = anchor["results"], test["results"]

    def dist(values: list[float]) -> np.ndarray:
        v = np.asarray(values)
        return -10 * np.log10(1 - v) if metric == "ms-ssim-rgb" else v  # MS-SSIM in dB

    try:
        value = float(
            bjontegaard.bd_rate(
                a["bpp"], dist(a[metric]), t["bpp"], dist(t[metric]),
                method="pchip", require_matching_points=False,
            )
        )  # fmt: skip
    except (ValueError, AssertionError):
        return None
    return value if np.isfinite(value) else None


def plot_rd(curves: dict[str, dict], path: Path, title: str) -> None:
    """PSNR and MS-SSIM (dB) against bpp, one line per codec, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"unpatched": "o-", "patched": "s-", "JPEG": "^--", "WebP": "v--"}
    for label, curve in curves.items():
        r = curve["results"]
        msssim_db = -10 * np.log10(1 - np.asarray(r["ms-ssim-rgb"]))
        axes[0].plot(r["bpp"], r["psnr-rgb"], styles.get(label, "x-"), label=label)
        axes[1].plot(r["bpp"], msssim_db, styles.get(label, "x-"), label=label)
    for ax, ylabel in zip(axes, ("PSNR (dB)", "MS-SSIM (dB)")):
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine() -> dict:
    """The machine and software the numbers come from."""
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "load_average": [round(v, 2) for v in os.getloadavg()]
        if hasattr(os, "getloadavg")
        else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def load_trained(run_dir: Path, config: TrainConfig, lmbda: float, variant: str) -> nn.Module:
    """A trained model of the run, with its quantiles and entropy coder tables updated."""
    model = build_model(config, variant)
    path = run_dir / "weights" / f"lmbda{lmbda:g}-{variant}.pt"
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    model.update(force=True, update_quantiles=True)
    return model.eval()


def evaluate_run(
    run_dir: Path,
    *,
    force: bool = False,
    images: Sequence[str] = EVAL_IMAGES,
    jpeg_qualities: Sequence[int] = JPEG_QUALITIES,
    webp_qualities: Sequence[int] = WEBP_QUALITIES,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Evaluates every model of a trained run and the anchors; writes the JSONs and the plot.

    Args:
        run_dir: a folder `train_models` wrote (`train.json`, `weights/`).
        force: overwrite earlier results in `run_dir`.
        images: held-out photographs (names of `examples.ablation.data`).
        jpeg_qualities: Pillow JPEG qualities of the anchor.
        webp_qualities: Pillow WebP qualities of the anchor.
        progress: show a tqdm bar.
        log: where the summary lines go.

    Returns:
        The content of `ablation.json`.

    Raises:
        FileNotFoundError: `run_dir` has no trained run.
        FileExistsError: `run_dir` already has results and `force` is False.
    """
    summary_path = run_dir / "ablation.json"
    if summary_path.exists() and not force:
        raise FileExistsError(
            f"{summary_path} exists; pass --force to evaluate again and overwrite it."
        )
    train_path = run_dir / "train.json"
    if not train_path.exists():
        raise FileNotFoundError(f"no trained run in {run_dir} (no train.json); run `train` first.")
    trained = json.loads(train_path.read_text())
    config = TrainConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in trained["config"].items()}
    )
    photos = load_images(images)

    jobs = [(lm, v) for lm in config.lmbdas for v in VARIANTS]
    per_image: dict[str, dict[str, list]] = {}
    points: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    bar = tqdm(
        total=len(jobs) + len(jpeg_qualities) + len(webp_qualities),
        disable=not progress,
        desc="evaluate",
    )
    for lmbda, variant in jobs:
        rows = learned_point(load_trained(run_dir, config, lmbda, variant), photos)
        per_image[f"lmbda{lmbda:g}-{variant}"] = dict(zip(images, rows))
        points[variant].append({**mean_point(rows), "lmbda": lmbda})
        bar.update(1)
    for fmt, label, qualities in (
        ("JPEG", "JPEG", jpeg_qualities),
        ("WEBP", "WebP", webp_qualities),
    ):
        points[label] = []
        for q in qualities:
            rows = pillow_point(photos, fmt, q)
            per_image[f"{label}-q{q}"] = dict(zip(images, rows))
            points[label].append({**mean_point(rows), "quality": q})
            bar.update(1)
    bar.close()

    steps = trained["steps"]
    arch = f"{config.arch} N={config.N} M={config.M}"
    curves = {
        "unpatched": eval_model_json(arch, f"Inference (trained {steps} steps, unpatched)", points["unpatched"]),
        "patched": eval_model_json(f"{arch} + winattn", f"Inference (trained {steps} steps, patch_model)", points["patched"]),
        "JPEG": eval_model_json("JPEG", f"Pillow JPEG, qualities {list(jpeg_qualities)}", points["JPEG"]),
        "WebP": eval_model_json("WebP", f"Pillow WebP, qualities {list(webp_qualities)}", points["WebP"]),
    }  # fmt: skip
    for label, curve in curves.items():
        (run_dir / f"{label.lower()}.json").write_text(json.dumps(curve, indent=2) + "\n")

    bd = {
        f"{test} vs {anchor}": {
            "psnr": bd_rate(curves[anchor], curves[test], "psnr-rgb"),
            "ms-ssim": bd_rate(curves[anchor], curves[test], "ms-ssim-rgb"),
        }
        for test, anchor in (
            ("patched", "unpatched"),
            ("unpatched", "JPEG"),
            ("patched", "JPEG"),
            ("unpatched", "WebP"),
            ("patched", "WebP"),
        )
    }
    models = trained["models"]
    seconds = {
        v: [m["seconds_per_step"] for m in models.values() if m["variant"] == v] for v in VARIANTS
    }
    params = {v: next(m["params"] for m in models.values() if m["variant"] == v) for v in VARIANTS}
    result = {
        "config": trained["config"],
        "steps": steps,
        "finished_schedule": trained["finished"],
        "eval_images": list(images),
        "bd_rate_percent": bd,
        "train": {
            name: {k: m[k] for k in ("lmbda", "variant", "steps", "train_seconds", "seconds_per_step")}
            for name, m in models.items()
        },
        "cost": {
            "params": params,
            "params_added_percent": round(100 * (params["patched"] / params["unpatched"] - 1), 1),
            "seconds_per_step_mean": {v: round(float(np.mean(s)), 4) for v, s in seconds.items()},
            "step_time_ratio": round(float(np.mean(seconds["patched"]) / np.mean(seconds["unpatched"])), 2),
        },
        "decode_equals_forward": all(r["decode_equals_forward"] for name, rows in per_image.items() for r in rows.values() if "lmbda" in name),
        "points": points,
        "per_image": per_image,
        "machine": machine(),
        "evaluate_command": " ".join(["python -m examples.ablation", *sys.argv[1:]]),
    }  # fmt: skip
    summary_path.write_text(json.dumps(result, indent=2) + "\n")
    title = (
        f"{arch}, {steps} steps, λ={list(config.lmbdas)}; held-out: {', '.join(images)}\n"
        f"BD-rate patched vs unpatched (PSNR): {_fmt(bd['patched vs unpatched']['psnr'])}"
    )
    plot_rd(curves, run_dir / "rd.png", title)
    log(
        f"BD-rate patched vs unpatched: PSNR {_fmt(bd['patched vs unpatched']['psnr'])}, MS-SSIM {_fmt(bd['patched vs unpatched']['ms-ssim'])}"
    )
    log(f"wrote {summary_path}, {run_dir / 'rd.png'}")
    return result


def _fmt(value: float | None) -> str:
    return "n/a (curves do not overlap)" if value is None else f"{value:+.1f}%"
