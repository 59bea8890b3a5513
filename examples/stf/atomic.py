# SPDX-License-Identifier: Apache-2.0
"""Atomic file writes: write a temporary file beside the target, then `os.replace` it.

A reader never sees a half-written checkpoint, bitstream or image, even if the writer is killed.

Example:
    >>> import tempfile, pathlib
    >>> from winattn_examples.stf.atomic import atomic_write_bytes
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "out.bin"
    >>> atomic_write_bytes(target, b"abc")
    >>> target.read_bytes()
    b'abc'
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[Path], None], *, overwrite: bool = True):
    """Calls `write(tmp_path)` and then moves `tmp_path` onto `path` in one step.

    Args:
        path: the final file.
        write: writes the complete file to the path it is given.
        overwrite: when False, an existing `path` is an error (checked before and after writing).

    Raises:
        FileExistsError: if `path` exists and `overwrite` is False.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{str(path)!r} already exists; pass --force to overwrite it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        tmp.chmod(0o666 & ~_umask())  # mkstemp makes the file private; use the usual mode
        if not overwrite and path.exists():
            raise FileExistsError(f"{str(path)!r} already exists; pass --force to overwrite it.")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes, *, overwrite: bool = True) -> None:
    """Writes `data` to `path` atomically (see `atomic_write`)."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data), overwrite=overwrite)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
