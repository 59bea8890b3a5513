# SPDX-License-Identifier: Apache-2.0
"""Which triton configurations were checked against the reference, per device class.

Automatic backend selection picks triton only for a call whose *configuration class* is in
the verification record (`verified.json`, shipped with the package) for the call's *device
class*. The GPU test run (`tests/test_triton.py` on CUDA with `WINATTN_TRITON_RECORD_OUT=path`)
writes that record; `benchmarks/gpu_session.sh` runs it. Explicit `backend="triton"` runs
whatever the kernels support, verified or not.

* Device class: `"sm<major><minor>"` of the CUDA device (`"sm90"` for H100 and H200).
* Configuration class (`ConfigClass`): dtype; head-dim block (the head dim padded to the
  next power of two, at least 16, as the kernels pad it: 16, 32, 64 or 128); window
  `(Wh, Ww)`; bias mode (`"table"`, `"dense"` or `"none"`); shifted or not; padding
  (`"none"` when the map is a multiple of the window, else `"pad_qkv"` or `"zeros"`).

This module imports neither Triton nor the kernels.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from winattn.backends import AttentionCall

#: The committed record. `WINATTN_TRITON_VERIFIED` (a path) replaces it, for tests and for a
#: record of one's own.
RECORD_PATH = Path(__file__).with_name("verified.json")
ENV_VAR = "WINATTN_TRITON_VERIFIED"
FORMAT = 1

_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


@dataclass(frozen=True, order=True)
class ConfigClass:
    """The kernel paths a call takes, as far as correctness can differ between them."""

    dtype: str
    head_dim_block: int
    window: tuple[int, int]
    bias: str
    shifted: bool
    padding: str

    def __str__(self) -> str:
        wh, ww = self.window
        return (
            f"{self.dtype} head_dim<={self.head_dim_block} window {wh}x{ww} bias={self.bias} "
            f"{'shifted' if self.shifted else 'unshifted'} padding={self.padding}"
        )

    @classmethod
    def from_json(cls, entry: dict) -> ConfigClass:
        return cls(
            dtype=entry["dtype"],
            head_dim_block=int(entry["head_dim_block"]),
            window=tuple(entry["window"]),
            bias=entry["bias"],
            shifted=bool(entry["shifted"]),
            padding=entry["padding"],
        )

    def to_json(self) -> dict:
        return {**asdict(self), "window": list(self.window)}


def head_dim_block(head_dim: int) -> int:
    """The kernels' padded head dim: the next power of two, at least 16."""
    return max(16, 1 << (head_dim - 1).bit_length())


def config_class(
    dtype: torch.dtype,
    head_dim: int,
    window: tuple[int, int],
    bias: str,
    shift: tuple[int, int],
    size: tuple[int, int],
    pad_qkv: bool,
) -> ConfigClass:
    """The configuration class of a call described by its parts (`size` is `(H, W)`)."""
    padded = size[0] % window[0] != 0 or size[1] % window[1] != 0
    return ConfigClass(
        dtype=_DTYPES.get(dtype, str(dtype).removeprefix("torch.")),
        head_dim_block=head_dim_block(head_dim),
        window=(int(window[0]), int(window[1])),
        bias=bias,
        shifted=any(shift),
        padding=("pad_qkv" if pad_qkv else "zeros") if padded else "none",
    )


def call_class(call: AttentionCall) -> ConfigClass:
    """The configuration class of `call`."""
    return config_class(*_call_parts(call))


def _call_parts(call: AttentionCall) -> tuple:
    bias = "table" if call.bias_table is not None else "dense" if call.bias is not None else "none"
    return (
        call.qkv.dtype, call.head_dim, call.window_size, bias, call.shift_size, call.size,
        call.pad_qkv is not None,
    )


@functools.lru_cache(maxsize=16)
def device_class(device: torch.device) -> str | None:
    """`"sm<major><minor>"` of a CUDA device; None for other devices."""
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm{major}{minor}"


def record_path() -> Path:
    """Where the record is read from: `WINATTN_TRITON_VERIFIED`, else the shipped file."""
    return Path(os.environ.get(ENV_VAR) or RECORD_PATH)



@functools.lru_cache(maxsize=8)
def _load(path: Path) -> dict[str, frozenset[ConfigClass]]:
    # Read once per path (automatic selection asks on every call).
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise ValueError(
            f"{path} has format={data.get('format')!r}, expected {FORMAT}; rewrite it with the "
            "GPU test run (benchmarks/gpu_session.sh) or delete it."
        )
    return {
        dev: frozenset(ConfigClass.from_json(e) for e in entry.get("classes", []))
        for dev, entry in data.get("devices", {}).items()
    }


def verified_classes() -> dict[str, frozenset[ConfigClass]]:
    """Device class -> the configuration classes verified on it. Empty if there is no record.
    A record is read once per process and path."""
    return _load(record_path())


def unverified_reasons(call: AttentionCall) -> list[str]:
    """Why automatic selection should not pick triton for `call`; empty if its class is in
    the record for its device class."""
    dev = device_class(call.qkv.device)
    if dev is None:
        return ["automatic selection uses triton on CUDA only (the CPU path is the interpreter)"]
    return list(_class_reasons(os.environ.get(ENV_VAR), dev, *_call_parts(call)))


@functools.lru_cache(maxsize=1024)
def _class_reasons(env: str | None, dev: str, *parts) -> tuple[str, ...]:
    # Cached by the record's environment variable and the call's geometry: automatic
    # selection asks on every call.
    path = Path(env or RECORD_PATH)
    cls = config_class(*parts)
    if cls in _load(path).get(dev, frozenset()):
        return ()
    return (
        f"{cls} is not in the verification record for {dev} ({path.name}); "
        "pass backend='triton' to run it anyway, or verify it with benchmarks/gpu_session.sh",
    )


def summary() -> list[str]:
    """Lines for `winattn info`: the verified classes per device class, one line per dtype,
    head-dim block and window, listing its bias/shift paths with their padding modes."""
    record = verified_classes()
    if not record:
        return [f"no triton verification record ({record_path()}): auto never picks triton"]
    lines = []
    for dev, classes in sorted(record.items()):
        lines.append(f"{dev}: {len(classes)} configuration classes verified "
                     "(bias/shift (padding modes) per dtype, head dim and window)")
        groups: dict[tuple, dict[tuple[str, str], list[str]]] = {}
        for c in sorted(classes):
            paths = groups.setdefault((c.dtype, c.head_dim_block, c.window), {})
            paths.setdefault((c.bias, "shifted" if c.shifted else "unshifted"), []).append(c.padding)
        for (dtype, block, (wh, ww)), paths in groups.items():
            text = ", ".join(f"{b}/{s} ({', '.join(p)})" for (b, s), p in paths.items())
            lines.append(f"  {dtype} head_dim<={block} window {wh}x{ww}: {text}")
    return lines


def update_record(
    path: Path,
    device: str,
    passed: Iterable[ConfigClass],
    failed: Iterable[ConfigClass],
    run: dict,
) -> dict:
    """Merges one GPU test run into the record at `path` (created if missing) and writes it.

    A class stays or becomes verified for `device` when it passed in this run or an earlier
    one, and no case of it failed in this run. Other device classes are left as they were.
    Returns the written record.
    """
    data = json.loads(path.read_text()) if path.exists() else {"format": FORMAT, "devices": {}}
    entry = data["devices"].setdefault(device, {"runs": [], "classes": []})
    failed = set(failed)
    classes = {ConfigClass.from_json(e) for e in entry["classes"]} | set(passed)
    entry["classes"] = [c.to_json() for c in sorted(classes - failed)]
    entry["runs"].append(
        {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **run,
            "failed": [str(c) for c in sorted(failed)],
        }
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)
    return data


def _part_paths(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.part-*.json"))


def write_part(
    path: Path,
    name: str,
    device: str,
    passed: Iterable[ConfigClass],
    failed: Iterable[ConfigClass],
    run: dict,
) -> Path:
    """Writes one test process's outcomes beside the record at `path`, for `merge_parts`."""
    part = path.with_name(f"{path.name}.part-{name}.json")
    part.write_text(json.dumps({
        "device": device,
        "passed": [c.to_json() for c in sorted(set(passed))],
        "failed": [c.to_json() for c in sorted(set(failed))],
        "run": run,
    }))
    return part


def merge_parts(path: Path) -> dict | None:
    """Merges every part written by `write_part` beside `path` into the record (one run per
    device class: a class failed in any part is dropped) and deletes the parts. Returns the
    record, or None when there were no parts."""
    parts = [json.loads(p.read_text()) for p in _part_paths(path)]
    data = None
    for device in sorted({p["device"] for p in parts}):
        mine = [p for p in parts if p["device"] == device]
        passed = {ConfigClass.from_json(e) for p in mine for e in p["passed"]}
        failed = {ConfigClass.from_json(e) for p in mine for e in p["failed"]}
        run = {**mine[0]["run"], "processes": len(mine)}
        run["classes_passed"] = len(passed - failed)
        data = update_record(path, device, passed - failed, failed, run)
    for p in _part_paths(path):
        p.unlink()
    return data
