"""Seed a new venv with hard links to a package and its dependencies from this interpreter's env.

Usage: SOURCE_PYTHON .ci/seed_venv.py DEST_VENV PACKAGE

CI needs torch (about 6 GB with its CUDA libraries) in three venvs: the main one, CompressAI's
development line and the release check's clean one. Installing it three times fills the disk of
some CI machines. Hard links cost no space, and pip then sees the package as installed at the same
version, so its own resolver still decides everything else. Only files inside site-packages are
linked (console scripts carry the source venv's interpreter path). Where the two venvs are on
different filesystems nothing is linked, and pip installs the package as usual.
Prints what it linked; exits 0 either way.
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


def main() -> int:
    dest_venv, package = Path(sys.argv[1]), sys.argv[2]
    probe = "import sys, sysconfig; print(sys.version_info[:2] == %r); print(sysconfig.get_paths()['purelib'])"
    same_python, purelib = subprocess.check_output(
        [str(dest_venv / "bin" / "python"), "-c", probe % (sys.version_info[:2],)], text=True
    ).split("\n")[:2]
    dest = Path(purelib)
    if same_python != "True":
        print(
            f"seed_venv: {dest_venv} runs another Python than {sys.executable}; pip installs {package} instead"
        )
        return 0
    linked: list[Path] = []
    made: list[Path] = []
    dists = closure(package)
    try:
        for dist in dists:
            base = Path(dist.locate_file("")).resolve()
            for rel in dist.files or []:
                src = Path(dist.locate_file(rel)).resolve()
                if not src.is_file() or not src.is_relative_to(base):
                    continue  # console scripts, stale __pycache__ entries
                dst = dest / src.relative_to(base)
                missing = [
                    d
                    for d in (dst.parent, *dst.parent.parents)
                    if d.is_relative_to(dest) and not d.exists()
                ]
                for d in reversed(missing):
                    d.mkdir()
                    made.append(d)
                if not dst.exists():
                    os.link(src, dst)
                    linked.append(dst)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        for path in linked:
            path.unlink()
        for d in reversed(made):
            d.rmdir()
        print(
            f"seed_venv: no hard links from {base} to {dest} ({e.strerror}); pip installs {package} instead"
        )
        return 0
    names = ", ".join(f"{d.metadata['Name']} {d.version}" for d in dists)
    print(
        f"seed_venv: linked {len(linked)} files of {len(dists)} distributions into {dest}: {names}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
