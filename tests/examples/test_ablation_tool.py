# SPDX-License-Identifier: Apache-2.0
"""The ablation tool on a tiny budget: lockstep training, resume, evaluation, files, refusals."""

import json

import pytest
import torch

pytest.importorskip("compressai")
pytest.importorskip("skimage")
pytest.importorskip("bjontegaard")

from examples.ablation.__main__ import main  # noqa: E402
from examples.ablation.evaluate import evaluate_run  # noqa: E402
from examples.ablation.train import TrainConfig, build_model, train_models  # noqa: E402

TINY = TrainConfig(N=8, M=8, lmbdas=(0.01, 0.1), steps=2, crop=64, batch_size=1)


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    train_models(TINY, run, progress=False)
    evaluate_run(
        run,
        images=("chelsea",),
        jpeg_qualities=(20, 50, 80),
        webp_qualities=(20, 50, 80),
        progress=False,
        log=lambda _: None,
    )
    return run


def test_both_variants_start_from_the_same_weights():
    plain, patched = build_model(TINY, "unpatched"), build_model(TINY, "patched")
    patched_state = patched.state_dict()
    for name, value in plain.state_dict().items():
        assert torch.equal(value, patched_state[name]), name
    assert len(patched_state) > len(plain.state_dict())


def test_every_model_takes_the_same_number_of_steps(evaluated_run):
    trained = json.loads((evaluated_run / "train.json").read_text())
    assert trained["steps"] == TINY.steps and trained["finished"]
    assert {m["steps"] for m in trained["models"].values()} == {TINY.steps}
    assert len(trained["models"]) == 2 * len(TINY.lmbdas)


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(evaluated_run, tmp_path):
    train_models(TINY, tmp_path, stop_at=1, progress=False)
    assert json.loads((tmp_path / "train.json").read_text())["steps"] == 1
    train_models(TINY, tmp_path, progress=False)
    for name in ("lmbda0.01-unpatched", "lmbda0.1-patched"):
        resumed = torch.load(tmp_path / "weights" / f"{name}.pt")
        straight = torch.load(evaluated_run / "weights" / f"{name}.pt")
        for key, value in straight.items():  # the same steps, up to float rounding
            torch.testing.assert_close(resumed[key], value, rtol=0, atol=1e-6, msg=key)


def test_a_folder_with_another_config_is_refused(evaluated_run):
    other = TrainConfig(**{**TINY.__dict__, "steps": 3})
    with pytest.raises(ValueError, match="holds a run with config.*--force"):
        train_models(other, evaluated_run, progress=False)


def test_evaluation_writes_eval_model_json_for_every_codec(evaluated_run):
    for label, points in (("unpatched", 2), ("patched", 2), ("jpeg", 3), ("webp", 3)):
        curve = json.loads((evaluated_run / f"{label}.json").read_text())
        results = curve["results"]
        assert {"psnr-rgb", "ms-ssim-rgb", "bpp"} <= set(results)
        assert len(results["bpp"]) == points and results["bpp"] == sorted(results["bpp"])
        assert all(b > 0 for b in results["bpp"])


def test_learned_codecs_decode_exactly_their_forward_output(evaluated_run):
    assert json.loads((evaluated_run / "ablation.json").read_text())["decode_equals_forward"]


def test_summary_has_bd_rate_cost_and_machine_and_a_plot(evaluated_run):
    summary = json.loads((evaluated_run / "ablation.json").read_text())
    bd = summary["bd_rate_percent"]["patched vs unpatched"]
    assert set(bd) == {"psnr", "ms-ssim"}
    assert all(v is None or isinstance(v, float) for v in bd.values())
    assert summary["cost"]["params"]["patched"] > summary["cost"]["params"]["unpatched"]
    assert summary["machine"]["cpu_count"] >= 1
    assert (evaluated_run / "rd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluation_refuses_to_overwrite_results_without_force(evaluated_run):
    with pytest.raises(FileExistsError, match="--force"):
        evaluate_run(evaluated_run, images=("chelsea",), progress=False)


def test_command_line_rejects_a_bad_value_with_the_fix(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r"), "--steps", "0"]) == 2
    assert "--steps=0 must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_force_with_an_unknown_arch_deletes_nothing(tmp_path, capsys):
    out = tmp_path / "d"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    assert main(["train", "--out", str(out), "--force", "--arch", "nope-arch"]) == 2
    assert "unknown arch='nope-arch'" in capsys.readouterr().err
    assert (out / "thesis.tex").read_text() == "years of work"


def test_force_refuses_a_folder_without_the_tools_marker(tmp_path, capsys):
    out = tmp_path / "d"
    out.mkdir()
    (out / "state.pt").write_bytes(b"not ours")
    assert main(["train", "--out", str(out), "--force", "--steps", "1"]) == 2
    assert "has no .winattn-ablation marker" in capsys.readouterr().err
    assert (out / "state.pt").read_bytes() == b"not ours"


def test_force_refuses_a_run_folder_that_holds_foreign_files(tmp_path, capsys):
    out = tmp_path / "d"
    out.mkdir()
    (out / ".winattn-ablation").touch()
    (out / "notes.txt").write_text("mine")
    assert main(["train", "--out", str(out), "--force", "--steps", "1"]) == 2
    assert "holds files this tool did not write (notes.txt)" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("files", [["state.pt"], [".winattn-ablation", "notes.txt"]])
def test_a_folder_that_force_refuses_is_left_exactly_as_it_was(tmp_path, files):
    out = tmp_path / "d"
    out.mkdir()
    for name in files:
        (out / name).write_text("mine")
    before = sorted(p.name for p in out.iterdir())
    assert main(["train", "--out", str(out), "--force", "--steps", "1"]) == 2
    assert sorted(p.name for p in out.iterdir()) == before


def test_force_with_an_existing_file_as_out_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "f"
    out.write_text("keep")
    assert main(["train", "--out", str(out), "--force", "--steps", "1"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert out.read_text() == "keep"


@pytest.mark.parametrize("value", ["nan", "inf", "-0.01", "0"])
def test_a_non_finite_or_non_positive_lambda_is_refused_up_front(tmp_path, capsys, value):
    assert main(["train", "--out", str(tmp_path / "r"), "--lmbdas", "0.01", value]) == 2
    assert "--lmbdas=" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_force_starts_over_in_a_folder_the_tool_made(tmp_path, capsys):
    out = tmp_path / "r"
    argv = ["train", "--out", str(out), "-N", "8", "-M", "8", "--lmbdas", "0.01",
            "--steps", "1", "--crop", "64", "--batch-size", "1", "--no-progress"]
    assert main(argv) == 0
    assert (out / ".winattn-ablation").exists()
    assert main([*argv, "--force"]) == 0
    assert json.loads((out / "train.json").read_text())["steps"] == 1


def test_a_second_run_into_a_locked_folder_is_refused_with_the_owner(tmp_path, capsys):
    from examples.stf.cli import folder_lock

    out = tmp_path / "r"
    with folder_lock(out, "--out"):
        assert main(["train", "--out", str(out), "--steps", "1"]) == 2
    assert "is in use by another run (PID" in capsys.readouterr().err


def test_force_into_a_new_folder_trains(tmp_path):
    out = tmp_path / "new"
    argv = ["train", "--out", str(out), "-N", "8", "-M", "8", "--lmbdas", "0.01",
            "--steps", "1", "--crop", "64", "--batch-size", "1", "--no-progress", "--force"]
    assert main(argv) == 0
    assert (out / "train.json").exists()
