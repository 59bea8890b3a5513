# SPDX-License-Identifier: Apache-2.0
"""Small helpers shared across the package (not public API)."""

from __future__ import annotations

from collections.abc import Sequence

Pair = tuple[int, int]


def to_pair(value: int | Sequence[int], name: str, *, allow_zero: bool = False) -> Pair:
    """Normalises an int or an `(h, w)` pair, checking each entry.

    Raises:
        TypeError: if `value` is not an int or a pair of ints.
        ValueError: if an entry is below 1 (below 0 with `allow_zero`).
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or an (h, w) tuple of ints, got {name}={value!r}.")
    if isinstance(value, int):
        pair = (value, value)
    elif isinstance(value, Sequence) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or an (h, w) tuple of ints, got {name}={value!r}.")
    low = 0 if allow_zero else 1
    if min(pair) < low:
        raise ValueError(f"{name} must be >= {low} on each axis, got {name}={value!r}.")
    return pair
