# SPDX-License-Identifier: Apache-2.0
"""Tests of the STF file codec (`examples/stf/codec.py`): format, CLI and error cases."""

from __future__ import annotations

import struct
import zlib

import pytest
import torch

from examples.stf import codec, zoo
from examples.stf.atomic import atomic_write
from examples.stf.data import read_image, to_uint8
from tests.examples.stf_helpers import (
    SCRIPTS,
    run_script,
    save_random_image,
    save_tiny_checkpoint,
)

HEIGHT, WIDTH = 37, 53  # not multiples of the latent stride


def _stream(**changes) -> codec.Bitstream:
    fields = dict(model="stf", quality=3, metric="mse", fingerprint=0xDEADBEEF,
                  image_crc=0x12345678, height=37, width=53, strings=[b"y-bytes", b"z"])
    return codec.Bitstream(**{**fields, **changes})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny checkpoint, an odd-sized image and its bitstream made by the encode CLI."""
    root = tmp_path_factory.mktemp("codec")
    checkpoint = save_tiny_checkpoint(root / "tiny.pth.tar", "cnn", seed=0)
    image = root / "image.png"
    save_random_image(image, HEIGHT, WIDTH)
    bitstream = root / "image.bin"
    result = run_script(SCRIPTS / "codec.py", "encode", image, "-o", bitstream,
                        "--checkpoint", checkpoint)
    assert result.returncode == 0, result.stderr
    return {"root": root, "checkpoint": checkpoint, "image": image, "bitstream": bitstream}


def test_pack_then_unpack_returns_the_same_header_and_strings():
    stream = _stream()
    assert codec.unpack(codec.pack(stream)) == stream


def test_unknown_quality_and_metric_survive_a_round_trip():
    stream = _stream(quality=None, metric=None)
    assert codec.unpack(codec.pack(stream)) == stream


@pytest.mark.parametrize("keep", [2, 7, 20, -1])
def test_truncated_file_is_reported_as_truncated(keep):
    data = codec.pack(_stream())
    with pytest.raises(codec.BitstreamError, match="truncated"):
        codec.unpack(data[:keep])


@pytest.mark.parametrize("position", [12, 20, -6])
def test_flipped_byte_is_caught_by_the_checksum(position):
    data = bytearray(codec.pack(_stream()))
    data[position] ^= 0x40
    with pytest.raises(codec.BitstreamError, match="checksum"):
        codec.unpack(bytes(data))


def test_foreign_file_is_rejected_by_its_magic_bytes():
    png_start = b"\x89PNG\r\n\x1a\n" + bytes(40)
    with pytest.raises(codec.BitstreamError, match="magic"):
        codec.unpack(png_start)


def test_empty_file_is_rejected_as_foreign():
    with pytest.raises(codec.BitstreamError, match="not a winattn STF bitstream"):
        codec.unpack(b"")


def test_newer_format_version_is_rejected_by_number():
    data = bytearray(codec.pack(_stream()))
    data[4] = codec.FORMAT_VERSION + 1
    with pytest.raises(codec.BitstreamError, match=f"version {codec.FORMAT_VERSION + 1}"):
        codec.unpack(bytes(data))


def test_appended_bytes_are_rejected():
    with pytest.raises(codec.BitstreamError, match="unexpected bytes"):
        codec.unpack(codec.pack(_stream()) + b"\x00")


def test_inconsistent_field_length_with_valid_checksum_is_rejected():
    data = bytearray(codec.pack(_stream()))
    body_end = len(data) - 4
    length_at = body_end - 1 - 4  # length field of the last string (b"z")
    data[length_at : length_at + 4] = struct.pack(">I", 1000)
    data[body_end:] = struct.pack(">I", zlib.crc32(bytes(data[:body_end])))
    with pytest.raises(codec.BitstreamError, match="runs past"):
        codec.unpack(bytes(data))


def test_encode_cli_writes_a_file_with_model_quality_and_size(files):
    stream = codec.unpack(files["bitstream"].read_bytes())
    assert (stream.model, stream.quality, stream.height, stream.width) == ("cnn", 2, HEIGHT, WIDTH)


def test_decode_cli_writes_the_models_reconstruction(files):
    output = files["root"] / "decoded.png"
    result = run_script(SCRIPTS / "codec.py", "decode", files["bitstream"], "-o", output,
                        "--checkpoint", files["checkpoint"])
    assert result.returncode == 0, result.stderr
    model, _ = zoo.load_model(files["checkpoint"])
    with torch.no_grad():
        expected = model(read_image(files["image"])[None])["x_hat"].clamp(0, 1)[0]
    torch.testing.assert_close(to_uint8(read_image(output)), to_uint8(expected), atol=0, rtol=0)


def test_decode_cli_fails_on_a_truncated_file_and_writes_nothing(files):
    truncated = files["root"] / "truncated.bin"
    truncated.write_bytes(files["bitstream"].read_bytes()[:-10])
    output = files["root"] / "never.png"
    result = run_script(SCRIPTS / "codec.py", "decode", truncated, "-o", output,
                        "--checkpoint", files["checkpoint"])
    assert (result.returncode, "truncated" in result.stderr, output.exists()) == (1, True, False)


def test_decode_fails_on_a_corrupted_payload_byte_and_writes_nothing(files, capsys):
    corrupted = files["root"] / "corrupted.bin"
    data = bytearray(files["bitstream"].read_bytes())
    data[len(data) // 2] ^= 0x01
    corrupted.write_bytes(bytes(data))
    output = files["root"] / "never.png"
    code = codec.main(["decode", str(corrupted), "-o", str(output),
                       "--checkpoint", str(files["checkpoint"])])
    assert (code, "checksum" in capsys.readouterr().err, output.exists()) == (1, True, False)


def test_decode_with_other_weights_is_refused(files, capsys):
    other = save_tiny_checkpoint(files["root"] / "other.pth.tar", "cnn", seed=1)
    output = files["root"] / "never.png"
    code = codec.main(["decode", str(files["bitstream"]), "-o", str(output),
                       "--checkpoint", str(other)])
    assert (code, "other weights" in capsys.readouterr().err, output.exists()) == (1, True, False)


def test_decoder_reconstructing_other_pixels_than_the_encoder_is_refused(files):
    stream = codec.unpack(files["bitstream"].read_bytes())
    stream.image_crc ^= 1
    model, info = zoo.load_model(files["checkpoint"])
    with pytest.raises(codec.BitstreamError, match="differ from the encoder's reconstruction"):
        codec.decode_stream(model, info, stream)


def test_encode_does_not_overwrite_an_existing_output_without_force(files, capsys):
    existing = files["root"] / "existing.bin"
    existing.write_bytes(b"keep me")
    code = codec.main(["encode", str(files["image"]), "-o", str(existing),
                       "--checkpoint", str(files["checkpoint"])])
    assert (code, "--force" in capsys.readouterr().err, existing.read_bytes()) == (
        1, True, b"keep me"
    )


def test_encode_with_force_replaces_an_existing_output(files):
    existing = files["root"] / "replaced.bin"
    existing.write_bytes(b"old")
    code = codec.main(["encode", str(files["image"]), "-o", str(existing), "--force",
                       "--checkpoint", str(files["checkpoint"])])
    assert code == 0
    assert codec.unpack(existing.read_bytes()).model == "cnn"


def test_decode_to_an_unknown_image_suffix_is_refused_before_decoding(files, capsys):
    output = files["root"] / "image.unknown"
    code = codec.main(["decode", str(files["bitstream"]), "-o", str(output),
                       "--checkpoint", str(files["checkpoint"])])
    assert (code, ".unknown" in capsys.readouterr().err, output.exists()) == (1, True, False)


def test_official_format_checkpoint_is_recognised_and_round_trips(tmp_path):
    torch.manual_seed(3)
    model = zoo.build_model("cnn", zoo.TINY_CONFIGS["cnn"])
    official = {"epoch": 7, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}
    path = tmp_path / "official.pth.tar"
    torch.save(official, path)
    loaded, info = zoo.load_model(path, quality=4, config=zoo.TINY_CONFIGS["cnn"])
    x = torch.rand(3, HEIGHT, WIDTH)
    stream = codec.unpack(codec.encode_image(loaded, info, x))
    with torch.no_grad():
        expected = loaded(x[None])["x_hat"].clamp(0, 1)[0]
    decoded = codec.decode_stream(loaded, info, stream)
    assert (stream.model, stream.quality) == ("cnn", 4)
    torch.testing.assert_close(decoded, expected, atol=0, rtol=0)


def test_failed_atomic_write_leaves_neither_output_nor_temporary_file(tmp_path):
    def write_half_then_fail(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "out.bin", write_half_then_fail)
    assert list(tmp_path.iterdir()) == []


def test_decode_with_a_checkpoint_of_the_other_model_names_both(files, capsys):
    other = save_tiny_checkpoint(files["root"] / "stf.pth.tar", "stf", seed=0)
    output = files["root"] / "never.png"
    code = codec.main(["decode", str(files["bitstream"]), "-o", str(output),
                       "--checkpoint", str(other)])
    message = capsys.readouterr().err
    assert (code, "'cnn'" in message and "'stf'" in message, output.exists()) == (1, True, False)


def test_encode_never_writes_onto_its_input_image_even_with_force(files, capsys):
    before = files["image"].read_bytes()
    assert codec.main(["encode", str(files["image"]), "-o", str(files["image"]), "--force",
                       "--checkpoint", str(files["checkpoint"])]) == 1
    assert "is the input" in capsys.readouterr().err
    assert files["image"].read_bytes() == before
