# SPDX-License-Identifier: Apache-2.0
"""Evaluates STF / WACNN checkpoints on a folder of images with real entropy coding.

Every image goes through `compress()` and `decompress()`; the rate is counted from the bytes
of the strings (as CompressAI's `eval_model` does: the bitstream header of `codec.py` is not
included). One checkpoint is one rate point::

    python examples/stf/eval.py /data/kodak --checkpoint runs/stf_q*/checkpoint_best.pth.tar \\
        -o stf_kodak.json --plot kodak_rd.png --compare compressai_mbt2018.json

Official checkpoints load as they are (the model is recognised from the parameter names;
`--model` makes it explicit). The JSON has CompressAI's
`eval_model` layout (`name`, `description`, `results` with one list entry per checkpoint) plus
`per_image` details; `--compare` accepts such files and flat `{"bpp": [...], "psnr": [...]}`
ones. Plotting alone: `python examples/stf/eval.py --compare a.json b.json --plot rd.png`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import it as part of its package (PEP 366)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    __package__ = "examples.stf"

import torch  # noqa: E402
from torch import nn  # noqa: E402

from . import zoo  # noqa: E402
from .atomic import atomic_write, atomic_write_bytes  # noqa: E402
from .cli import HelpFormatter, refuse_existing  # noqa: E402
from .data import (  # noqa: E402
    MIN_MS_SSIM_SIDE,
    find_images,
    read_image,
    to_uint8,
)

METRIC_KEYS = ("psnr-rgb", "ms-ssim-rgb", "bpp", "encoding_time", "decoding_time")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def psnr(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """PSNR in dB of 8-bit images `x, x_hat: (B, 3, H, W)` in [0, 1] (both rounded first)."""
    a, b = to_uint8(x).double(), to_uint8(x_hat).double()
    mse = float((a - b).pow(2).mean())
    return math.inf if mse == 0 else 20 * math.log10(255.0) - 10 * math.log10(mse)


def ms_ssim(x: torch.Tensor, x_hat: torch.Tensor) -> float | None:
    """MS-SSIM of 8-bit images `(B, 3, H, W)` (rounded first); None below 161 pixels a side."""
    if min(x.shape[-2:]) < MIN_MS_SSIM_SIDE:
        return None
    from pytorch_msssim import ms_ssim as _ms_ssim

    a, b = to_uint8(x).float(), to_uint8(x_hat).float()
    return float(_ms_ssim(a, b, data_range=255.0))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate_image(model: nn.Module, x: torch.Tensor) -> dict[str, float | int | None]:
    """Compresses and decompresses `x: (3, H, W)`; returns its metrics and timings.

    Raises:
        RuntimeError: if the decoded image does not have the size of `x`.
    """
    param = next(model.parameters())
    batch = x[None].to(param.device, param.dtype)  # (1, 3, H, W)
    _sync(param.device)
    start = time.perf_counter()
    out = model.compress(batch)
    _sync(param.device)
    encoding_time = time.perf_counter() - start
    start = time.perf_counter()
    x_hat = model.decompress(out["strings"], out["shape"])["x_hat"]  # (1, 3, H, W)
    _sync(param.device)
    decoding_time = time.perf_counter() - start
    if x_hat.shape != batch.shape:
        raise RuntimeError(f"decoded shape {tuple(x_hat.shape)} != input {tuple(batch.shape)}.")
    num_bytes = sum(len(group[0]) for group in out["strings"])
    reference = x[None].to(param.device)  # (1, 3, H, W)
    return {
        "psnr-rgb": psnr(reference, x_hat),
        "ms-ssim-rgb": ms_ssim(reference, x_hat),
        "bpp": 8.0 * num_bytes / (x.shape[1] * x.shape[2]),
        "bytes": num_bytes,
        "encoding_time": encoding_time,
        "decoding_time": decoding_time,
    }


def mean(values: list[float | None]) -> float | None:
    """Mean of the values that are not None (None if there are none)."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def evaluate_checkpoint(model: nn.Module, images: list[Path], root: Path, warmup: int = 1,
                        progress=None):
    """Per-image metrics of `model` on `images` and their means (keys of `METRIC_KEYS`).

    `progress` (a tqdm bar, optional) advances by one per image.
    """
    if warmup and images:
        for _ in range(warmup):  # first calls pay one-off costs (allocations, kernels)
            evaluate_image(model, read_image(images[0]))
    per_image = []
    for path in images:
        metrics = evaluate_image(model, read_image(path))
        per_image.append({"source": str(path.relative_to(root)), **metrics})
        if progress is not None:
            progress.set_postfix(bpp=f"{metrics['bpp']:.3f}", psnr=f"{metrics['psnr-rgb']:.2f}")
            progress.update(1)
    means = {key: mean([m[key] for m in per_image]) for key in METRIC_KEYS}
    return means, per_image


def load_curve(path: str | Path) -> dict:
    """Reads an RD JSON file: CompressAI's `eval_model` layout or a flat dict of lists.

    Returns:
        `{"name", "bpp", "psnr", "ms-ssim"}`; metrics the file lacks are None.

    Raises:
        ValueError: if the file is not JSON or has no `bpp` list.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"--compare file {str(path)!r} is not JSON: {err}") from err
    results = data.get("results", data) if isinstance(data, dict) else None
    if not isinstance(results, dict) or not isinstance(results.get("bpp"), list):
        raise ValueError(f"--compare file {str(path)!r} has no 'bpp' list (in 'results' or at "
                         "the top level).")

    def pick(*keys: str):
        return next((results[k] for k in keys if isinstance(results.get(k), list)), None)

    return {
        "name": data.get("name") or path.stem,
        "bpp": results["bpp"],
        "psnr": pick("psnr-rgb", "psnr"),
        "ms-ssim": pick("ms-ssim-rgb", "ms-ssim"),
    }


def plot_curves(curves: list[dict], path: str | Path, overwrite: bool = True) -> None:
    """Plots PSNR (and MS-SSIM in dB, where known) against bpp, one line per curve, to PNG.

    Raises:
        FileExistsError: if `path` exists and `overwrite` is False.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("psnr", "PSNR-RGB [dB]")]
    if any(v is not None for c in curves for v in c["ms-ssim"] or []):
        panels.append(("ms-ssim", "MS-SSIM-RGB [dB]  (-10 log10(1 - MS-SSIM))"))
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        for curve in curves:
            points = sorted(
                (b, _to_db(v) if key == "ms-ssim" else v)
                for b, v in zip(curve["bpp"], curve[key] or [])
                if b is not None and v is not None
            )
            if points:
                ax.plot(*zip(*points), marker="o", linewidth=1, label=curve["name"])
        ax.set_xlabel("bit rate [bpp]")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.4)
        ax.legend(loc="lower right")
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=150),
                     overwrite=overwrite)
    finally:
        plt.close(fig)


def _to_db(ms_ssim_value: float) -> float:
    return -10 * math.log10(max(1 - ms_ssim_value, 1e-12))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("images", nargs="?", type=Path, help="folder of images (recursive)")
    parser.add_argument("-c", "--checkpoint", nargs="+", type=Path, default=[],
                        help="one checkpoint per rate point")
    parser.add_argument("-m", "--model", choices=sorted(zoo.MODEL_CLASSES),
                        help="expected model (default: the checkpoint's)")
    parser.add_argument("--name", help="curve name (default: MODEL-METRIC, e.g. stf-mse)")
    parser.add_argument("-o", "--output", type=Path,
                        help="write the JSON here (default: standard output)")
    parser.add_argument("--plot", type=Path, help="write the RD plot (PNG) here")
    parser.add_argument("--compare", nargs="+", type=Path, default=[],
                        help="other RD JSON files to plot alongside")
    parser.add_argument("--device", default="cpu", help="where the models run")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="the models' dtype (cast after update())")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    parser.add_argument("-f", "--force", action="store_true",
                        help="overwrite existing -o and --plot files")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    args = parser.parse_args(argv)
    if args.checkpoint and args.images is None:
        parser.error("give the folder of images to evaluate the checkpoints on.")
    if not args.checkpoint and not (args.compare and args.plot):
        parser.error("give --checkpoint (with an image folder), or --compare and --plot.")
    return args


def evaluate(args: argparse.Namespace) -> dict:
    """Runs every checkpoint; returns the JSON document (rate points sorted by bpp)."""
    from tqdm import tqdm

    images = find_images(args.images)
    points = []
    name = args.name
    progress = tqdm(total=len(images) * len(args.checkpoint), unit="image", dynamic_ncols=True,
                    disable=args.no_progress)
    for checkpoint in args.checkpoint:
        progress.set_description(checkpoint.name)
        model, info = zoo.load_model(checkpoint, args.model, map_location=args.device)
        model = model.to(DTYPES[args.dtype])
        means, per_image = evaluate_checkpoint(model, images, args.images, args.warmup, progress)
        name = name or "-".join(filter(None, (info.name, info.metric)))
        points.append((means, {"checkpoint": str(checkpoint), "quality": info.quality,
                               "lmbda": info.lmbda, "images": per_image}))
        progress.write(f"{checkpoint}: " + ", ".join(f"{k}={_fmt(means[k])}" for k in METRIC_KEYS),
                       file=sys.stderr)
    progress.close()
    points.sort(key=lambda point: point[0]["bpp"])
    return {
        "name": name,
        "description": f"Inference (ans, {args.dtype}, {args.device})",
        "results": {key: [means[key] for means, _ in points] for key in METRIC_KEYS},
        "per_image": [details for _, details in points],
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        refuse_existing([args.output, args.plot], args.force,  # before a long run, not after
                        inputs=[*args.checkpoint, *args.compare])
        curves = [load_curve(path) for path in args.compare]
        if args.checkpoint:
            document = evaluate(args)
            text = json.dumps(document, indent=2)
            if args.output is not None:
                atomic_write_bytes(args.output, text.encode(), overwrite=args.force)
            else:
                print(text)
            results = document["results"]
            curves.insert(0, {"name": document["name"], "bpp": results["bpp"],
                              "psnr": results["psnr-rgb"], "ms-ssim": results["ms-ssim-rgb"]})
        if args.plot is not None:
            plot_curves(curves, args.plot, overwrite=args.force)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
