# SPDX-License-Identifier: Apache-2.0
"""The `winattn` command (also `python -m winattn`).

Subcommands:

* `winattn info`: versions, and which backends can run here, with the reasons for those
  that cannot;
* `winattn bench`: the attention benchmark (`benchmarks/attention.py`) at its default codec
  shapes; `winattn bench --help` lists its options. When a CUDA GPU is present, it then runs
  the GPU benchmark of the repository checkout (`benchmarks/attention_gpu.py`) too, unless
  `--no-gpu`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _probe_reasons(device: str) -> dict[str, list[str]]:
    """Why each backend cannot run, or is not picked automatically for, a small shifted
    float32 call on `device` (empty list: it runs and auto may pick it)."""
    import torch

    from winattn.backends import _REGISTRY, AttentionCall, _reasons

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
    out = {}
    for name, backend in _REGISTRY.items():
        reasons = _reasons(backend, probe)
        unverified = [f"not picked by auto: {r}" for r in backend.unverified_reasons(probe)]
        out[name] = reasons or unverified
    return out


def info() -> str:
    """The text `winattn info` prints."""
    import platform

    import torch

    import winattn
    from winattn._bench import machine_info, package_versions
    from winattn.backends import AUTO_ORDER, BackendUnavailableError, backend_reasons, get_backend

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
    software = backend_reasons()
    lines.append("backends installed:")
    for name, reasons in software.items():
        lines.append(f"  {name}: " + ("yes" if not reasons else "no: " + "; ".join(reasons)))
    for device in devices:
        order = AUTO_ORDER.get(device, ())
        lines.append(f"backends on {device} (auto tries {', '.join(order)}):")
        try:
            reasons = _probe_reasons(device)
        except (BackendUnavailableError, RuntimeError) as err:
            lines.append(f"  cannot probe {device}: {err}")
            continue
        for name, why in reasons.items():
            lines.append(f"  {name}: " + ("runs" if not why else "; ".join(why)))
    from winattn.backends.triton import verification

    lines += ["", "triton configurations verified per device class (auto picks only these):"]
    lines += [f"  {line}" for line in verification.summary()]
    return "\n".join(lines)


def run_gpu_benchmark() -> int:
    """Runs `benchmarks/attention_gpu.py` of the checkout around the working directory, in a
    subprocess (it compiles kernels and sets up its own timing). Returns its exit status."""
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
    print(f"\nGPU benchmark: {sys.executable} {script}", flush=True)
    return subprocess.call([sys.executable, str(script)], cwd=root)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `winattn` console script."""
    from winattn._bench import add_arguments, run

    parser = argparse.ArgumentParser(prog="winattn", description="winattn: window attention.")
    commands = parser.add_subparsers(dest="command", metavar="{info,bench}")
    commands.add_parser("info", help="versions and the backends available here")
    bench = commands.add_parser(
        "bench",
        help="time window attention at the codec shapes (forward, forward+backward, memory)",
        description="Times winattn's backends, timm's Swin path, torchvision's "
        "shifted_window_attention and the GEMM floor; prints a table and writes JSON.",
    )
    add_arguments(bench)
    bench.add_argument(
        "--no-gpu", action="store_true",
        help="with a CUDA GPU present, skip the GPU benchmark (benchmarks/attention_gpu.py)",
    )
    args = parser.parse_args(argv)
    if args.command == "info":
        print(info())
    elif args.command == "bench":
        run(args, list(sys.argv[2:] if argv is None else argv[1:]))
        import torch

        if torch.cuda.is_available() and not (args.no_gpu or args.quick):
            return run_gpu_benchmark()
    else:
        parser.print_help()
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
