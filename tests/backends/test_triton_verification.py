# SPDX-License-Identifier: Apache-2.0
"""Automatic selection picks triton only for configurations in the verification record.

Runs on the CPU: a fake record (`WINATTN_TRITON_VERIFIED`) and a faked device class stand in
for the GPU; the kernels are never launched.
"""

from __future__ import annotations

import json

import pytest
import torch

import winattn.backends as backends
from winattn.backends import AttentionCall, select_backend
from winattn.backends.triton import TritonBackend, verification
from winattn.backends.triton.verification import ConfigClass, call_class, update_record

VERIFIED = ConfigClass("bfloat16", 32, (8, 8), "table", True, "none")


def _call(dtype=torch.bfloat16, head_dim=32, window=8, shift=4, size=16, pad=False) -> AttentionCall:
    heads = 2
    qkv = torch.randn(1, size, size, 3 * heads * head_dim, dtype=dtype)  # (B, H, W, 3C)
    return AttentionCall.build(
        qkv,
        num_heads=heads,
        window_size=window,
        shift_size=shift,
        bias_table=torch.zeros((2 * window - 1) ** 2, heads, dtype=dtype),
        bias=None,
        scale=None,
        pad_qkv=torch.zeros(qkv.shape[-1], dtype=dtype) if pad else None,
        dropout_p=0.0,
    )


@pytest.fixture
def fake_gpu(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """A record verifying only `VERIFIED` on "sm90", and every device reported as "sm90"."""
    path = tmp_path / "verified.json"
    path.write_text(json.dumps({
        "format": verification.FORMAT,
        "devices": {"sm90": {"runs": [], "classes": [VERIFIED.to_json()]}},
    }))
    monkeypatch.setenv(verification.ENV_VAR, str(path))
    monkeypatch.setattr(verification, "device_class", lambda device: "sm90")
    return path


def test_call_class_names_every_kernel_path() -> None:
    cls = call_class(_call(dtype=torch.float16, head_dim=24, window=7, shift=3, size=10, pad=True))
    assert cls == ConfigClass("float16", 32, (7, 7), "table", True, "pad_qkv")


def test_recorded_class_is_verified(fake_gpu) -> None:
    assert TritonBackend().unverified_reasons(_call()) == []


@pytest.mark.parametrize(
    "changed",
    [
        dict(dtype=torch.float16),
        dict(head_dim=64),
        dict(window=4, shift=2),
        dict(shift=0),
        dict(size=13),
        dict(size=13, pad=True),
    ],
    ids=["dtype", "head_dim", "window", "shift", "padding", "pad_qkv"],
)
def test_unrecorded_class_is_unverified_with_its_class_named(fake_gpu, changed: dict) -> None:
    call = _call(**changed)
    reasons = TritonBackend().unverified_reasons(call)
    assert len(reasons) == 1 and str(call_class(call)) in reasons[0]


def test_other_device_class_is_unverified(fake_gpu, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verification, "device_class", lambda device: "sm80")
    assert "sm80" in TritonBackend().unverified_reasons(_call())[0]


def test_missing_record_verifies_nothing(fake_gpu, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(verification.ENV_VAR, str(tmp_path / "absent.json"))
    assert TritonBackend().unverified_reasons(_call()) != []


def test_cpu_call_is_never_verified() -> None:
    assert TritonBackend().unverified_reasons(_call()) != []


@pytest.fixture
def triton_first(fake_gpu, monkeypatch: pytest.MonkeyPatch) -> None:
    """Auto tries triton first on the CPU, and triton says it can run every call."""
    monkeypatch.setitem(backends.AUTO_ORDER, "cpu", ("triton", "sdpa", "reference"))
    monkeypatch.setattr(TritonBackend, "missing_software", lambda self: [])
    monkeypatch.setattr(TritonBackend, "not_supported_reasons", lambda self, call: [])


def test_auto_selects_triton_for_a_recorded_class(triton_first) -> None:
    assert select_backend(_call(), "auto").name == "triton"


@pytest.mark.parametrize("changed", [dict(dtype=torch.float32), dict(size=13)], ids=["dtype", "padding"])
def test_auto_falls_back_to_sdpa_for_an_unrecorded_class(triton_first, changed: dict) -> None:
    assert select_backend(_call(**changed), "auto").name == "sdpa"


def test_shipped_record_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(verification.ENV_VAR, raising=False)
    record = verification.verified_classes()
    assert record["sm90"] and all(isinstance(c, ConfigClass) for c in record["sm90"])


def test_record_with_other_format_is_refused(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"format": 0, "devices": {}}))
    monkeypatch.setenv(verification.ENV_VAR, str(path))
    with pytest.raises(ValueError, match="format=0"):
        verification.verified_classes()


def test_update_drops_a_class_that_failed_and_keeps_other_devices(tmp_path) -> None:
    path = tmp_path / "verified.json"
    other = ConfigClass("float32", 16, (7, 7), "none", False, "none")
    update_record(path, "sm80", [other], [], {"device": "A100"})
    update_record(path, "sm90", [VERIFIED, other], [], {"device": "H200"})
    data = update_record(path, "sm90", [], [VERIFIED], {"device": "H200"})
    classes = {d: {ConfigClass.from_json(e) for e in v["classes"]} for d, v in data["devices"].items()}
    assert classes == {"sm80": {other}, "sm90": {other}}
    assert data["devices"]["sm90"]["runs"][-1]["failed"] == [str(VERIFIED)]


def test_merged_parts_drop_a_class_that_failed_in_any_process(tmp_path) -> None:
    path = tmp_path / "verified.json"
    other = ConfigClass("float32", 16, (7, 7), "none", False, "none")
    verification.write_part(path, "gw0", "sm90", [VERIFIED, other], [], {"device": "H200"})
    verification.write_part(path, "gw1", "sm90", [], [VERIFIED], {"device": "H200"})
    data = verification.merge_parts(path)
    assert [ConfigClass.from_json(e) for e in data["devices"]["sm90"]["classes"]] == [other]
    assert list(tmp_path.iterdir()) == [path]
