# SPDX-License-Identifier: Apache-2.0
"""Files whose size fields were forged (with a valid CRC) get errors, never a crash or a
memory blow-up, before the entropy decoder runs."""

from __future__ import annotations

import random

import pytest
import torch

from examples.stf import codec, zoo
from tests.examples.stf_helpers import SCRIPTS, run_script


@pytest.fixture(scope="module")
def tiny():
    """A tiny updated cnn model, its info and a genuine 64x80 stream."""
    torch.manual_seed(0)
    info = zoo.ModelInfo(name="cnn", config=dict(zoo.TINY_CONFIGS["cnn"]))
    model = zoo.build_model("cnn", info.config).eval()
    model.update(force=True)
    stream = codec.unpack(codec.encode_image(model, info, torch.rand(3, 64, 80)))
    return model, info, stream


def _forged(stream: codec.Bitstream, **fields) -> codec.Bitstream:
    """`stream` with changed fields, re-packed so its CRC is valid."""
    changed = codec.Bitstream(**{**vars(stream), **fields})
    return codec.unpack(codec.pack(changed))


def test_genuine_stream_passes_the_size_checks(tiny):
    model, info, stream = tiny
    assert codec.decode_stream(model, info, stream).shape == (3, 64, 80)


def test_forged_size_above_the_pixel_limit_is_refused_naming_the_limit(tiny):
    model, info, stream = tiny
    forged = _forged(stream, height=2**15, width=2**15)
    with pytest.raises(codec.BitstreamError, match=r"32768x32768 image .* above the limit"):
        codec.decode_stream(model, info, forged)


def test_pixel_limit_is_configurable(tiny):
    model, info, stream = tiny
    with pytest.raises(codec.BitstreamError, match="above the limit of 1000 pixels"):
        codec.decode_stream(model, info, stream, max_pixels=1000)


def test_side_above_the_format_limit_is_refused_when_parsing(tiny):
    _, _, stream = tiny
    data = codec.pack(codec.Bitstream(**{**vars(stream), "height": 2**32 - 1}))
    with pytest.raises(codec.BitstreamError, match=r"a side must be 1\.\.32768"):
        codec.unpack(data)


@pytest.mark.parametrize("count", [0, 1, 3])
def test_string_count_other_than_two_is_refused(tiny, count):
    _, _, stream = tiny
    data = codec.pack(codec.Bitstream(**{**vars(stream), "strings": [b"\0" * 8] * count}))
    with pytest.raises(codec.BitstreamError, match=f"{count} strings, expected 2"):
        codec.unpack(data)


def test_string_longer_than_the_announced_size_can_produce_is_refused(tiny):
    model, info, stream = tiny
    forged = _forged(stream, height=1, width=1, strings=[b"\0" * 4096, stream.strings[1]])
    with pytest.raises(codec.BitstreamError, match="size fields do not belong to this stream"):
        codec.decode_stream(model, info, forged)


@pytest.mark.parametrize("length", [4, 13])
def test_string_that_is_not_whole_rans_words_is_refused(tiny, length):
    model, info, stream = tiny
    forged = _forged(stream, strings=[b"\1" * length, stream.strings[1]])
    with pytest.raises(codec.BitstreamError, match=f"y string holds {length} bytes"):
        codec.decode_stream(model, info, forged)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_garbage_strings_with_a_forged_larger_size_end_in_an_error(tiny, seed):
    model, info, stream = tiny
    rng = random.Random(seed)
    strings = [rng.randbytes(64), rng.randbytes(64)]
    forged = _forged(stream, height=512, width=640, strings=strings)
    with pytest.raises(codec.BitstreamError, match="the file was altered"):
        codec.decode_stream(model, info, forged)


def test_decode_cli_reports_a_forged_size_as_an_error_not_a_crash(tiny, tmp_path):
    model, info, stream = tiny
    checkpoint = tmp_path / "tiny.pth.tar"
    zoo.save_checkpoint(checkpoint, model, info)
    forged = tmp_path / "forged.bin"
    forged.write_bytes(codec.pack(codec.Bitstream(**{**vars(stream), "height": 2**15 - 1,
                                                     "width": 2**15 - 1})))
    result = run_script(SCRIPTS / "codec.py", "decode", forged, "-o", tmp_path / "out.png",
                        "--checkpoint", checkpoint)
    assert result.returncode == 1, result.stderr
    assert "above the limit" in result.stderr and not (tmp_path / "out.png").exists()
