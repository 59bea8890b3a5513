# SPDX-License-Identifier: Apache-2.0
"""Checkpoints of train.py carry a sha256 of their contents: a damaged or hand-edited file is
refused with one clear error, and a save that fails (a full disk) says the previous
checkpoint is intact."""

from __future__ import annotations

import errno
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from examples.stf import train, zoo
from examples.stf.loader import load_official

SMOKE = ["--smoke", "-m", "cnn", "--no-progress", "--val-every", "100"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """checkpoint.pth.tar of a 2-step smoke run of the tiny WACNN."""
    save_dir = tmp_path_factory.mktemp("run")
    train.main([*SMOKE, "--iterations", "2", "--save-dir", str(save_dir)])
    return save_dir / "checkpoint.pth.tar"


def _copy(saved: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "old"
    folder.mkdir()
    return Path(shutil.copy(saved, folder / saved.name))


def _flip_a_byte_inside_the_largest_tensor(path: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        record = max((i for i in archive.infolist() if "/data/" in i.filename),
                     key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    start = record.header_offset
    name_length, extra_length = struct.unpack("<HH", data[start + 26 : start + 30])
    data[start + 30 + name_length + extra_length + record.file_size // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _edit(path: Path, keep_checksum: bool = True, **changes) -> None:
    checkpoint = torch.load(path, weights_only=True)
    checkpoint.update(changes)
    if not keep_checksum:
        del checkpoint[zoo.CHECKSUM_KEY]
    torch.save(checkpoint, path)


def _resume(path: Path) -> None:
    train.main([*SMOKE, "--iterations", "3", "--allow-schedule-change", "--save-dir",
                str(path.parent), "--resume", str(path)])


def test_resume_refuses_a_checkpoint_with_a_flipped_bit_in_a_tensor(saved, tmp_path, capsys):
    path = _copy(saved, tmp_path)
    _flip_a_byte_inside_the_largest_tensor(path)
    with pytest.raises(SystemExit) as stopped:
        _resume(path)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"checkpoint '{path}' is damaged or was edited" in err
    assert "Traceback" not in err


def test_the_loader_refuses_a_checkpoint_with_a_flipped_bit(saved, tmp_path):
    path = _copy(saved, tmp_path)
    _flip_a_byte_inside_the_largest_tensor(path)
    with pytest.raises(ValueError, match="is damaged or was edited"):
        load_official(path, arch="cnn", **zoo.TINY_CONFIGS["cnn"])
    with pytest.raises(ValueError, match="is damaged or was edited"):
        zoo.load_model(path)


def test_resume_refuses_a_hand_edited_field(saved, tmp_path, capsys):
    path = _copy(saved, tmp_path)
    _edit(path, step="2")
    with pytest.raises(SystemExit):
        _resume(path)
    assert "is damaged or was edited" in capsys.readouterr().err


def test_a_hand_edited_field_of_a_checkpoint_without_checksum_is_named(saved, tmp_path, capsys):
    path = _copy(saved, tmp_path)
    _edit(path, keep_checksum=False, step="2")
    with pytest.warns(UserWarning, match="has no checksum"), pytest.raises(SystemExit):
        _resume(path)
    assert "entry 'step' holds str '2', not int" in capsys.readouterr().err


def test_a_checkpoint_saved_before_checksums_loads_with_a_note(saved, tmp_path):
    path = _copy(saved, tmp_path)
    _edit(path, keep_checksum=False)
    with pytest.warns(UserWarning, match="has no checksum"):
        assert zoo.read_checkpoint(path)["step"] == 2


@pytest.mark.parametrize("failure", [
    RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed "
                 "writing file data/3: file write failed"),
    OSError(errno.ENOSPC, "No space left on device"),
])
def test_a_failed_save_says_the_previous_checkpoint_is_intact(tmp_path, monkeypatch, capsys,
                                                               failure):
    real_save = torch.save

    def save_until_the_disk_is_full(obj, file, *args, **kwargs):
        full = Path(file).name.startswith(".checkpoint.pth.tar.")
        if full and (Path(file).parent / "checkpoint.pth.tar").exists():
            raise failure
        real_save(obj, file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_the_disk_is_full)
    with pytest.raises(SystemExit) as stopped:
        train.main([*SMOKE, "--iterations", "4", "--save-every", "2", "--save-dir",
                    str(tmp_path)])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "the previous checkpoint.pth.tar is intact" in err
    assert "--resume from it" in err
    assert "Traceback" not in err
    assert zoo.read_checkpoint(tmp_path / "checkpoint.pth.tar")["step"] == 2
    assert not list(tmp_path.glob(".checkpoint*.tmp"))
