# SPDX-License-Identifier: Apache-2.0
"""`winattn bench`: the time budget, the spread it reports, its busy-machine warning and
where it writes (no timing assertions)."""

import contextlib
import io
import json
from pathlib import Path

import pytest

from winattn.__main__ import main
from winattn._bench import MIN_REPEATS, Measurement, busy_warnings, spread

TINY = ["--shape", "16,8,2,4,2", "--no-backward", "--warmup", "0", "--no-progress"]


def _bench(argv: list[str]) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(["bench", *argv]) == 0
    return out.getvalue(), err.getvalue()


def _rounds(path: Path) -> set[int]:
    return {r["fwd_ms"]["n"] for r in json.loads(path.read_text())["results"]}


def test_a_tiny_budget_cuts_the_rounds_to_the_minimum(tmp_path: Path) -> None:
    _bench([*TINY, "--budget", "1e-6", "--out", str(tmp_path / "b.json")])
    assert _rounds(tmp_path / "b.json") == {MIN_REPEATS}


def test_explicit_repeats_ignore_the_budget(tmp_path: Path) -> None:
    _bench([*TINY, "--budget", "1e-6", "--repeats", "5", "--out", str(tmp_path / "r.json")])
    assert _rounds(tmp_path / "r.json") == {5}


def test_bench_writes_to_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    text, _ = _bench([*TINY, "--repeats", "1"])
    written = list(tmp_path.glob("attention_cpu_*.json"))
    assert len(written) == 1
    assert f"wrote {written[0]}" in text


def test_table_shows_the_spread_column() -> None:
    text, _ = _bench([*TINY, "--repeats", "3", "--no-save"])
    assert "±%" in text.splitlines()[1]


def _measurement(case: str, samples: tuple[float, float, float], floor_ratio: float = 2.0) -> Measurement:
    q1, median, q3 = samples
    m = Measurement({"dim": 16, "size": 8, "heads": 2, "window": 4, "shift": 2}, 1, case)
    m.fwd_ms = {"median": median, "q1": q1, "q3": q3, "min": q1, "max": q3, "n": 5}
    m.ratios = {"fwd_vs_floor": floor_ratio}
    return m


QUIET = {"logical_cores": 2, "load_average_at_start": [0.5], "load_average_at_end": [0.6]}


def test_spread_is_the_interquartile_range_over_the_median() -> None:
    assert spread({"median": 10.0, "q1": 9.0, "q3": 11.0}) == pytest.approx(0.2)


def test_a_steady_run_on_a_quiet_machine_gets_no_warning() -> None:
    results = [_measurement("winattn:sdpa", (9.9, 10.0, 10.1)), _measurement("floor", (4.9, 5.0, 5.1), 1.0)]
    assert busy_warnings(results, QUIET) == []


def test_a_large_spread_is_reported() -> None:
    results = [_measurement("winattn:sdpa", (5.0, 10.0, 20.0)), _measurement("floor", (2.0, 5.0, 9.0), 1.0)]
    assert any("vary by" in w for w in busy_warnings(results, QUIET))


def test_a_load_average_above_the_cores_is_reported() -> None:
    machine = {**QUIET, "load_average_at_end": [7.9]}
    results = [_measurement("floor", (4.9, 5.0, 5.1), 1.0)]
    assert any("load average was 7.9 on 2" in w for w in busy_warnings(results, machine))


def test_a_module_faster_than_its_floor_is_reported() -> None:
    results = [_measurement("winattn:sdpa", (1.6, 1.7, 1.8), 0.04), _measurement("floor", (39, 39.8, 40), 1.0)]
    assert any("faster than their own GEMM floor" in w for w in busy_warnings(results, QUIET))
