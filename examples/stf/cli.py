# SPDX-License-Identifier: Apache-2.0
"""Command-line conventions shared by the STF scripts: help that shows the defaults, and
outputs that are never overwritten without `--force`.

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
from collections.abc import Iterable
from pathlib import Path


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends `(default: ...)` to every option's help, except where there is nothing to show
    (a default of None or False, or a help text that already states it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def refuse_existing(paths: Iterable[str | Path | None], force: bool) -> None:
    """Checks, before any work starts, that no output would replace an existing file.

    Args:
        paths: the output files (None entries are skipped).
        force: when True, existing files may be overwritten and nothing is checked.

    Raises:
        FileExistsError: naming the first existing output and the fix.
    """
    if force:
        return
    for path in paths:
        if path is not None and Path(path).exists():
            raise FileExistsError(f"{str(path)!r} already exists; pass --force to overwrite it.")
