# SPDX-License-Identifier: Apache-2.0
"""Encodes in one process and decodes in another, and counts the files that stop decoding.

An environment is a Python interpreter (and so a PyTorch), an `ATEN_CPU_CAPABILITY`, a thread
count (`OMP_NUM_THREADS` and `torch.set_num_threads`) and a device. For every environment a
child process encodes every image with every codec and stores the strings, the quantized
latents `y_hat` it decodes itself, its 8-bit reconstruction, and the entropy parameters it
computed (the outputs of the modules that give the Gaussian conditional its scales and
means: `h_s` of a scale hyperprior, `cc_mean_transforms` and `cc_scale_transforms` of STF and
WACNN). Then, for each (encoder, decoder) pair, a child in the decoder's environment decodes
those strings and reports, per file:

- `broken`: the decoded latents differ from the encoder's (the entropy decoder lost sync);
- `params_identical`: the entropy parameters the decoder computed hash like the encoder's
  (SHA-256 of their bytes), the root cause that is measured;
- the fraction of latents and of 8-bit pixels that differ, the largest pixel difference, and
  the PSNR drop against the encoder's own reconstruction.

The pairs are every environment decoding the first environment's files and the first
environment decoding every other's (`--all-pairs`: every pair). The controlled failure,
`--perturb FRACTION:ULPS` (repeatable), runs in the first environment's decoder: a seeded
random `FRACTION` of every entropy-parameter tensor is moved `ULPS` units in the last place
toward +inf, as another platform's rounding would, and the same counts are reported.

Codecs: the shipped pretrained model at each `--qualities`, and `--checkpoint PATH` (repeatable)
for STF/WACNN checkpoints of `examples.stf` (trained or official). Run from the repository root:

    python -m examples.portable.cross_env run \\
        --python torch2.14.1=.venv/bin/python --python torch2.13.0=/path/venv/bin/python \\
        --capabilities native default --threads 1 2 4 \\
        --images astronaut coffee chelsea rocket --perturb 1.0:1 --perturb 0.01:1 \\
        --json examples/portable/results/cross_env_DATE.json
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import itertools
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if __package__ in (None, ""):  # run as a file: import it as part of its package (PEP 366)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    __package__ = "examples.portable"

from winattn import pretrained  # noqa: E402
from winattn.pretrained.images import read_source  # noqa: E402

from ..stf import zoo  # noqa: E402

PRETRAINED = "bmshj2018-hyperprior-winattn-n64"
ROOT = Path(__file__).resolve().parents[2]  # the folder that holds winattn and examples


# ---------------------------------------------------------------- what every child shares


def entropy_parameter_modules(model: nn.Module) -> list[nn.Module]:
    """The modules whose outputs the Gaussian conditional turns into scale indexes and means.

    Raises:
        ValueError: a model of neither known family.
    """
    if hasattr(model, "cc_scale_transforms"):  # STF, WACNN: per-slice means and scales
        return [*model.cc_mean_transforms, *model.cc_scale_transforms]
    if hasattr(model, "h_s") and hasattr(model, "gaussian_conditional"):  # scale hyperprior
        return [model.h_s]
    raise ValueError(f"no entropy-parameter modules known for {type(model).__name__}.")


def synthesis_input(model: nn.Module) -> nn.Module:
    """The first layer of the synthesis transform, whose input is the decoded `y_hat`.

    WACNN runs `g_s` layer by layer and STF has `syn_layers`, so the hook sits on the first.
    """
    layers = model.g_s if hasattr(model, "g_s") else model.syn_layers
    return layers[0] if isinstance(layers, (nn.Sequential, nn.ModuleList)) else layers


def step_ulps(x: Tensor, ulps: int) -> Tensor:
    """`x` moved `ulps` units in the last place toward +inf (`torch.nextafter`, `ulps` times).

    Args:
        x: float32 tensor of finite values.
        ulps: number of steps, at least 1.
    """
    if ulps == 1:
        return torch.nextafter(x, torch.full_like(x, math.inf))
    bits = x.contiguous().view(torch.int32).long()  # IEEE-754 bits; sign in bit 31
    magnitude = bits & 0x7FFFFFFF
    negative = bits < 0
    crosses_zero = negative & (magnitude < ulps)  # a negative value moves up past zero
    new_magnitude = torch.where(
        negative, torch.where(crosses_zero, ulps - magnitude, magnitude - ulps),
        (magnitude + ulps).clamp(max=0x7F800000),  # past the largest float: +inf, as nextafter
    )
    stays_negative = negative & ~crosses_zero
    signed = torch.where(stays_negative, new_magnitude - (1 << 32) + (1 << 31), new_magnitude)
    return signed.to(torch.int32).view(torch.float32)  # (same shape as x)


def perturb(x: Tensor, fraction: float, ulps: int, generator: torch.Generator) -> Tensor:
    """`x` with a random `fraction` of its elements moved `ulps` ulps toward +inf."""
    chosen = torch.rand(x.shape, generator=generator) < fraction  # (same shape as x)
    return torch.where(chosen.to(x.device), step_ulps(x, ulps), x)


class Recorder:
    """Forward hooks that record (and optionally perturb) the entropy parameters and `y_hat`."""

    def __init__(self, model: nn.Module, fraction: float = 0.0, ulps: int = 1, seed: int = 0):
        self.params: list[Tensor] = []
        self.y_hat: Tensor | None = None
        self.generator = torch.Generator().manual_seed(seed)
        self.fraction, self.ulps = fraction, ulps
        self.handles = [m.register_forward_hook(self._on_params) for m in entropy_parameter_modules(model)]
        self.handles.append(synthesis_input(model).register_forward_pre_hook(self._on_synthesis))

    def _on_params(self, module, args, out: Tensor) -> Tensor:
        if self.fraction > 0:
            out = perturb(out, self.fraction, self.ulps, self.generator)
        self.params.append(out.detach().cpu().clone())
        return out

    def _on_synthesis(self, module, args) -> None:
        self.y_hat = args[0].detach().cpu().clone()  # y_hat: (1, M, h, w), STF (1, h, w, M)

    def reset(self) -> None:
        self.params, self.y_hat = [], None

    def params_sha256(self) -> str:
        digest = hashlib.sha256()
        for p in self.params:
            digest.update(p.float().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


@dataclass(frozen=True)
class Codec:
    """A codec to test: the pretrained model at a quality, or an `examples.stf` checkpoint."""

    label: str
    multiple: int  # padding multiple of its analysis transform

    def load(self, device: str) -> nn.Module:
        if self.label.startswith("pretrained:"):
            name, quality = self.label.split(":", 1)[1].rsplit("@q", 1)
            return pretrained.load(name, int(quality), device=device)
        model, _ = zoo.load_model(self.label.split(":", 1)[1], map_location=device)
        return model.to(device).eval()


def codecs_for(qualities: list[int], checkpoints: list[str]) -> list[Codec]:
    return [Codec(f"pretrained:{PRETRAINED}@q{q}", 64) for q in qualities] + [
        Codec(f"checkpoint:{os.path.abspath(p)}", 256) for p in checkpoints
    ]


def pad(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int, int, int]]:
    """x: (1, 3, H, W) zero-padded, centred, to a multiple; and (left, right, top, bottom)."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    amounts = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    return F.pad(x, amounts), amounts


def to_8bit(x_hat: Tensor, amounts: tuple[int, int, int, int], h: int, w: int) -> Tensor:
    left, _, top, _ = amounts
    crop = x_hat[..., top : top + h, left : left + w]  # (1, 3, H, W)
    return (crop.clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def load_image(name: str, size: int) -> Tensor:
    """A scikit-image photograph, (1, 3, H, W); centre crop to at most size x size (0: whole)."""
    x = read_source(f"skimage:{name}")[None]  # (1, 3, H, W)
    if size:
        h, w = x.shape[-2:]
        top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
        x = x[..., top : top + size, left : left + size]
    return x.contiguous()


def environment_info(threads: int) -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY"),
        "threads": torch.get_num_threads(),
        "threads_asked": threads,
        "python": platform.python_version(),
    }


def psnr_8bit(x: Tensor, x_hat_8bit: Tensor) -> float:
    return pretrained.psnr(x, x_hat_8bit.float() / 255)


# ---------------------------------------------------------------- child: encode


@torch.inference_mode()
def encode_all(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    records = []
    for codec in codecs_for(args.qualities, args.checkpoint):
        model = codec.load(args.device)
        recorder = Recorder(model)
        for name in args.images:
            x = load_image(name, args.size)
            padded, amounts = pad(x, codec.multiple)
            recorder.reset()
            out = model.compress(padded.to(args.device))
            encoder_params = list(recorder.params)
            params_sha = recorder.params_sha256()
            recorder.reset()
            x_hat = model.decompress(out["strings"], out["shape"])["x_hat"]
            x_8bit = to_8bit(x_hat, amounts, *x.shape[-2:])
            strings_sha = hashlib.sha256(b"".join(s for group in out["strings"] for s in group))
            records.append({
                "codec": codec.label, "multiple": codec.multiple, "image": name,
                "size": list(x.shape[-2:]), "amounts": amounts,
                "strings": out["strings"], "shape": list(out["shape"]),
                "num_bytes": sum(len(s) for group in out["strings"] for s in group),
                "strings_sha256": strings_sha.hexdigest(),
                "params": encoder_params, "params_sha256": params_sha,
                "y_hat": recorder.y_hat, "x_hat": x_8bit,
                "psnr": psnr_8bit(x, x_8bit),
            })
        recorder.close()
    payload = {"environment": environment_info(args.threads), "records": records}
    torch.save(payload, Path(args.folder) / "encoded.pt")


# ---------------------------------------------------------------- child: decode


def compare(encoded: dict, decoded_y: Tensor, decoded_8bit: Tensor, x: Tensor) -> dict[str, Any]:
    """What a decode lost against the encoder's own decode of the same strings."""
    y_differs = decoded_y.ne(encoded["y_hat"])
    pixel_diff = (decoded_8bit.int() - encoded["x_hat"].int()).abs()  # (1, 3, H, W)
    quality = psnr_8bit(x, decoded_8bit)
    return {
        "broken": bool(y_differs.any()),
        "latents_differing": y_differs.float().mean().item(),
        "pixels_differing": pixel_diff.amax(dim=1).ne(0).float().mean().item(),
        "max_pixel_diff": int(pixel_diff.max()),
        "psnr": quality,
        "psnr_drop": encoded["psnr"] - quality,
    }


@torch.inference_mode()
def decode_files(folder: str, fraction: float, ulps: int, size: int, device: str,
                 models: dict[str, nn.Module]) -> list[dict[str, Any]]:
    """Decodes an encoder's `encoded.pt`, perturbing the entropy parameters if `fraction` > 0."""
    payload = torch.load(Path(folder) / "encoded.pt", weights_only=False)  # our own file
    results = []
    for index, enc in enumerate(payload["records"]):
        codec = Codec(enc["codec"], enc["multiple"])
        if codec.label not in models:
            models[codec.label] = codec.load(device)
        model = models[codec.label]
        recorder = Recorder(model, fraction, ulps, seed=index)
        start = time.perf_counter()
        x_hat = model.decompress(enc["strings"], enc["shape"])["x_hat"]
        seconds = time.perf_counter() - start
        x = load_image(enc["image"], size)
        row = compare(enc, recorder.y_hat, to_8bit(x_hat, enc["amounts"], *enc["size"]), x)
        row.update(
            codec=enc["codec"], image=enc["image"], seconds=seconds,
            params_sha256=recorder.params_sha256(),
            params_identical=recorder.params_sha256() == enc["params_sha256"],
        )
        recorder.close()
        results.append(row)
    return results


def decode_all(args: argparse.Namespace) -> None:
    """Every `--job FOLDER:FRACTION:ULPS` in one process (the models load once)."""
    torch.set_num_threads(args.threads)
    models: dict[str, nn.Module] = {}
    jobs = []
    for job in args.job:
        folder, fraction, ulps = job.rsplit(":", 2)
        jobs.append(decode_files(folder, float(fraction), int(ulps), args.size, args.device, models))
    out = {"environment": environment_info(args.threads), "jobs": jobs}
    Path(args.result).write_text(json.dumps(out, indent=1))


# ---------------------------------------------------------------- parent


@dataclass(frozen=True)
class Environment:
    python_label: str
    python: str
    capability: str  # "native": ATEN_CPU_CAPABILITY unset
    threads: int
    device: str = "cpu"

    @property
    def label(self) -> str:
        return f"{self.python_label}/{self.capability}/t{self.threads}/{self.device}"

    def variables(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "PYTHONPATH")}
        env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(self.threads))
        if self.capability != "native":
            env["ATEN_CPU_CAPABILITY"] = self.capability
        return env


def run_child(env: Environment, mode: str, common: list[str], extra: list[str]) -> None:
    command = [env.python, "-W", "ignore", "-m", __spec__.name, mode, *common, *extra,
               "--threads", str(env.threads), "--device", env.device]
    done = subprocess.run(command, env=env.variables(), cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} in {env.label} failed:\n{done.stderr[-3000:]}")


def summarize(rows: list[dict]) -> dict[str, Any]:
    broken = [r for r in rows if r["broken"]]
    return {
        "decodes": len(rows),
        "broken": len(broken),
        "params_identical": sum(r["params_identical"] for r in rows),
        "max_pixel_diff": max(r["max_pixel_diff"] for r in rows),
        "worst_psnr_drop": max(r["psnr_drop"] for r in rows),
        "mean_pixels_differing": sum(r["pixels_differing"] for r in rows) / len(rows),
    }


def markdown_table(pairs: list[dict]) -> str:
    lines = [
        "| encoder | decoder | perturbation | codec | decodes | broken | entropy params identical "
        "| max pixel diff | worst PSNR drop (dB) | pixels differing (mean) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for pair in pairs:
        for codec, s in pair["by_codec"].items():
            lines.append(
                f"| {pair['encoder']} | {pair['decoder']} | {pair['perturbation'] or 'none'} "
                f"| {codec.split(':', 1)[1].split('/')[-1]} | {s['decodes']} | **{s['broken']}** "
                f"| {s['params_identical']}/{s['decodes']} | {s['max_pixel_diff']} "
                f"| {s['worst_psnr_drop']:.2f} | {100 * s['mean_pixels_differing']:.1f}% |"
            )
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    ) if Path("/proc/cpuinfo").exists() else platform.processor()
    return {"cpu": model, "cores": os.cpu_count(), "platform": platform.platform()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    pythons = [p.split("=", 1) if "=" in p else (f"torch{torch.__version__}", p) for p in args.python]
    envs = [
        Environment(label, path, cap, t, args.device)
        for (label, path), cap, t in itertools.product(pythons or [("this", sys.executable)],
                                                        args.capabilities, args.threads)
    ]
    common = ["--images", *args.images, "--size", str(args.size),
              "--qualities", *map(str, args.qualities)]
    for path in args.checkpoint:
        common += ["--checkpoint", os.path.abspath(path)]
    reference = envs[0]
    with tempfile.TemporaryDirectory(prefix="cross_env_") as tmp:
        folders = {}
        for i, env in enumerate(envs):
            folders[env] = Path(tmp) / f"enc{i}"
            folders[env].mkdir()
            run_child(env, "encode", common, ["--folder", str(folders[env])])
            print(f"encoded in {env.label}", file=sys.stderr)
        encoders = {
            env.label: torch.load(folders[env] / "encoded.pt", weights_only=False)
            for env in envs
        }
        jobs = [(e, d, None) for e, d in itertools.product(envs, envs)] if args.all_pairs else (
            [(reference, d, None) for d in envs] + [(e, reference, None) for e in envs[1:]]
        )
        jobs += [(reference, reference, p) for p in args.perturb]
        pairs = []
        for n, dec in enumerate(envs):
            mine = [(e, p) for e, d, p in jobs if d == dec]
            if not mine:
                continue
            result = Path(tmp) / f"dec{n}.json"
            extra = ["--result", str(result)]
            for enc, perturbation in mine:
                extra += ["--job", f"{folders[enc]}:{perturbation or '0:1'}"]
            run_child(dec, "decode", common, extra)
            decoded = json.loads(result.read_text())
            for (enc, perturbation), rows in zip(mine, decoded["jobs"]):
                by_codec: dict[str, list[dict]] = {}
                for row in rows:
                    by_codec.setdefault(row["codec"], []).append(row)
                fraction, ulps = (perturbation or "0:1").split(":")
                pairs.append({
                    "encoder": enc.label, "decoder": dec.label,
                    "decoder_environment": decoded["environment"],
                    "perturbation": None if not perturbation else
                    f"{100 * float(fraction):g}% of elements +{int(ulps)} ulp",
                    "by_codec": {c: summarize(r) for c, r in by_codec.items()},
                    "rows": rows,
                })
            print(f"decoded in {dec.label}", file=sys.stderr)
    strings_equal = {
        env.label: [
            r["strings_sha256"] == ref["strings_sha256"] and r["params_sha256"] == ref["params_sha256"]
            for r, ref in zip(encoders[env.label]["records"], encoders[reference.label]["records"])
        ]
        for env in envs
    }
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M UTC"),
        "command": shlex.join([sys.executable, "-m", __spec__.name, *args.argv]),
        "machine": machine_info(),
        "environments": {env.label: encoders[env.label]["environment"] for env in envs},
        "images": args.images, "size": args.size,
        "codecs": [c.label for c in codecs_for(args.qualities, args.checkpoint)],
        "encoder_output_identical_to_reference": {
            label: f"{sum(v)}/{len(v)}" for label, v in strings_equal.items()
        },
        "pairs": pairs,
        "table_markdown": markdown_table(pairs),
    }


def _threads(text: str) -> int:
    """argparse type: a thread count of at least 1."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"threads must be a whole number >= 1, got {text!r}; e.g. --threads 1 2 4")
    return n


def _perturbation(text: str) -> str:
    """argparse type: `FRACTION:ULPS` with 0 < FRACTION <= 1 and ULPS a whole number >= 1."""
    try:
        fraction, ulps = text.split(":")
        ok = 0.0 < float(fraction) <= 1.0 and int(ulps) >= 1
    except ValueError:
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(
            f"--perturb takes FRACTION:ULPS with 0 < FRACTION <= 1 and ULPS a whole number >= 1, "
            f"got {text!r}; e.g. --perturb 0.01:1"
        )
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    for mode in ("run", "encode", "decode"):
        q = sub.add_parser(mode)
        q.add_argument("--images", nargs="+", default=["astronaut", "coffee", "chelsea", "rocket"],
                       help="scikit-image photographs")
        q.add_argument("--size", type=int, default=256, help="centre crop side (0: whole image)")
        q.add_argument("--qualities", type=int, nargs="*", default=[1, 2, 3],
                       help="qualities of the pretrained model (none: checkpoints only)")
        q.add_argument("--checkpoint", action="append", default=[],
                       help="an examples.stf checkpoint (STF or WACNN) to test too")
        q.add_argument("--device", default="cpu")
        if mode == "run":
            q.add_argument("--python", action="append", default=[],
                           help="LABEL=PATH of a Python with torch and compressai (repeatable)")
            q.add_argument("--capabilities", nargs="+", default=["native", "default"],
                           help="ATEN_CPU_CAPABILITY values; native = unset")
            q.add_argument("--threads", type=_threads, nargs="+", default=[1, 2, 4])
            q.add_argument("--perturb", type=_perturbation, action="append", default=[],
                           help="FRACTION:ULPS of the controlled failure, e.g. 0.01:1")
            q.add_argument("--all-pairs", action="store_true")
            q.add_argument("--json", type=Path, default=None)
        else:
            q.add_argument("--threads", type=_threads, required=True)
        if mode == "encode":
            q.add_argument("--folder", required=True)
        if mode == "decode":
            q.add_argument("--job", action="append", required=True,
                           help="FOLDER:FRACTION:ULPS, an encoder's folder and the perturbation")
            q.add_argument("--result", required=True)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.mode == "encode":
        encode_all(args)
    elif args.mode == "decode":
        decode_all(args)
    else:
        report = run(args)
        print(report["table_markdown"])
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
