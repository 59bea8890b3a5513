# SPDX-License-Identifier: Apache-2.0
"""Command-line conventions shared by the example scripts: help that shows the defaults,
outputs that are never overwritten without `--force`, and output folders that one run at a
time writes into.

Example:
    >>> import argparse
    >>> from winattn_examples.stf.cli import HelpFormatter
    >>> parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    >>> _ = parser.add_argument("--lr", type=float, default=1e-4, help="learning rate")
    >>> "(default: 0.0001)" in parser.format_help()
    True
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from winattn.pretrained.images import check_output


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends `(default: ...)` to every option's help, except where there is nothing to show
    (a default of None or False, or a help text that already states it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def refuse_existing(
    paths: Iterable[str | Path | None], force: bool, inputs: Iterable[str | Path | None] = ()
) -> None:
    """Checks, before any work starts, that no output would replace an input or (without
    `force`) an existing file; `winattn.pretrained.images.check_output` for each output.

    Args:
        paths: the output files (None entries are skipped); missing folders are created later.
        force: when True, existing files other than the inputs may be overwritten.
        inputs: the files the command reads.

    Raises:
        FileExistsError: naming the first existing output and the fix.
        ValueError: an output is one of the inputs.
    """
    inputs = list(inputs)
    for path in paths:
        if path is not None:
            check_output(path, force=force, inputs=inputs, folder_must_exist=False)


LOCK_NAME = ".winattn.lock"
_WINDOWS_LOCK_BYTE = 4096  # the byte locked on Windows: past the PID, which stays readable


class FolderInUseError(OSError):
    """Another process holds the run lock of an output folder."""


def _lock_without_waiting(fd: int) -> bool:
    """Takes an exclusive OS lock on the open file `fd`; False if another process holds it.

    POSIX: `fcntl.flock` on the whole file. Windows (no `fcntl`): `msvcrt.locking` of one byte
    past the PID, since Windows locks are mandatory and the PID must stay readable. Either way
    the OS releases the lock when the file is closed or the process ends.
    """
    if os.name == "nt":
        import msvcrt  # Windows only

        os.lseek(fd, _WINDOWS_LOCK_BYTE, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl  # POSIX only

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextmanager
def folder_lock(folder: str | Path, option: str) -> Iterator[Path]:
    """Holds an exclusive OS lock on `folder` while a run writes into it (`flock`, or
    `msvcrt.locking` on Windows).

    The lock file `.winattn.lock` records the owner's PID. The OS releases the lock when the
    process ends, however it ends (a crash or `kill -9` included), so no stale lock is ever
    left to clean up.

    Args:
        folder: the output folder (created if missing).
        option: the command-line option that named it, for the message (`--save-dir`).

    Raises:
        FolderInUseError: another process holds the lock; the message names the folder and
            the owner's PID.
        NotADirectoryError: `folder` is an existing file.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{option} {str(folder)!r} is a file, not a folder.")
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    if not _lock_without_waiting(fd):
        os.lseek(fd, 0, os.SEEK_SET)
        owner = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise FolderInUseError(
            f"{option} {str(folder)!r} is in use by another run (PID {owner}); wait for it to "
            f"end, or pass another {option}."
        )
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield folder
    finally:
        os.close(fd)  # releases the lock


def check_run_folder(
    folder: str | Path, marker: str, own: Callable[[Path], bool], *, force: bool, option: str
) -> list[Path]:
    """Checks, changing nothing, that `claim_run_folder` would accept `folder`; a tool calls it
    before it takes the folder's lock, so that a refused folder is left exactly as it was.

    Returns:
        the entries `claim_run_folder` would delete with `force` (the tool's earlier files).

    Raises:
        NotADirectoryError, FileExistsError: as `claim_run_folder`.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(
            f"{option} {str(folder)!r} is a file, not a folder; pass a folder path."
        )
    ours = (marker, LOCK_NAME)
    entries = sorted(p for p in folder.iterdir() if p.name not in ours) if folder.is_dir() else []
    foreign = [p.name for p in entries if not own(p)]
    if force and foreign:
        raise FileExistsError(
            f"{option} {str(folder)!r} holds files this tool did not write "
            f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); nothing was "
            f"deleted. Pass another {option}, or move those files away."
        )
    if force and entries and not (folder / marker).exists():
        raise FileExistsError(
            f"{option} {str(folder)!r} has no {marker} marker, so it is not a folder this tool "
            f"made; --force only replaces the tool's own folders. Nothing was deleted; pass "
            f"another {option}."
        )
    return entries


def claim_run_folder(
    folder: str | Path, marker: str, own: Callable[[Path], bool], *, force: bool, option: str
) -> None:
    """Prepares the output folder of a tool that writes several files and may start over.

    The tool's folders carry a marker file of its own. `force` deletes what the tool wrote
    (the entries `own` accepts) and nothing else: a folder without the marker, or holding any
    entry `own` refuses, is refused with the names of those entries. Without `force` nothing
    is deleted, and the tool resumes or refuses by what its own files say. A tool that locks
    the folder calls `check_run_folder` before the lock and this function under it.

    Args:
        folder: the output folder (created, with the marker, if missing or empty).
        marker: the name of the tool's marker file.
        own: whether an entry of the folder is one the tool writes.
        force: delete the tool's earlier files, so the run starts over.
        option: the command-line option that named the folder, for the messages.

    Raises:
        NotADirectoryError: `folder` is an existing file.
        FileExistsError: with `force`, the folder has no marker or holds entries the tool did
            not write; nothing is deleted.
    """
    folder = Path(folder)
    entries = check_run_folder(folder, marker, own, force=force, option=option)
    if force:
        for path in entries:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / marker).touch()
