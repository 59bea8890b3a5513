# SPDX-License-Identifier: Apache-2.0
"""A file codec for STF and WACNN: one image in, one small self-describing file out.

Usage::

    python examples/stf/codec.py encode photo.png -o photo.bin --checkpoint stf_q3.pth.tar
    python examples/stf/codec.py decode photo.bin -o photo_dec.png --checkpoint stf_q3.pth.tar
    python examples/stf/codec.py info photo.bin

Official checkpoints work too (the model is recognised from their parameter names); they do
not record their rate point, so add `--quality 3` (and `--metric mse`) to note it in the
header. Decoding reads the model name from the file.

File layout (integers big-endian)::

    offset  size  field
    0       4     magic b"\\x89WAC"
    4       1     format version (1)
    5       4     body length N
    9       N     body
    9+N     4     CRC-32 of bytes [0, 9+N)

    body: u8 name length, model name (ASCII), u8 quality (0: unknown), u8 metric
          (0: unknown, 1: mse, 2: ms-ssim), u32 weights fingerprint, u32 image checksum,
          u32 height, u32 width, u8 string count, then per string: u32 length and the bytes
          (y, then z).

Before anything reaches the entropy decoder, the header's sizes are checked against limits
(`MAX_SIDE` pixels a side, and `MAX_PIXELS` pixels in all unless `--max-pixels` raises it, so a
forged size cannot exhaust the memory) and against the strings (their lengths must fit what an
image of that size can produce), and the strings are padded so that the decoder never reads
past them, whatever the file says.

The image checksum is the CRC-32 of the 8-bit reconstruction, which the encoder computes by
decoding its own output. A truncated, corrupted or foreign file, a checkpoint other than the one
that encoded the file, or a decoder that reconstructs other pixels than the encoder did (for
example another device whose arithmetic rounds differently) is reported as an error (exit
status 1), and nothing is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import struct
import sys
import zlib
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import it as part of its package (PEP 366)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    __package__ = "examples.stf"

import torch  # noqa: E402
from torch import nn  # noqa: E402

from . import zoo  # noqa: E402
from .atomic import atomic_write, atomic_write_bytes  # noqa: E402
from .cli import HelpFormatter, refuse_existing  # noqa: E402
from .data import image_format_for, read_image, to_uint8, write_image  # noqa: E402

MAGIC = b"\x89WAC"
FORMAT_VERSION = 1
METRICS = (None, "mse", "ms-ssim")  # header code -> metric
STRING_COUNT = 2  # y, then z
MAX_SIDE = 2**15  # pixels a side: 32768
MAX_PIXELS = 2**25  # pixels in all by default (33.5 M, e.g. 7680x4320); --max-pixels raises it
# CompressAI's rANS coder writes 32-bit words and ends with its 64-bit state, and a symbol
# costs at most 16 bits of probability plus 36 bits of bypass coding (escape, chunk count,
# eight 4-bit chunks of a 32-bit value), so a string holds 8..(8 + 8 * symbols) bytes.
_RANS_WORD, _RANS_FLUSH, _MAX_BYTES_PER_SYMBOL = 4, 8, 8
_PAD_SLACK = 1024  # zero bytes beyond one 64-bit word per symbol, for the decoder's last reads
_PREFIX = struct.Struct(">4sBI")  # magic, version, body length
_CRC = struct.Struct(">I")


class BitstreamError(ValueError):
    """A file that is not a complete, intact bitstream of this format (or of these weights)."""


@dataclasses.dataclass
class Bitstream:
    """The decoded header and payload of a file.

    Attributes:
        model: model name ("stf" or "cnn").
        quality: rate point 1..6, or None when unknown.
        metric: "mse", "ms-ssim" or None when unknown.
        fingerprint: `zoo.weights_fingerprint` of the encoding model.
        image_crc: `image_checksum` of the reconstruction the encoder decoded.
        height, width: size of the original image in pixels.
        strings: the model's byte strings for this image (`[y, z]`).

    Example:
        >>> from winattn_examples.stf.codec import Bitstream, pack, unpack
        >>> stream = Bitstream("stf", 3, "mse", 1234, 5678, 20, 30, [b"yy", b"z"])
        >>> unpack(pack(stream)) == stream
        True
    """

    model: str
    quality: int | None
    metric: str | None
    fingerprint: int
    image_crc: int
    height: int
    width: int
    strings: list[bytes]


def pack(stream: Bitstream) -> bytes:
    """Serialises `stream` to the file layout described in the module docstring."""
    name = stream.model.encode("ascii")
    body = bytearray(struct.pack(">B", len(name)) + name)
    body += struct.pack(
        ">BBIIIIB",
        stream.quality or 0,
        METRICS.index(stream.metric),
        stream.fingerprint,
        stream.image_crc,
        stream.height,
        stream.width,
        len(stream.strings),
    )
    for string in stream.strings:
        body += struct.pack(">I", len(string)) + string
    data = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(body)) + bytes(body)
    return data + _CRC.pack(zlib.crc32(data))


def unpack(data: bytes) -> Bitstream:
    """Parses and checks a file produced by `pack`.

    Raises:
        BitstreamError: for a foreign file, an unknown format version, a truncated file, a
            checksum mismatch or a malformed header.
    """
    if data[: len(MAGIC)] != MAGIC[: len(data)] or not data:
        raise BitstreamError(
            f"not a winattn STF bitstream: the file starts with {bytes(data[:4])!r}, "
            f"expected the magic bytes {MAGIC!r}."
        )
    if len(data) < _PREFIX.size:
        raise BitstreamError(
            f"truncated bitstream: {len(data)} bytes, shorter than the {_PREFIX.size}-byte prefix."
        )
    _, version, body_length = _PREFIX.unpack_from(data)
    if version != FORMAT_VERSION:
        raise BitstreamError(
            f"unsupported bitstream format version {version}; this decoder reads version "
            f"{FORMAT_VERSION}."
        )
    expected = _PREFIX.size + body_length + _CRC.size
    if len(data) < expected:
        raise BitstreamError(
            f"truncated bitstream: the header announces {expected} bytes, the file has "
            f"{len(data)}."
        )
    if len(data) > expected:
        raise BitstreamError(
            f"corrupted bitstream: {len(data) - expected} unexpected bytes after the announced "
            f"{expected}."
        )
    (crc,) = _CRC.unpack_from(data, expected - _CRC.size)
    if zlib.crc32(data[: expected - _CRC.size]) != crc:
        raise BitstreamError("corrupted bitstream: the CRC-32 checksum does not match the data.")
    return _parse_body(memoryview(data)[_PREFIX.size : expected - _CRC.size])


def _parse_body(body: memoryview) -> Bitstream:
    reader = _Reader(body)
    model = reader.take(reader.unpack(">B")[0]).decode("ascii", errors="replace")
    quality, metric_code, fingerprint, image_crc, height, width, count = reader.unpack(">BBIIIIB")
    strings = [reader.take(reader.unpack(">I")[0]) for _ in range(count)]
    if reader.offset != len(body):
        raise BitstreamError(f"malformed bitstream: {len(body) - reader.offset} stray body bytes.")
    if metric_code >= len(METRICS):
        raise BitstreamError(f"malformed bitstream: unknown metric code {metric_code}.")
    if model not in zoo.MODEL_CLASSES:
        raise BitstreamError(
            f"bitstream names model {model!r}; this decoder knows {sorted(zoo.MODEL_CLASSES)}."
        )
    if min(height, width) < 1 or max(height, width) > MAX_SIDE:
        raise BitstreamError(
            f"malformed bitstream: image size {height}x{width} (height x width); a side must be "
            f"1..{MAX_SIDE} pixels."
        )
    if count != STRING_COUNT:
        raise BitstreamError(
            f"malformed bitstream: {count} strings, expected {STRING_COUNT} (y, then z)."
        )
    return Bitstream(model, quality or None, METRICS[metric_code], fingerprint, image_crc, height,
                     width, strings)


class _Reader:
    """Bounds-checked reads from a byte buffer."""

    def __init__(self, data: memoryview):
        self.data, self.offset = data, 0

    def take(self, size: int) -> bytes:
        if self.offset + size > len(self.data):
            raise BitstreamError(
                f"malformed bitstream: a field of {size} bytes at offset {self.offset} runs past "
                f"the {len(self.data)}-byte body."
            )
        chunk = bytes(self.data[self.offset : self.offset + size])
        self.offset += size
        return chunk

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))


def symbol_counts(model: nn.Module, height: int, width: int) -> tuple[int, int]:
    """How many symbols the y and z strings of a `height x width` image code with `model`."""
    (h_y, w_y), (h_z, w_z) = model.latent_size(height, width)
    return model.latent_channels * h_y * w_y, model.entropy_bottleneck.channels * h_z * w_z


def check_decodable(
    stream: Bitstream, model: nn.Module, max_pixels: int = MAX_PIXELS
) -> tuple[int, int]:
    """Checks a parsed file's sizes against the limits and against its strings.

    Args:
        stream: the parsed file.
        model: the model that will decode it.
        max_pixels: the largest image (height x width) to decode.

    Returns:
        The symbol counts of the y and z strings (see `symbol_counts`).

    Raises:
        BitstreamError: for an image above `max_pixels`, or strings whose lengths no image of
            the header's size produces (a size field altered after encoding).
    """
    pixels = stream.height * stream.width
    if pixels > max_pixels:
        raise BitstreamError(
            f"the file announces a {stream.height}x{stream.width} image ({pixels} pixels), above "
            f"the limit of {max_pixels} pixels; if the image is genuine, raise the limit with "
            "--max-pixels (decoding needs memory in proportion)."
        )
    counts = symbol_counts(model, stream.height, stream.width)
    for name, string, symbols in zip(("y", "z"), stream.strings, counts):
        longest = _RANS_FLUSH + _MAX_BYTES_PER_SYMBOL * symbols
        if len(string) < _RANS_FLUSH or len(string) % _RANS_WORD or len(string) > longest:
            raise BitstreamError(
                f"malformed bitstream: the {name} string holds {len(string)} bytes, but a "
                f"{stream.height}x{stream.width} image codes {symbols} {name} symbols in a "
                f"multiple of {_RANS_WORD} bytes from {_RANS_FLUSH} to {longest}; the size "
                "fields do not belong to this stream."
            )
    return counts


def image_checksum(x: torch.Tensor) -> int:
    """CRC-32 of the 8-bit pixels of `x: (3, H, W)` in [0, 1], as written to an image file."""
    return zlib.crc32(to_uint8(x).cpu().contiguous().numpy().tobytes())


def encode_image(model: nn.Module, info: zoo.ModelInfo, x: torch.Tensor) -> bytes:
    """Compresses one image into the bytes of a file.

    The encoder also decodes its output once, to record the checksum of the reconstruction.

    Args:
        model: an updated model in eval mode (see `zoo.load_model`).
        info: its name and rate point, written to the header.
        x: (3, H, W) image in [0, 1].
    """
    param = next(model.parameters())
    out = model.compress(x[None].to(param.device, param.dtype))  # (1, 3, H, W)
    height, width = (int(s) for s in out["shape"])
    x_hat = model.decompress(out["strings"], out["shape"])["x_hat"][0]  # (3, H, W)
    strings = [group[0] for group in out["strings"]]  # one image: first string of each group
    stream = Bitstream(info.name, info.quality, info.metric, zoo.weights_fingerprint(model),
                       image_checksum(x_hat), height, width, strings)
    return pack(stream)


def decode_stream(
    model: nn.Module, info: zoo.ModelInfo, stream: Bitstream, max_pixels: int = MAX_PIXELS
) -> torch.Tensor:
    """Decompresses a parsed file with `model`.

    The sizes are checked first (`check_decodable`), and each string is padded with zero
    bytes (one 64-bit word per symbol, and 1 KiB) before it goes to the entropy decoder: a
    valid string is read exactly to its end, and a string whose size fields were altered
    runs into the padding instead of past the buffer.

    Returns:
        x_hat: (3, H, W) in [0, 1], at the original image size.

    Raises:
        BitstreamError: if `model` is not the model that encoded the file, the sizes are
            implausible, or `model` decodes other pixels than the encoder did.
    """
    if stream.model != info.name:
        raise BitstreamError(
            f"the file was encoded with model {stream.model!r} but the checkpoint holds "
            f"{info.name!r}; decode with the checkpoint used for encoding."
        )
    fingerprint = zoo.weights_fingerprint(model)
    if fingerprint != stream.fingerprint:
        raise BitstreamError(
            f"the file was encoded with other weights (fingerprint {stream.fingerprint:08x}, "
            f"checkpoint {fingerprint:08x}); decode with the checkpoint used for encoding."
        )
    counts = check_decodable(stream, model, max_pixels)
    strings = [[string + bytes(_MAX_BYTES_PER_SYMBOL * symbols + _PAD_SLACK)]  # one image a group
               for string, symbols in zip(stream.strings, counts)]
    x_hat = model.decompress(strings, (stream.height, stream.width))["x_hat"]  # (1, 3, H, W)
    if tuple(x_hat.shape) != (1, 3, stream.height, stream.width):
        raise BitstreamError(
            f"decoded image has shape {tuple(x_hat.shape)}, the header says "
            f"(1, 3, {stream.height}, {stream.width})."
        )
    checksum = image_checksum(x_hat[0])
    if checksum != stream.image_crc:
        raise BitstreamError(
            f"the decoded pixels differ from the encoder's reconstruction (checksum {checksum:08x}"
            f", expected {stream.image_crc:08x}): either the arithmetic here rounds differently "
            "than the encoder's (decode on the kind of device and software that encoded the "
            "file), or the file was altered in a way its CRC-32 does not show."
        )
    return x_hat[0]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    formatter = HelpFormatter
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=formatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("input", type=Path, help="the file to read")
        p.add_argument("-o", "--output", type=Path, required=True, help="the file to write")
        p.add_argument("--checkpoint", type=Path, required=True,
                       help="training checkpoint, weights export or official checkpoint")
        p.add_argument("--device", default="cpu", help="where the model runs")
        p.add_argument("-f", "--force", action="store_true", help="overwrite the output")

    enc = sub.add_parser("encode", help="image -> bitstream file", formatter_class=formatter)
    common(enc)
    enc.add_argument("-m", "--model", choices=sorted(zoo.MODEL_CLASSES),
                     help="expected model (default: the checkpoint's)")
    enc.add_argument("-q", "--quality", type=int, choices=range(1, 7),
                     help="rate point to record for an official checkpoint")
    enc.add_argument("--metric", choices=METRICS[1:],
                     help="metric to record for an official checkpoint")
    dec = sub.add_parser("decode", help="bitstream file -> PNG image", formatter_class=formatter)
    common(dec)
    dec.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                     help="refuse files announcing larger images (height x width)")
    info = sub.add_parser("info", help="print the header of a bitstream file",
                          formatter_class=formatter)
    info.add_argument("input", type=Path, help="the bitstream file")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> str:
    """Executes one command; returns the line to print."""
    if args.command == "info":
        stream = unpack(args.input.read_bytes())
        sizes = "+".join(str(len(s)) for s in stream.strings)
        return (f"{args.input}: model={stream.model} quality={stream.quality} "
                f"metric={stream.metric} size={stream.width}x{stream.height} "
                f"payload={sizes} bytes fingerprint={stream.fingerprint:08x}")
    refuse_existing([args.output], args.force, inputs=[args.input, args.checkpoint])
    if args.command == "encode":
        x = read_image(args.input)  # (3, H, W)
        model, info = zoo.load_model(args.checkpoint, args.model, args.quality, args.device)
        if args.metric is not None:
            info.metric = args.metric
        data = encode_image(model, info, x)
        atomic_write_bytes(args.output, data, overwrite=args.force)
        bpp = 8 * len(data) / (x.shape[1] * x.shape[2])
        return f"{args.output}: {len(data)} bytes, {bpp:.4f} bpp (header included)"
    image_format = image_format_for(args.output)
    stream = unpack(args.input.read_bytes())
    model, info = zoo.load_model(args.checkpoint, map_location=args.device)  # name checked below
    x_hat = decode_stream(model, info, stream, args.max_pixels)
    atomic_write(args.output, lambda tmp: write_image(x_hat, tmp, image_format),
                 overwrite=args.force)
    return f"{args.output}: {stream.width}x{stream.height}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        print(run(args))
    except (OSError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
