# SPDX-License-Identifier: Apache-2.0
"""Weights-only exports (`examples/stf/export.py`) load like the checkpoint they come from."""

from __future__ import annotations

import pytest
import torch

from examples.stf import codec, export, zoo
from tests.examples.stf_helpers import save_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("export") / "c.pth.tar", "cnn")


def test_float32_export_has_the_checkpoints_weights_and_no_training_state(checkpoint, tmp_path):
    out = tmp_path / "w.pth.tar"
    assert export.main([str(checkpoint), "-o", str(out)]) == 0
    original, _ = zoo.load_model(checkpoint)
    exported, info = zoo.load_model(out)
    assert zoo.weights_fingerprint(exported) == zoo.weights_fingerprint(original)
    assert (info.name, info.quality) == ("cnn", 2)
    assert "optimizer" not in zoo.read_checkpoint(out)


def test_float16_export_stores_half_precision_parameters_and_round_trips(checkpoint, tmp_path):
    out = tmp_path / "w16.pth.tar"
    assert export.main([str(checkpoint), "-o", str(out), "--dtype", "float16"]) == 0
    assert zoo.read_checkpoint(out)["state_dict"]["g_a.0.weight"].dtype == torch.float16
    model, info = zoo.load_model(out)
    stream = codec.unpack(codec.encode_image(model, info, torch.rand(3, 20, 24)))
    assert codec.decode_stream(model, info, stream).shape == (3, 20, 24)


def test_export_does_not_overwrite_without_force(checkpoint, tmp_path, capsys):
    out = tmp_path / "w.pth.tar"
    out.write_bytes(b"keep")
    assert export.main([str(checkpoint), "-o", str(out)]) == 1
    assert "--force" in capsys.readouterr().err and out.read_bytes() == b"keep"


def test_export_never_writes_onto_its_input_checkpoint_even_with_force(tmp_path, capsys):
    source = save_tiny_checkpoint(tmp_path / "run.pth.tar")
    before = source.read_bytes()
    assert export.main([str(source), "-o", str(source), "--force"]) == 1
    assert "is the input" in capsys.readouterr().err
    assert source.read_bytes() == before
