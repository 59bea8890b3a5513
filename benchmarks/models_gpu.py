# SPDX-License-Identifier: Apache-2.0
"""Model-level GPU timing: `examples.stf`'s STF and WACNN against the official code, same run.

Both official models are built with random weights from a checkout of github.com/Googolxx/STF
(through `examples/stf/tools/compare_official.py`, which needs CompressAI 1.2.8), and the
weights are copied into ours (official state-dict layout, strict load). Then, per model and
dtype (fp32, and bf16 under autocast), interleaved and repeated (median):

* forward, compress and decompress of one random image (default 768x512), eval mode;
* one training step (forward, rate-distortion loss, backward, Adam step) on a batch of random
  crops (default 8 of 256x256).

Ours runs with winattn's automatic backend choice (`ours`) and with the triton backend forced
(`ours-triton`). Prints a table and writes JSON. Runs on the CPU too (for a dry run, with
small sizes).

    python benchmarks/models_gpu.py --official /path/to/STF --json models.json
    python benchmarks/models_gpu.py --official /path/to/STF --device cpu --size 64 64 \\
        --train-batch 1 --train-size 64 --repeat 1          # dry run
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import winattn  # noqa: E402
from examples.stf.loader import convert_official_state_dict  # noqa: E402
from examples.stf.models import WACNN, SymmetricalTransFormer  # noqa: E402
from examples.stf.tools.compare_official import import_official  # noqa: E402

DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def _log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _backend(variant: str):
    return winattn.use_backend("triton") if variant == "ours-triton" else contextlib.nullcontext()


def _rd_loss(out: dict, x: torch.Tensor, lmbda: float = 0.013) -> torch.Tensor:
    pixels = x.shape[0] * x.shape[2] * x.shape[3]
    bpp = sum(-torch.log2(v.float()).sum() for v in out["likelihoods"].values()) / pixels
    return lmbda * 255**2 * torch.mean((out["x_hat"].float() - x) ** 2) + bpp


def _inference(model, x, device, dtype, variant) -> dict:
    def forward():
        with torch.no_grad(), _autocast(device, dtype), _backend(variant):
            model(x)

    def compress():
        with torch.no_grad(), _autocast(device, dtype), _backend(variant):
            return model.compress(x)

    enc = compress()

    def decompress():
        with torch.no_grad(), _autocast(device, dtype), _backend(variant):
            model.decompress(enc["strings"], enc["shape"])

    return {"forward": forward, "compress": compress, "decompress": decompress}


def _train_step(model, batch, device, dtype, variant):
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)

    def step():
        with _autocast(device, dtype), _backend(variant):
            loss = _rd_loss(model(batch), batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def measure(arch: str, official_cls: type, ours_cls: type, args, device: torch.device) -> list[dict]:
    """Rows of (arch, variant, dtype, task, median seconds) for one architecture."""
    torch.manual_seed(0)
    official = official_cls().to(device)
    ours = ours_cls().to(device)
    ours.load_state_dict(convert_official_state_dict(official.state_dict()), strict=True)
    models = {"official": official, "ours": ours, "ours-triton": ours}
    x = torch.rand(1, 3, *args.size, device=device)
    batch = torch.rand(args.train_batch, 3, args.train_size, args.train_size, device=device)
    rows = []
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        tasks = {}
        for variant, model in models.items():
            model.eval()
            model.update(force=True)
            try:
                _log(f"{arch} {variant} {dtype_name}: warm-up")
                tasks[variant] = _inference(model, x, device, dtype, variant)
                for fn in tasks[variant].values():  # warm-up: kernels compile, autotune
                    fn()
            except Exception as err:  # noqa: BLE001 - recorded in the results, run goes on
                rows.append(_error(arch, variant, dtype_name, "inference", err))
                tasks.pop(variant, None)
        times = {(v, t): [] for v in tasks for t in tasks[v]}
        for _ in range(args.repeat):  # interleaved: every variant sees the same conditions
            for variant, fns in tasks.items():
                for task, fn in fns.items():
                    times[variant, task].append(_seconds(fn, device))
        for variant, model in models.items():
            model.train()
            try:
                _log(f"{arch} {variant} {dtype_name}: training step")
                step = _train_step(model, batch, device, dtype, variant)
                step()
                times[variant, "train_step"] = [_seconds(step, device) for _ in range(args.repeat)]
            except Exception as err:  # noqa: BLE001 - recorded in the results, run goes on
                rows.append(_error(arch, variant, dtype_name, "train_step", err))
        for (variant, task), values in times.items():
            rows.append({
                "arch": arch, "variant": variant, "dtype": dtype_name, "task": task,
                "median_s": statistics.median(values), "min_s": min(values), "repeats": len(values),
            })
    return rows


def _error(arch: str, variant: str, dtype: str, task: str, err: Exception) -> dict:
    return {
        "arch": arch, "variant": variant, "dtype": dtype, "task": task,
        "error": f"{type(err).__name__}: {err}"[:500], "traceback": traceback.format_exc()[-2000:],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="checkout of Googolxx/STF")
    parser.add_argument("--arch", nargs="+", default=["stf", "cnn"], choices=["stf", "cnn"])
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    parser.add_argument("--size", type=int, nargs=2, default=(512, 768), metavar=("H", "W"))
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--train-size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=5, help="timed repeats (median kept)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU here; pass --device cpu (with small sizes) for a dry run")
    workdir = Path(tempfile.mkdtemp(prefix="stf_official_"))
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "size": list(args.size),
        "train": [args.train_batch, args.train_size, args.train_size],
        "rows": [],
    }
    try:
        official_stf, official_cnn = import_official(args.official, workdir)
        pairs = {"stf": (official_stf, SymmetricalTransFormer), "cnn": (official_cnn, WACNN)}
        for arch in args.arch:
            report["rows"] += measure(arch, *pairs[arch], args, device)
            if args.json:  # after each architecture: a later failure loses nothing
                args.json.write_text(json.dumps(report, indent=1) + "\n")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for r in report["rows"]:
        value = f"{r['median_s'] * 1e3:9.2f} ms" if "median_s" in r else f"ERROR {r['error'][:80]}"
        print(f"{r['arch']:4s} {r['variant']:12s} {r['dtype']:5s} {r['task']:11s} {value}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
