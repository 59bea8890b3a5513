# SPDX-License-Identifier: Apache-2.0
"""Seeded fuzzing of the codec's file format and of the checkpoint loader.

Each case is derived from `(seed, case)`, both named in the failure message, so a failure
replays with `random.Random(seed)`. A damaged input must end in the documented error types,
and a file altered behind a valid CRC must never decode to an image that is not the
encoder's; a crash or another exception type fails the test. The cases are bounded (a small
image, a small pixel limit) so the whole file runs in seconds.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from examples.stf import codec, zoo
from examples.stf.loader import load_official
from tests.examples.stf_helpers import save_tiny_checkpoint

SEEDS = range(3)
CASES = 30
HEIGHT, WIDTH = 24, 40
MAX_PIXELS = HEIGHT * WIDTH * 16  # forged sizes stay cheap to decode


@pytest.fixture(scope="module")
def genuine():
    """A tiny updated model, its info, an image's file bytes and its parsed stream."""
    torch.manual_seed(0)
    info = zoo.ModelInfo(name="cnn", config=dict(zoo.TINY_CONFIGS["cnn"]), quality=2)
    model = zoo.build_model("cnn", info.config).eval()
    model.update(force=True)
    data = codec.encode_image(model, info, torch.rand(3, HEIGHT, WIDTH))
    return model, info, data, codec.unpack(data)


def _damaged(data: bytes, rng: random.Random) -> bytes:
    """`data` truncated, with flipped bits, with bytes inserted or with a tail appended."""
    kind = rng.choice(["truncate", "flip", "insert", "append"])
    if kind == "truncate":
        return data[: rng.randrange(len(data))]
    buffer = bytearray(data)
    if kind == "flip":
        for _ in range(rng.randint(1, 4)):
            buffer[rng.randrange(len(buffer))] ^= 1 << rng.randrange(8)
    elif kind == "insert":
        position = rng.randrange(len(buffer) + 1)
        buffer[position:position] = rng.randbytes(rng.randint(1, 8))
    else:
        buffer += rng.randbytes(rng.randint(1, 8))
    return bytes(buffer)


def _forged(stream: codec.Bitstream, rng: random.Random) -> codec.Bitstream:
    """`stream` with a size field or a string replaced (the CRC is recomputed by `pack`)."""
    field = rng.choice(["height", "width", "both", "y", "z"])
    if field in ("height", "width", "both"):
        def side() -> int:
            return rng.choice([1, 2, rng.randint(1, 300), rng.randint(1, codec.MAX_SIDE)])

        height = side() if field != "width" else stream.height
        width = side() if field != "height" else stream.width
        return dataclasses.replace(stream, height=height, width=width)
    strings = list(stream.strings)
    index = 0 if field == "y" else 1
    strings[index] = rng.randbytes(rng.choice([0, 3, 8, 64, 4 * rng.randint(2, 64)]))
    return dataclasses.replace(stream, strings=strings)


@pytest.mark.parametrize("seed", SEEDS)
def test_damaged_files_are_refused_by_the_parser(genuine, seed):
    _, _, data, _ = genuine
    rng = random.Random(seed)
    for case in range(CASES):
        damaged = _damaged(data, rng)
        if damaged == data:
            continue
        with pytest.raises(codec.BitstreamError):
            codec.unpack(damaged)
            pytest.fail(f"seed={seed} case={case}: a damaged file parsed without an error")


@pytest.mark.parametrize("seed", SEEDS)
def test_files_forged_behind_a_valid_crc_never_decode_to_another_image(genuine, seed):
    model, info, _, stream = genuine
    expected = codec.image_checksum(codec.decode_stream(model, info, stream))
    rng = random.Random(seed)
    for case in range(CASES // 3):
        forged = _forged(stream, rng)
        try:
            parsed = codec.unpack(codec.pack(forged))
            decoded = codec.decode_stream(model, info, parsed, max_pixels=MAX_PIXELS)
        except codec.BitstreamError:
            continue
        assert codec.image_checksum(decoded) == expected, (
            f"seed={seed} case={case}: a forged file decoded to another image: {forged}"
        )


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory):
    path = save_tiny_checkpoint(tmp_path_factory.mktemp("fuzz") / "c.pth.tar", "cnn")
    return path.read_bytes()


@pytest.mark.parametrize("seed", SEEDS)
def test_damaged_checkpoint_files_load_or_fail_with_a_message(checkpoint_bytes, tmp_path, seed):
    rng = random.Random(seed)
    path = tmp_path / "c.pth.tar"
    for case in range(CASES // 3):
        path.write_bytes(_damaged(checkpoint_bytes, rng))
        for load in (zoo.load_model, lambda p: load_official(p, arch="cnn",
                                                             **zoo.TINY_CONFIGS["cnn"])):
            try:
                load(path)
            except ValueError as err:
                assert str(path) in str(err) or "checkpoint" in str(err), (
                    f"seed={seed} case={case}: the message names neither file nor cause: {err}"
                )
