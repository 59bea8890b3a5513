# SPDX-License-Identifier: Apache-2.0
"""The `winattn` command: `info` and `bench` (a tiny `--quick` run; no timing assertions)."""

import contextlib
import datetime as dt
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from winattn.__main__ import main
from winattn._bench import QUICK_SHAPES, output_path
from winattn.backends import backend_reasons

REPO = Path(__file__).resolve().parents[1]


def _run(argv: list[str]) -> tuple[int, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(argv)
    return code, stdout.getvalue()


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    """One quick benchmark run (forward and backward), shared by the tests below."""
    out = tmp_path_factory.mktemp("bench") / "result.json"
    argv = ["bench", "--quick", "--repeats", "1", "--warmup", "0", "--no-progress", "--out", str(out)]
    code, text = _run(argv)
    assert code == 0
    return text, json.loads(out.read_text())


def test_info_lists_package_versions() -> None:
    _, text = _run(["info"])
    assert f"torch: {torch.__version__.split('+')[0]}" in text


def test_info_says_for_every_backend_whether_it_runs_on_cpu() -> None:
    _, text = _run(["info"])
    cpu_block = text.split("backends on cpu", 1)[1].split("\n\n", 1)[0]
    for name in backend_reasons():
        assert f"  {name}: " in cpu_block


def test_info_gives_reasons_for_backends_that_cannot_run() -> None:
    _, text = _run(["info"])
    for name, reasons in backend_reasons().items():
        if reasons:
            assert f"{name}: cannot run: {reasons[0]}" in text


def test_python_dash_m_winattn_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "winattn", "info"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("winattn ")


def test_no_subcommand_prints_help_and_fails() -> None:
    code, text = _run([])
    assert code == 2
    assert "bench" in text


def test_bench_rejects_malformed_shape(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--shape", "128,64"])
    assert exc.value.code == 2
    assert "DIM,SIZE,HEADS,WINDOW,SHIFT" in capsys.readouterr().err


def test_bench_writes_json_with_machine_and_command(quick_bench: tuple[str, dict]) -> None:
    _, doc = quick_bench
    assert doc["machine"]["torch"] == torch.__version__
    assert doc["machine"]["cpu"]
    assert doc["command"].startswith("winattn bench --quick")


def test_bench_runs_the_quick_shape_only(quick_bench: tuple[str, dict]) -> None:
    _, doc = quick_bench
    shapes = {tuple(r["shape"].values()) for r in doc["results"]}
    assert shapes == {(s.dim, s.size, s.heads, s.window, s.shift) for s in QUICK_SHAPES}


def test_bench_times_default_backend_floor_and_timm(quick_bench: tuple[str, dict]) -> None:
    _, doc = quick_bench
    cases = {r["case"] for r in doc["results"]}
    assert "floor" in cases
    assert any(c.endswith("(default)") for c in cases)
    if importlib.util.find_spec("timm") is not None:
        assert "timm" in cases


def test_bench_cases_compute_the_reference_function(quick_bench: tuple[str, dict]) -> None:
    _, doc = quick_bench
    diffs = {r["case"]: r["max_abs_diff_vs_reference"] for r in doc["results"]}
    compared = {k: v for k, v in diffs.items() if v is not None}
    assert "timm" in compared or importlib.util.find_spec("timm") is None
    assert all(v < 1e-4 for v in compared.values()), compared


def test_bench_records_forward_backward_and_ratios(quick_bench: tuple[str, dict]) -> None:
    _, doc = quick_bench
    default = next(r for r in doc["results"] if r["case"].endswith("(default)"))
    assert default["fwd_bwd_ms"]["n"] == 1
    assert {"fwd_vs_floor", "fwd_bwd_vs_floor"} <= set(default["ratios"])


def test_bench_peak_memory_counts_the_floor_outputs(quick_bench: tuple[str, dict]) -> None:
    _, doc = quick_bench
    floor = next(r for r in doc["results"] if r["case"] == "floor")
    s = QUICK_SHAPES[0]
    qkv_output_mib = s.size * s.size * 3 * s.dim * 4 / 2**20  # batch 1, float32
    assert floor["fwd_peak_mib"] >= qkv_output_mib


def test_bench_prints_a_row_per_case(quick_bench: tuple[str, dict]) -> None:
    text, doc = quick_bench
    for result in doc["results"]:
        assert f"  {result['case']} " in text


def test_bench_no_save_writes_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["bench", "--quick", "--repeats", "1", "--warmup", "0", "--no-backward"]
    _run([*argv, "--no-progress", "--no-save"])
    assert list(tmp_path.iterdir()) == []


def test_results_go_to_the_working_directory_inside_a_checkout_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "winattn"\n')
    (tmp_path / "docs").mkdir()
    monkeypatch.chdir(tmp_path / "docs")
    path = output_path(None, "cpu", dt.datetime(2026, 1, 2, 3, 4, 5))
    assert path == tmp_path / "docs" / "attention_cpu_20260102-030405.json"


def test_results_go_to_the_working_directory_outside_a_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = output_path(None, "cpu", dt.datetime(2026, 1, 2, 3, 4, 5))
    assert path == tmp_path / "attention_cpu_20260102-030405.json"


def test_out_folder_receives_a_dated_file(tmp_path: Path) -> None:
    path = output_path(str(tmp_path), "cuda", dt.datetime(2026, 1, 2, 3, 4, 5))
    assert path == tmp_path / "attention_cuda_20260102-030405.json"
