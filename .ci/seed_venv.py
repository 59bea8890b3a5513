"""Seed a new venv with hard links to a package and its dependencies from this interpreter's env.

Usage: SOURCE_PYTHON .ci/seed_venv.py DEST_VENV PACKAGE

CI needs torch (about 6 GB with its CUDA libraries) in three venvs: the main one, CompressAI's
development line and the release check's clean one. Installing it three times fills the disk of
some CI machines. Hard links cost no space, and pip then sees the package as installed at the same
version, so its own resolver still decides everything else. Only files inside site-packages are
linked (console scripts carry the source venv's interpreter path), and only of distributions the
new venv does not hold yet. Where the two venvs are on different filesystems, or the source has
no such package, nothing is linked and pip installs the package as usual; whatever stops the
linking half-way, the links made are removed. Prints what it did; exits 0 unless an
unexpected error is raised.
"""

from __future__ import annotations

import errno
import importlib.metadata as md
import os
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def closure(name: str) -> list[md.Distribution]:
    """``name`` and every distribution it requires here, extras and markers followed."""
    seen: dict[str, md.Distribution] = {}
    extras_seen: dict[str, set[str]] = {}
    todo: list[tuple[str, set[str]]] = [(name, set())]
    while todo:
        raw, extras = todo.pop()
        key = canonicalize_name(raw)
        if key in seen and extras <= extras_seen[key]:
            continue
        dist = seen.setdefault(key, md.distribution(key))
        extras_seen.setdefault(key, set()).update(extras)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in {"", *extras}):
                todo.append((req.name, set(req.extras)))
    return list(seen.values())


def _plan(dists: list[md.Distribution], dest: Path) -> list[tuple[Path, Path]]:
    """(source, destination) of every file to link, the `.dist-info` files last: pip counts a
    distribution as installed only once they are there."""
    files, metadata = [], []
    for dist in dists:
        base = Path(dist.locate_file("")).resolve()
        for rel in dist.files or []:
            src = Path(dist.locate_file(rel)).resolve()
            if not src.is_file() or not src.is_relative_to(base):
                continue  # console scripts, stale __pycache__ entries
            rel_path = src.relative_to(base)
            in_metadata = rel_path.parts[0].endswith(".dist-info")
            (metadata if in_metadata else files).append((src, dest / rel_path))
    return files + metadata


def main() -> int:
    dest_venv, package = Path(sys.argv[1]), sys.argv[2]
    probe = "import sys, sysconfig; print(sys.version_info[:2] == %r); print(sysconfig.get_paths()['purelib'])"
    same_python, purelib = subprocess.check_output(
        [str(dest_venv / "bin" / "python"), "-c", probe % (sys.version_info[:2],)], text=True
    ).split("\n")[:2]
    dest = Path(purelib)
    if same_python != "True":
        print(f"seed_venv: {dest_venv} runs another Python than {sys.executable}; nothing linked")
        return 0
    try:
        wanted = closure(package)
    except md.PackageNotFoundError as e:
        print(f"seed_venv: {sys.executable} has no {e.name}; nothing linked")
        return 0
    # never mix two versions of one distribution (a new venv's own setuptools, say): pip
    # decides what to do with those
    present = {canonicalize_name(d.metadata["Name"]) for d in md.distributions(path=[str(dest)])}
    dists = [d for d in wanted if canonicalize_name(d.metadata["Name"]) not in present]
    linked: list[Path] = []
    made: list[Path] = []
    try:
        for src, dst in _plan(dists, dest):
            missing = [
                d
                for d in (dst.parent, *dst.parent.parents)
                if d.is_relative_to(dest) and not d.exists()
            ]
            for d in reversed(missing):
                d.mkdir()
                made.append(d)
            if not dst.exists():  # namespace files shared by several distributions
                os.link(src, dst)
                linked.append(dst)
    except BaseException as e:  # leave the venv as it was, whatever stopped the linking
        for path in linked:
            path.unlink()
        for d in reversed(made):
            d.rmdir()
        if isinstance(e, OSError) and e.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            print(f"seed_venv: no hard links into {dest} ({e.strerror}); nothing linked")
            return 0
        raise
    names = ", ".join(f"{d.metadata['Name']} {d.version}" for d in dists)
    skipped = sorted({canonicalize_name(d.metadata["Name"]) for d in wanted} & present)
    print(
        f"seed_venv: linked {len(linked)} files of {len(dists)} distributions into {dest}"
        f" (already there: {', '.join(skipped) or 'none'}): {names}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
