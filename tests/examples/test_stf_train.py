# SPDX-License-Identifier: Apache-2.0
"""Tests of the STF training script (`examples/stf/train.py`) and its data helpers."""

from __future__ import annotations

import math
import os

import pytest
import torch

from examples.stf import train, zoo
from examples.stf.cli import folder_lock
from examples.stf.data import SMOKE_DIR, ImageFolder, center_crop, random_crop_flip
from tests.examples.stf_helpers import SCRIPTS, run_script


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory):
    """The save folder of a 2-step `--smoke` run of the default model (stf)."""
    save_dir = tmp_path_factory.mktemp("smoke")
    result = run_script(SCRIPTS / "train.py", "--smoke", "--iterations", "2", "--no-progress",
                        "--save-dir", save_dir)
    assert result.returncode == 0, result.stderr
    return save_dir


def test_smoke_run_saves_a_checkpoint_at_its_last_step(smoke_dir):
    checkpoint = zoo.read_checkpoint(smoke_dir / "checkpoint.pth.tar")
    assert (checkpoint["name"], checkpoint["step"], checkpoint["lmbda"]) == (
        "stf", 2, zoo.lambda_for("mse", 3)
    )


def test_smoke_run_keeps_the_best_validation_checkpoint(smoke_dir):
    checkpoint = zoo.read_checkpoint(smoke_dir / "checkpoint_best.pth.tar")
    assert math.isfinite(checkpoint["best_loss"])


def test_smoke_checkpoint_loads_for_entropy_coding(smoke_dir):
    model, _ = zoo.load_model(smoke_dir / "checkpoint.pth.tar")
    out = model.compress(torch.rand(1, 3, 20, 24))
    assert model.decompress(out["strings"], out["shape"])["x_hat"].shape == (1, 3, 20, 24)


def test_resume_continues_step_count_and_optimizer_state(smoke_dir, tmp_path):
    train.main(["--smoke", "--iterations", "3", "--no-progress", "--save-dir", str(tmp_path),
                "--allow-schedule-change", "--resume", str(smoke_dir / "checkpoint.pth.tar")])
    checkpoint = zoo.read_checkpoint(tmp_path / "checkpoint.pth.tar")
    adam_steps = {float(s["step"]) for s in checkpoint["optimizer"]["state"].values()}
    assert (checkpoint["step"], adam_steps) == (3, {3.0})


def test_resume_from_another_model_is_refused(smoke_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.main(["--smoke", "-m", "cnn", "--no-progress", "--save-dir", str(tmp_path),
                    "--resume", str(smoke_dir / "checkpoint.pth.tar")])
    assert "not a 'cnn' training checkpoint" in capsys.readouterr().err


def test_resume_with_another_rate_point_is_refused(smoke_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.main(["--smoke", "--quality", "6", "--no-progress", "--save-dir", str(tmp_path),
                    "--resume", str(smoke_dir / "checkpoint.pth.tar")])
    assert "trained with quality=" in capsys.readouterr().err


def test_new_run_refuses_to_overwrite_existing_checkpoints(smoke_dir, capsys):
    before = (smoke_dir / "checkpoint.pth.tar").read_bytes()
    with pytest.raises(SystemExit):
        train.main(["--smoke", "--no-progress", "--save-dir", str(smoke_dir)])
    assert "--force" in capsys.readouterr().err
    assert (smoke_dir / "checkpoint.pth.tar").read_bytes() == before


def test_a_second_run_into_a_save_dir_in_use_is_refused_with_the_owner_pid(tmp_path, capsys):
    with folder_lock(tmp_path, "--save-dir"), pytest.raises(SystemExit) as stopped:
        train.main(["--smoke", "--no-progress", "--save-dir", str(tmp_path)])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"--save-dir '{tmp_path}' is in use by another run (PID {os.getpid()})" in err
    assert not list(tmp_path.glob("checkpoint*"))


def test_the_scripts_import_where_there_is_no_fcntl():
    """Windows has no `fcntl`; importing it (blocked here) only when the lock is taken."""
    blocked = ("import sys; sys.modules['fcntl'] = None; "
               "import examples.stf.cli, examples.stf.train, examples.ablation.__main__")
    result = run_script("-c", blocked)
    assert result.returncode == 0, result.stderr


def test_the_save_dir_lock_is_released_when_the_run_ends(tmp_path):
    train.main(["--smoke", "--iterations", "1", "--no-progress", "--save-dir", str(tmp_path)])
    with folder_lock(tmp_path, "--save-dir"):
        pass


@pytest.mark.parametrize("option", ["--val-every", "--save-every"])
def test_a_zero_interval_is_refused_up_front(tmp_path, capsys, option):
    with pytest.raises(SystemExit) as stopped:
        train.main(["--smoke", "--no-progress", "--save-dir", str(tmp_path), option, "0"])
    assert stopped.value.code == 2
    assert f"{option} must be at least 1, got 0" in capsys.readouterr().err


def test_two_process_gloo_ddp_smoke_run_saves_one_checkpoint_set(tmp_path):
    result = run_script(
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        SCRIPTS / "train.py", "--smoke", "-m", "cnn", "--iterations", "2", "--device", "cpu",
        "--batch-size", "1", "--no-progress", "--save-dir", tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    checkpoint = zoo.read_checkpoint(tmp_path / "checkpoint.pth.tar")
    files = sorted(p.name for p in tmp_path.iterdir())
    assert (checkpoint["step"], files) == (
        2, [".winattn.lock", "checkpoint.pth.tar", "checkpoint_best.pth.tar"]
    )


def test_learning_rate_drops_tenfold_at_lr_drop():
    args = train.parse_args(["--smoke", "--iterations", "10", "--lr-drop", "6"])
    assert [train.learning_rate(args, s) for s in (0, 5, 6, 9)] == [1e-4, 1e-4, 1e-5, 1e-5]


def test_lr_drop_defaults_to_ninety_percent_of_the_iterations():
    assert train.parse_args(["--smoke", "--iterations", "1000"]).lr_drop == 900


@pytest.mark.parametrize("quality", range(1, 7))
def test_quality_selects_the_papers_mse_lambda(quality):
    args = train.parse_args(["--smoke", "--quality", str(quality)])
    assert args.lmbda == (0.0018, 0.0035, 0.0067, 0.013, 0.025, 0.0483)[quality - 1]


def test_ms_ssim_training_with_small_crops_is_refused():
    with pytest.raises(SystemExit):
        train.parse_args(["--smoke", "--metric", "ms-ssim"])


def test_mse_loss_is_lambda_times_255_squared_mse_plus_bpp():
    target = torch.zeros(2, 3, 4, 4)
    output = {"x_hat": torch.full_like(target, 0.1),
              "likelihoods": {"y": torch.full((2, 5, 2, 2), 0.25)}}  # 2 bits x 40 / 32 px
    terms = train.RateDistortionLoss(0.01, "mse")(output, target)
    expected = 0.01 * 255**2 * 0.01 + 2.5
    assert float(terms["loss"]) == pytest.approx(expected, rel=1e-6)


def test_ms_ssim_loss_of_a_perfect_reconstruction_is_the_rate():
    target = torch.rand(1, 3, 176, 176)
    output = {"x_hat": target.clone(), "likelihoods": {"y": torch.full((1, 1, 4, 4), 0.5)}}
    terms = train.RateDistortionLoss(8.73, "ms-ssim")(output, target)
    assert float(terms["loss"]) == pytest.approx(16 / (176 * 176), abs=1e-6)


def test_only_the_quantiles_go_to_the_aux_optimizer():
    model = zoo.build_model("cnn", zoo.TINY_CONFIGS["cnn"])
    main, aux = train.split_parameters(model)
    assert ([p is model.entropy_bottleneck.quantiles for p in aux], len(main) + len(aux)) == (
        [True], len(list(model.parameters()))
    )


def test_random_crop_is_a_flipped_window_of_the_image():
    x = torch.arange(3 * 10 * 12, dtype=torch.float32).reshape(3, 10, 12)
    crop = random_crop_flip(x, 4, torch.Generator().manual_seed(0))
    windows = x.unfold(1, 4, 1).unfold(2, 4, 1)  # (3, 7, 9, 4, 4): [c, i, j, r, s] = x[c, i+r, j+s]
    windows = windows.permute(1, 2, 0, 3, 4).reshape(-1, 3, 4, 4)  # (63, 3, 4, 4)
    candidates = [crop, crop.flip(-1), crop.flip(-2), crop.flip(-1, -2)]
    assert any((windows == c).all(dim=(1, 2, 3)).any() for c in candidates)


def test_crops_of_small_images_are_padded_to_the_patch_size():
    assert random_crop_flip(torch.rand(3, 5, 7), 8).shape == (3, 8, 8)


def test_center_crop_takes_the_middle():
    x = torch.arange(36, dtype=torch.float32).reshape(1, 6, 6).expand(3, 6, 6)
    assert center_crop(x, 2)[0].tolist() == [[14.0, 15.0], [20.0, 21.0]]


def test_bundled_smoke_images_load_as_validation_crops():
    dataset = ImageFolder(SMOKE_DIR, patch_size=64, train=False)
    assert [tuple(dataset[i].shape) for i in range(len(dataset))] == [(3, 64, 64)] * 4
