# SPDX-License-Identifier: Apache-2.0
"""A griffe extension for the API pages: reads a Google-style `Example:` heading as the
`Examples:` section (both are Google style; griffe knows only the plural and would render the
`>>>` lines as nested quotes)."""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Renames `Example:` section headings to `Examples:` in every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
