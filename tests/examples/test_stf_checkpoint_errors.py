# SPDX-License-Identifier: Apache-2.0
"""Damaged, foreign and unfit checkpoint files get one clear error naming the file and the
cause (`examples.stf.loader`, `examples.stf.zoo`), and the CLIs print it without a traceback."""

from __future__ import annotations

import random

import pytest
import torch

from examples.stf import codec, zoo
from examples.stf.loader import load_official
from tests.examples.stf_helpers import save_tiny_checkpoint

CNN_TINY = zoo.TINY_CONFIGS["cnn"]


def _state(**changes) -> dict:
    torch.manual_seed(0)
    state = zoo.build_model("cnn", CNN_TINY).state_dict()
    return {"epoch": 1, "state_dict": {**state, **changes}}


@pytest.mark.parametrize(
    ("content", "cause"),
    [(b"", "the file is empty"), (b"weights: none\n", "text"),
     (random.Random(0).randbytes(200), "binary data of an unknown format"),
     (b"PK\x03\x04" + bytes(60), "zip archive")],
)
def test_unreadable_file_is_one_error_naming_the_file_and_cause(tmp_path, content, cause):
    path = tmp_path / "model.pth.tar"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"cannot read checkpoint .*model.pth.tar.*{cause}"):
        load_official(path, arch="cnn", **CNN_TINY)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pth.tar"):
        load_official(tmp_path / "absent.pth.tar")


def test_nan_weights_are_refused_naming_the_entry():
    bad = _state()["state_dict"]["g_a.0.weight"].clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or infinite values in: g_a\.0\.weight"):
        load_official(_state(**{"g_a.0.weight": bad}), arch="cnn", **CNN_TINY)


@pytest.mark.parametrize("dtype", [torch.int64, torch.float16])
def test_weights_of_another_dtype_are_refused_naming_both(dtype):
    weight = _state()["state_dict"]["g_a.0.weight"].to(dtype)
    with pytest.raises(ValueError, match=rf"g_a\.0\.weight {dtype} vs torch.float32"):
        load_official(_state(**{"g_a.0.weight": weight}), arch="cnn", **CNN_TINY)


def test_non_string_keys_are_refused():
    checkpoint = _state()
    checkpoint["state_dict"][101] = torch.zeros(1)
    with pytest.raises(ValueError, match="keys that are not parameter names: 101"):
        load_official(checkpoint, arch="cnn", **CNN_TINY)


def _edited_checkpoint(path, edit) -> None:
    """A tiny training checkpoint at `path`, changed by `edit(checkpoint_dict)`, with the
    checksum of the changed contents (as if the scripts had written it so)."""
    save_tiny_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint[zoo.CHECKSUM_KEY]
    edit(checkpoint)
    torch.save({**checkpoint, zoo.CHECKSUM_KEY: zoo.content_digest(checkpoint)}, path)


def test_training_checkpoint_without_weights_is_refused(tmp_path):
    _edited_checkpoint(tmp_path / "c.pth.tar", lambda c: c.pop("state_dict"))
    with pytest.raises(ValueError, match="holds no weights"):
        zoo.load_model(tmp_path / "c.pth.tar")


def test_training_checkpoint_with_an_unknown_config_key_is_refused(tmp_path):
    _edited_checkpoint(tmp_path / "c.pth.tar", lambda c: c["config"].update(width=3))
    with pytest.raises(ValueError, match="WACNN has no constructor argument width"):
        zoo.load_model(tmp_path / "c.pth.tar")


def test_training_checkpoint_of_a_newer_format_is_refused(tmp_path):
    newer = zoo.CHECKPOINT_VERSION + 1
    _edited_checkpoint(tmp_path / "c.pth.tar", lambda c: c.update(format_version=newer))
    with pytest.raises(ValueError, match=f"format version {newer}"):
        zoo.load_model(tmp_path / "c.pth.tar")


def test_codec_cli_reports_a_damaged_checkpoint_without_a_traceback(tmp_path, capsys):
    checkpoint = tmp_path / "c.pth.tar"
    checkpoint.write_bytes(b"not a checkpoint")
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    status = codec.main(["decode", str(image), "-o", str(tmp_path / "y.png"),
                         "--checkpoint", str(checkpoint)])
    err = capsys.readouterr().err
    assert status == 1 and err.startswith("error: ") and "Traceback" not in err
