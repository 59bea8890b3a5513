# SPDX-License-Identifier: Apache-2.0
"""Tests of backend selection: the global default, the context manager, the environment
variable, per-module and per-call overrides, automatic choice and its errors."""

from __future__ import annotations

import contextvars
import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import winattn
from winattn import backends
from winattn.backends import AttentionCall, Backend, BackendUnavailableError, dispatcher
from winattn.backends.reference import ReferenceBackend
from winattn.backends.sdpa import SdpaBackend

QKV = torch.randn(1, 6, 5, 3 * 8)


@pytest.fixture(autouse=True)
def clean_selection(monkeypatch):
    """Every test starts from "no choice made" and leaves the global state as it found it."""
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    monkeypatch.setattr(dispatcher, "_global", None)
    monkeypatch.setattr(dispatcher, "_overrides", contextvars.ContextVar("overrides", default=()))


@pytest.fixture
def calls(monkeypatch):
    """Records the name of every backend that runs a call (the computation still happens)."""
    seen: list[str] = []
    for cls in (ReferenceBackend, SdpaBackend):
        original = cls.forward

        def spy(self, call, _original=original):
            seen.append(self.name)
            return _original(self, call)

        monkeypatch.setattr(cls, "forward", spy)
    return seen


class _Picky(Backend):
    """A test backend that refuses every call, for two stated reasons."""

    name = "picky"

    def not_supported_reasons(self, call: AttentionCall) -> list[str]:
        return ["needs a GPU", f"head_dim={call.head_dim} is not a multiple of 16"]


class _Unverified(Backend):
    """A test backend that could run every call but has not been checked against the reference."""

    name = "unverified"

    def unverified_reasons(self, call: AttentionCall) -> list[str]:
        return ["not verified on cpu"]

    def forward(self, call: AttentionCall) -> torch.Tensor:
        raise AssertionError("automatic selection must not run an unverified backend")


@pytest.fixture
def fake_backends(monkeypatch):
    """Registers `_Picky` and `_Unverified`, and puts them first in the CPU auto order."""
    monkeypatch.setattr(dispatcher, "_REGISTRY", dict(dispatcher._REGISTRY))
    backends.register_backend(_Picky)
    backends.register_backend(_Unverified)
    monkeypatch.setitem(backends.AUTO_ORDER, "cpu", ("picky", "unverified", "sdpa", "reference"))


def _attend(**kwargs):
    return winattn.window_attention(QKV, 2, 4, 2, **kwargs)


# --- the default and how it is set --------------------------------------------------------


def test_reference_and_sdpa_are_available_everywhere():
    assert {"reference", "sdpa"} <= set(winattn.available_backends())


def test_backend_reasons_without_a_call_are_empty_for_builtin_backends():
    reasons = backends.backend_reasons()
    assert reasons["reference"] == [] and reasons["sdpa"] == []


def test_default_backend_is_auto():
    assert winattn.get_backend() == "auto"


def test_auto_picks_sdpa_on_cpu(calls):
    _attend()
    assert calls == ["sdpa"]


def test_set_backend_changes_the_default(calls):
    winattn.set_backend("reference")
    assert winattn.get_backend() == "reference"
    _attend()
    assert calls == ["reference"]


def test_set_backend_none_falls_back_to_the_environment_variable(monkeypatch):
    monkeypatch.setenv("WINATTN_BACKEND", "reference")
    winattn.set_backend("sdpa")
    winattn.set_backend(None)
    assert winattn.get_backend() == "reference"


def test_environment_variable_sets_the_default(monkeypatch, calls):
    monkeypatch.setenv("WINATTN_BACKEND", "reference")
    _attend()
    assert calls == ["reference"]


def test_environment_variable_is_read_at_call_time(monkeypatch, calls):
    module = winattn.WindowAttention(8, 2, 4, 2)
    monkeypatch.setenv("WINATTN_BACKEND", "reference")
    module(torch.randn(1, 5, 5, 8))
    assert calls == ["reference"]


def test_unknown_environment_variable_raises_naming_it(monkeypatch):
    monkeypatch.setenv("WINATTN_BACKEND", "cudnn")
    with pytest.raises(ValueError, match=r"unknown backend 'cudnn' \(environment variable WINATTN_BACKEND\); choose one of"):
        _attend()


def test_set_backend_rejects_unknown_name():
    with pytest.raises(ValueError, match=r"unknown backend 'flash' \(set_backend\); choose one of \['auto', 'reference', 'sdpa'"):
        winattn.set_backend("flash")


def test_use_backend_rejects_unknown_name():
    with pytest.raises(ValueError, match=r"unknown backend 'flash' \(use_backend\)"):
        with winattn.use_backend("flash"):
            pass


def test_use_backend_overrides_set_backend_and_restores_it(calls):
    winattn.set_backend("sdpa")
    with winattn.use_backend("reference"):
        _attend()
    _attend()
    assert calls == ["reference", "sdpa"]


def test_use_backend_nests_innermost_first():
    with winattn.use_backend("reference"):
        with winattn.use_backend("sdpa"):
            assert winattn.get_backend() == "sdpa"
        assert winattn.get_backend() == "reference"
    assert winattn.get_backend() == "auto"


def test_use_backend_restores_the_default_after_an_exception():
    with pytest.raises(KeyError):
        with winattn.use_backend("reference"):
            raise KeyError("boom")
    assert winattn.get_backend() == "auto"


def test_use_backend_overrides_the_environment_variable(monkeypatch):
    monkeypatch.setenv("WINATTN_BACKEND", "sdpa")
    with winattn.use_backend("reference"):
        assert winattn.get_backend() == "reference"


def test_use_backend_holds_for_its_own_thread_only():
    barrier = threading.Barrier(2)
    seen: dict[str, list[str]] = {"reference": [], "sdpa": []}

    def worker(name: str) -> None:
        with winattn.use_backend(name):
            for _ in range(50):
                barrier.wait()  # both threads are inside their blocks at once
                seen[name].append(winattn.get_backend())

    threads = [threading.Thread(target=worker, args=(name,)) for name in seen]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"reference": ["reference"] * 50, "sdpa": ["sdpa"] * 50}
    assert winattn.get_backend() == "auto"


def test_use_backend_in_interleaved_generators_keeps_each_generators_choice():
    def generator(name: str):
        with winattn.use_backend(name):
            for _ in range(3):
                yield winattn.get_backend()

    # Each generator driven in a context of its own, as asyncio does for tasks.
    runs = {name: (contextvars.copy_context(), generator(name)) for name in ("reference", "sdpa")}
    seen: dict[str, list[str]] = {name: [] for name in runs}
    for _ in range(3):
        for name, (context, gen) in runs.items():
            seen[name].append(context.run(next, gen))
    assert seen == {"reference": ["reference"] * 3, "sdpa": ["sdpa"] * 3}
    assert winattn.get_backend() == "auto"


def test_leaving_a_use_backend_block_out_of_order_removes_only_its_own_choice():
    def generator(name: str):
        with winattn.use_backend(name):
            yield

    outer, inner = generator("reference"), generator("sdpa")
    next(outer)
    next(inner)
    outer.close()  # leaves the outer block while the inner one is still open
    assert winattn.get_backend() == "sdpa"
    inner.close()
    assert winattn.get_backend() == "auto"


# --- overrides on modules and calls ---------------------------------------------------------


def test_call_backend_overrides_use_backend(calls):
    with winattn.use_backend("sdpa"):
        _attend(backend="reference")
    assert calls == ["reference"]


def test_switching_the_default_affects_modules_built_before(calls):
    module = winattn.WindowAttention(8, 2, 4, 2)
    x = torch.randn(1, 5, 5, 8)
    module(x)
    with winattn.use_backend("reference"):
        module(x)
    assert calls == ["sdpa", "reference"]


def test_module_backend_overrides_the_default(calls):
    module = winattn.WindowAttention(8, 2, 4, 2, backend="reference")
    with winattn.use_backend("sdpa"):
        module(torch.randn(1, 5, 5, 8))
    assert calls == ["reference"]


def test_forward_backend_overrides_the_module_backend(calls):
    module = winattn.WindowAttention(8, 2, 4, 2, backend="reference")
    module(torch.randn(1, 5, 5, 8), backend="sdpa")
    assert calls == ["sdpa"]


def test_swin_block_passes_its_backend_to_the_attention(calls):
    block = winattn.SwinBlock(8, 2, 4, 2, backend="reference")
    block(torch.randn(1, 5, 5, 8))
    assert calls == ["reference"]


def test_module_rejects_unknown_backend_at_construction():
    with pytest.raises(ValueError, match=r"unknown backend 'triton2' \(backend=\); choose one of"):
        winattn.WindowAttention(8, 2, backend="triton2")


def test_forward_rejects_unknown_backend():
    module = winattn.WindowAttention(8, 2, 4, 2)
    with pytest.raises(ValueError, match=r"unknown backend 'nope'"):
        module(torch.randn(1, 5, 5, 8), backend="nope")


@pytest.mark.parametrize("where", ["construction", "forward"])
def test_module_refuses_an_empty_backend_name(where):
    with pytest.raises(ValueError, match=r"unknown backend '' \(backend=\)"):
        if where == "construction":
            winattn.WindowAttention(8, 2, 4, 2, backend="")
        else:
            winattn.WindowAttention(8, 2, 4, 2)(torch.randn(1, 5, 5, 8), backend="")


# --- automatic choice and errors ------------------------------------------------------------


@pytest.mark.usefixtures("fake_backends")
def test_explicit_backend_that_cannot_run_lists_every_reason():
    with pytest.raises(BackendUnavailableError, match=r"'picky' cannot run this call: needs a GPU; head_dim=4 is not a multiple of 16"):
        _attend(backend="picky")


@pytest.mark.usefixtures("fake_backends")
def test_explicit_backend_runs_even_if_unverified():
    with pytest.raises(AssertionError, match="must not run an unverified backend"):
        _attend(backend="unverified")


@pytest.mark.usefixtures("fake_backends")
def test_auto_passes_over_unsupported_and_unverified_backends(calls):
    _attend()
    assert calls == ["sdpa"]


@pytest.mark.usefixtures("fake_backends")
def test_auto_logs_why_it_passed_backends_over_at_debug(caplog):
    with caplog.at_level(logging.DEBUG, logger="winattn"):
        _attend()
    (record,) = [r for r in caplog.records if r.name == "winattn"]
    assert record.levelno == logging.DEBUG
    message = record.getMessage()
    assert "auto-selected backend 'sdpa'" in message
    assert "needs a GPU" in message and "not verified on cpu" in message


@pytest.mark.usefixtures("fake_backends")
def test_auto_is_silent_above_debug(caplog):
    with caplog.at_level(logging.INFO, logger="winattn"):
        _attend()
    assert not [r for r in caplog.records if r.name == "winattn"]


@pytest.mark.usefixtures("fake_backends")
def test_auto_without_a_runnable_backend_lists_every_reason(monkeypatch):
    monkeypatch.setitem(backends.AUTO_ORDER, "cpu", ("picky", "unverified", "missing"))
    with pytest.raises(BackendUnavailableError) as info:
        _attend()
    message = str(info.value)
    assert "picky: needs a GPU; head_dim=4" in message
    assert "unverified: not verified on cpu" in message
    assert "missing: not registered" in message


def test_register_backend_rejects_the_name_auto():
    class Auto(Backend):
        name = "auto"

    with pytest.raises(ValueError, match="a backend needs a name other than 'auto'"):
        backends.register_backend(Auto)


def test_available_backends_leaves_out_backends_with_missing_software(monkeypatch):
    class Absent(Backend):
        name = "absent"

        def missing_software(self) -> list[str]:
            return ["the 'absent' package is not installed"]

    monkeypatch.setattr(dispatcher, "_REGISTRY", dict(dispatcher._REGISTRY))
    backends.register_backend(Absent)
    assert "absent" not in winattn.available_backends()
    assert backends.backend_reasons()["absent"] == ["the 'absent' package is not installed"]
    with pytest.raises(BackendUnavailableError, match="'absent' package is not installed"):
        _attend(backend="absent")


def test_import_winattn_does_not_import_optional_packages():
    code = (
        "import sys, winattn\n"
        "loaded = sorted(m for m in ('timm', 'compressai', 'triton') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_explain_gives_every_backends_reasons_and_the_ones_auto_passes_over(fake_backends):
    call = AttentionCall.build(
        QKV, num_heads=2, window_size=4, shift_size=2, bias_table=None, bias=None, scale=None,
        pad_qkv=None, dropout_p=0.0,
    )
    reasons = backends.explain(call)
    assert list(reasons)[:2] == ["reference", "sdpa"]
    assert reasons["reference"] == reasons["sdpa"] == []
    assert reasons["picky"] == ["needs a GPU", "head_dim=4 is not a multiple of 16"]
    assert reasons["unverified"] == ["not picked by auto: not verified on cpu"]


def test_explain_refuses_anything_but_an_attention_call_naming_the_fix():
    with pytest.raises(TypeError, match=r"got str; build one with AttentionCall.build"):
        backends.explain("sdpa")
