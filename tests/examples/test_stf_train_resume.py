# SPDX-License-Identifier: Apache-2.0
"""Interrupted and resumed training (`examples/stf/train.py`): exact resumption, no lost or
overwritten checkpoints, a clean stop on Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from examples.stf import train, zoo
from examples.stf.data import ResumableSampler
from tests.examples.stf_helpers import REPO_ROOT, SCRIPTS

SMOKE = ["--smoke", "--iterations", "6", "--no-progress"]  # 2 steps an epoch: 3 epochs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted 6-step smoke run, and one stopped mid-epoch at step 3 then resumed.

    A temporary file of a killed save is left in the second run's folder before resuming.
    """
    whole, parts = tmp_path_factory.mktemp("whole"), tmp_path_factory.mktemp("parts")
    train.main([*SMOKE, "--save-dir", str(whole)])
    train.main([*SMOKE, "--save-dir", str(parts), "--stop-after", "3"])
    stopped = zoo.read_checkpoint(parts / "checkpoint.pth.tar")
    stale = parts / ".checkpoint.pth.tar.x1y2z3.tmp"
    stale.write_bytes(b"half a checkpoint")
    train.main([*SMOKE, "--save-dir", str(parts), "--resume", str(parts / "checkpoint.pth.tar")])
    return {
        "whole": zoo.read_checkpoint(whole / "checkpoint.pth.tar"),
        "resumed": zoo.read_checkpoint(parts / "checkpoint.pth.tar"),
        "stopped": stopped,
        "stale": stale,
        "whole_dir": whole,
    }


def _optimizer_tensors(state: dict) -> list[torch.Tensor]:
    return [value for entry in state["state"].values() for value in entry.values()]


def test_stop_after_saves_at_the_requested_step(runs):
    assert runs["stopped"]["step"] == 3


def test_resumed_weights_equal_the_uninterrupted_runs_bit_for_bit(runs):
    whole, resumed = runs["whole"]["state_dict"], runs["resumed"]["state_dict"]
    assert list(whole) == list(resumed)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


@pytest.mark.parametrize("key", ["optimizer", "aux_optimizer"])
def test_resumed_optimizer_states_equal_the_uninterrupted_runs(runs, key):
    whole, resumed = (_optimizer_tensors(runs[r][key]) for r in ("whole", "resumed"))
    assert len(whole) == len(resumed) > 0
    assert all(torch.equal(a, b) for a, b in zip(whole, resumed))


def test_resumed_random_state_equals_the_uninterrupted_runs(runs):
    whole, resumed = runs["whole"]["rng_states"][0], runs["resumed"]["rng_states"][0]
    assert torch.equal(whole["torch"], resumed["torch"])
    assert torch.equal(whole["numpy"]["keys"], resumed["numpy"]["keys"])


def test_temporary_files_of_a_killed_save_are_removed_on_start(runs):
    assert not runs["stale"].exists()


def test_resuming_into_a_save_dir_of_another_run_is_refused(runs, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "checkpoint.pth.tar").write_bytes(b"another run's")
    with pytest.raises(SystemExit):
        train.main([*SMOKE, "--save-dir", str(other),
                    "--resume", str(runs["whole_dir"] / "checkpoint.pth.tar")])
    assert "would overwrite" in capsys.readouterr().err
    assert (other / "checkpoint.pth.tar").read_bytes() == b"another run's"


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [("--lr", "0.001", "lr=0.001"), ("--seed", "7", "seed=7"),
     ("--iterations", "8", "iterations=8")],
)
def test_resuming_with_another_schedule_is_refused_naming_both_values(
    runs, tmp_path, capsys, option, value, named
):
    with pytest.raises(SystemExit):  # the last --iterations given wins
        train.main([*SMOKE, option, value, "--save-dir", str(tmp_path),
                    "--resume", str(runs["whole_dir"] / "checkpoint.pth.tar")])
    err = capsys.readouterr().err
    assert named in err and "--allow-schedule-change" in err
    assert not (tmp_path / "checkpoint.pth.tar").exists()


def test_resuming_from_a_weights_export_is_refused(tmp_path, capsys):
    info = train.model_info(train.parse_args(["--smoke"]))
    export = tmp_path / "weights.pth.tar"
    zoo.save_weights(export, zoo.build_model(info.name, info.config), info)
    with pytest.raises(SystemExit):
        train.main([*SMOKE, "--save-dir", str(tmp_path / "run"), "--resume", str(export)])
    assert "holds weights only" in capsys.readouterr().err


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["ctrl-c", "sigterm"])
def test_a_stop_signal_saves_a_checkpoint_and_exits_without_a_traceback(tmp_path, signum, status):
    command = [sys.executable, str(SCRIPTS / "train.py"), "--smoke", "--iterations", "100000",
               "--save-every", "100000", "--val-every", "100000", "--no-progress",
               "--save-dir", str(tmp_path)]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               env={"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
                                    "PATH": ""})
    first_line = process.stdout.readline()  # printed once the handler is in place
    process.send_signal(signum)
    _, err = process.communicate(timeout=240)
    assert "checkpoints go to" in first_line
    assert process.returncode == status, err
    assert "Traceback" not in err and "interrupted at step" in err
    assert zoo.read_checkpoint(tmp_path / "checkpoint.pth.tar")["step"] >= 1


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(v) for v in path.read_text().split()] if path.exists() else []


@pytest.mark.skipif(not hasattr(signal, "sigwaitinfo") or not Path("/proc/self/task").exists(),
                    reason="workers read SIGTERM's sender with sigwaitinfo (Linux)")
def test_sigterm_to_every_process_of_the_job_still_saves_a_checkpoint(tmp_path):
    # a scheduler signalling the whole job: the data worker gets SIGTERM too, and ignores it
    command = [sys.executable, str(SCRIPTS / "train.py"), "--smoke", "--iterations", "100000",
               "--save-every", "100000", "--val-every", "100000", "--no-progress",
               "--num-workers", "1", "--save-dir", str(tmp_path)]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               env={"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
                                    "PATH": ""})
    try:
        assert "checkpoints go to" in process.stdout.readline()
        deadline = time.monotonic() + 120
        while not _children(process.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = _children(process.pid)
        assert workers, "the data worker did not start"
        time.sleep(3)  # past the worker's init function, which sets its signal handling
        os.killpg(process.pid, signal.SIGTERM)
        _, err = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 143, err
    assert "Traceback" not in err and "interrupted at step" in err
    assert zoo.read_checkpoint(tmp_path / "checkpoint.pth.tar")["step"] >= 1
    assert not any(Path(f"/proc/{w}").exists() for w in workers)  # shut down with the run


@pytest.mark.parametrize(("mine", "other", "status"), [(None, signal.SIGTERM, 143), (signal.SIGINT, None, 130)])
def test_every_process_exits_with_the_status_of_the_signal_that_stopped_the_run(
    monkeypatch, mine, other, status
):
    stop = train.StopRequest(train.Runtime(rank=0, world_size=2, device=torch.device("cpu")))
    stop.requested, stop.signum = mine is not None, mine

    def all_reduce(flags, op):  # the other rank's flags, reduced with MAX as gloo would
        theirs = torch.tensor([float(other is not None), float(other or 0)])
        flags.copy_(torch.maximum(flags, theirs))

    monkeypatch.setattr(train.dist, "all_reduce", all_reduce)
    assert stop.agreed() is True
    assert stop.exit_status == status


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps at the terminal width
    assert "(default: 0.0001)" in text and "(default: checkpoints)" in text


@pytest.mark.parametrize(("cores", "processes", "workers"), [(2, 1, 1), (16, 1, 4), (2, 2, 0)])
def test_default_workers_follow_the_cores_per_process(monkeypatch, cores, processes, workers):
    monkeypatch.setattr(train.os, "sched_getaffinity", lambda pid: set(range(cores)),
                        raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(processes))
    assert train.default_workers() == workers


def test_sampler_started_mid_epoch_yields_the_rest_of_that_epoch():
    sampler = ResumableSampler(7, batch_size=2, seed=3)  # 3 steps an epoch
    sampler.start_at(4)  # epoch 1, its second step
    tail = list(sampler)
    sampler.start_at(3)  # epoch 1 from its start
    assert len(tail) == 4 and tail == list(sampler)[2:]


def test_sampler_epochs_are_different_permutations():
    sampler = ResumableSampler(8, batch_size=4, seed=0)
    epochs = []
    for step in (0, 2):
        sampler.start_at(step)
        epochs.append([index for index, _ in sampler])
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(8))
    assert epochs[0] != epochs[1]
