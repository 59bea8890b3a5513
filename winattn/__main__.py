# SPDX-License-Identifier: Apache-2.0
"""The `winattn` command (also `python -m winattn`).

Subcommands:

* `winattn info`: versions, and on each device which backends run, with the reasons for those
  that cannot;
* `winattn models`: the CompressAI architectures that `winattn.integrations.compressai`
  registers as `<arch>-winattn`, and the STF/WACNN example codecs;
* `winattn bench`: the attention benchmark (`winattn/_bench.py`), under a minute at its default
  settings, `--full` for the whole grid; `winattn bench --help` lists its options. When a CUDA
  GPU is present, it then runs the GPU benchmark of a repository checkout
  (`benchmarks/attention_gpu.py`) too, unless `--no-gpu`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _probe_reasons(device: str) -> dict[str, list[str]]:
    """Why each backend cannot run, or is not picked automatically for, a small shifted
    float32 call on `device` (empty list: it runs and auto may pick it)."""
    import torch

    from winattn.backends import AttentionCall, explain

    probe = AttentionCall.build(
        torch.zeros(1, 8, 8, 3 * 16, device=device),  # (B, H, W, 3C)
        num_heads=2,
        window_size=4,
        shift_size=2,
        bias_table=torch.zeros(49, 2, device=device),
        bias=None,
        scale=None,
        pad_qkv=None,
        dropout_p=0.0,
    )
    return explain(probe)


def info() -> str:
    """The text `winattn info` prints."""
    import platform

    import torch

    import winattn
    from winattn._bench import machine_info, package_versions
    from winattn.backends import AUTO_ORDER, BackendUnavailableError, get_backend

    lines = [f"winattn {winattn.__version__}", "", "versions:"]
    lines.append(f"  python: {platform.python_version()}")
    for name, version in package_versions().items():
        lines.append(f"  {name}: {version or 'not installed'}")
    machine = machine_info(torch.device("cpu"))
    lines += ["", "machine:", f"  cpu: {machine['cpu']} ({machine['logical_cores']} logical cores, "
              f"{machine['cpu_capability']})", f"  torch threads: {machine['torch_threads']}"]
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
        lines.append(f"  gpu: {torch.cuda.get_device_name()}")
    else:
        lines.append("  gpu: none (torch.cuda.is_available() is False)")

    lines += ["", f"default backend: {get_backend()}"]
    usable = {}
    for device in devices:
        order = AUTO_ORDER.get(device, ())
        lines.append(f"backends on {device} (auto tries {', '.join(order)}):")
        try:
            reasons = _probe_reasons(device)
        except (BackendUnavailableError, RuntimeError) as err:
            lines.append(f"  cannot probe {device}: {err}")
            continue
        for name, why in reasons.items():
            runs = not why or all(r.startswith("not picked by auto") for r in why)
            if runs:
                usable.setdefault(name, []).append(device)
            text = "; ".join(["runs", *why] if runs else why)
            lines.append(f"  {name}: " + (text if runs else f"cannot run: {text}"))
    lines.append(
        "backends that run here: "
        + ", ".join(f"{name} ({', '.join(on)})" for name, on in usable.items())
    )
    from winattn.backends.triton import verification

    lines += ["", "triton configurations verified per device class (auto picks only these):"]
    lines += [f"  {line}" for line in verification.summary()]
    return "\n".join(lines)


def models() -> str:
    """The text `winattn models` prints."""
    from importlib.util import find_spec

    lines = []
    if find_spec("compressai") is None:
        lines.append("CompressAI architectures: compressai is not installed; "
                     'pip install ".[compressai]" to patch and register its models.')
    else:
        from winattn.integrations.compressai import import_compressai, register

        names = register()
        zoo_names = import_compressai().zoo.image_models
        lines.append(
            f"CompressAI architectures registered as <arch>-winattn ({len(names)}; "
            "python -m winattn.integrations.compressai TOOL -a NAME runs CompressAI's tools "
            "with them):"
        )
        for name in names:
            zoo = "  (in the zoo: pretrained=True patches CompressAI's weights)"
            lines.append(f"  {name}{zoo if name in zoo_names else ''}")
    lines += ["", "example codecs (examples/stf; python -m winattn_examples.stf.train -m NAME):"]
    lines.append("  stf: SymmetricalTransFormer, the paper's transformer codec")
    lines.append("  cnn: WACNN, the paper's CNN codec with window attention")
    return "\n".join(lines)


def run_gpu_benchmark(out_dir: Path) -> int:
    """Runs `benchmarks/attention_gpu.py` of the checkout around the working directory, in a
    subprocess (it compiles kernels and sets up its own timing), with its JSON in `out_dir`.
    Returns its exit status."""
    import datetime as dt

    from winattn._bench import find_repo_root

    root = find_repo_root(Path.cwd())
    script = None if root is None else root / "benchmarks" / "attention_gpu.py"
    if script is None or not script.is_file():
        print(
            "winattn bench: a CUDA GPU is present, but benchmarks/attention_gpu.py was not found "
            "(it ships with the repository, not the wheel); run it from a checkout.",
            file=sys.stderr,
        )
        return 0
    out = out_dir / f"attention_gpu_{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    print(f"\nGPU benchmark: {sys.executable} {script} --out {out}", flush=True)
    return subprocess.call([sys.executable, str(script), "--out", str(out)])


def build_parser() -> argparse.ArgumentParser:
    """The parser of the `winattn` command."""
    from winattn._bench import add_arguments

    parser = argparse.ArgumentParser(prog="winattn", description="winattn: window attention.")
    commands = parser.add_subparsers(dest="command", metavar="{info,models,bench}")
    commands.add_parser("info", help="versions, and the backends that run here (with reasons)")
    commands.add_parser("models", help="the architectures winattn registers with CompressAI")
    bench = commands.add_parser(
        "bench",
        help="time window attention at the codec shapes (forward, forward+backward, memory)",
        description="Times winattn's backends, timm's Swin path, torchvision's "
        "shifted_window_attention and the GEMM floor; prints a table with the median and "
        "spread of each time, and writes JSON to the working directory (or --out).",
    )
    add_arguments(bench)
    bench.add_argument(
        "--no-gpu", action="store_true",
        help="with a CUDA GPU present, skip the GPU benchmark (benchmarks/attention_gpu.py)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `winattn` console script."""
    from winattn._bench import run

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("info", "models"):
        text = info() if args.command == "info" else models()
        try:
            print(text, flush=True)
        except BrokenPipeError:  # e.g. `winattn models | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    elif args.command == "bench":
        document = run(args, list(sys.argv[2:] if argv is None else argv[1:]))
        import torch

        if torch.cuda.is_available() and not (args.no_gpu or args.quick):
            return run_gpu_benchmark(Path(document["path"]).parent if document.get("path") else Path.cwd())
    else:
        parser.print_help()
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
