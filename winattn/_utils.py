# SPDX-License-Identifier: Apache-2.0
"""Small helpers shared across the package (not public API): the one integer check and the one
compile-safe cache."""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

Pair = tuple[int, int]

T = TypeVar("T")


def as_int(value: object) -> int | None:
    """`value` as a Python int if it is an integer (a Python int, or a NumPy or 0-dim torch
    integer scalar), else None. Booleans are not integers here."""
    if type(value) is int:  # the common case (bool is a subclass, not this type)
        return value
    if isinstance(value, bool) or str(getattr(value, "dtype", "")) in ("bool", "torch.bool"):
        return None
    if isinstance(value, torch.Tensor) and (value.dim() or value.is_floating_point()):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def positive_int(value: object, name: str, *, allow_zero: bool = False) -> int:
    """Checks that `value` is an integer >= 1 (>= 0 with `allow_zero`) and returns it as an int.

    Raises:
        ValueError: naming `name` and the value, if it is not.
    """
    as_python = as_int(value)
    low = 0 if allow_zero else 1
    if as_python is None or as_python < low:
        kind = "a non-negative int" if allow_zero else "a positive int"
        raise ValueError(f"{name} must be {kind}, got {name}={value!r}.")
    return as_python


def to_pair(value: int | Sequence[int], name: str, *, allow_zero: bool = False) -> Pair:
    """Normalises an int or an `(h, w)` pair, checking each entry.

    NumPy and 0-dim torch integer scalars count as ints.

    Raises:
        TypeError: if `value` is not an int or a pair of ints.
        ValueError: if an entry is below 1 (below 0 with `allow_zero`).
    """
    low = 0 if allow_zero else 1
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        if value[0] >= low and value[1] >= low:  # the common case, checked without conversions
            return value
    single = as_int(value)
    if single is not None:
        pair = (single, single)
    elif (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 2
        and all(as_int(v) is not None for v in value)
    ):
        pair = (as_int(value[0]), as_int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or an (h, w) tuple of ints, got {name}={value!r}.")
    if min(pair) < low:
        raise ValueError(f"{name} must be >= {low} on each axis, got {name}={value!r}.")
    return pair


def compile_safe_cache(maxsize: int) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorator: an LRU cache of a function that builds tensors from hashable arguments.

    Outside `torch.compile` the result is cached, built with inference mode off (a cached
    tensor outlives the call: it must never be an inference tensor, which autograd could not
    save for a later backward). Inside `torch.compile` the function runs uncached, so tracing
    never sees a Python-side cache. The wrapper keeps the cache's `cache_clear`.
    """

    def decorate(build: Callable[..., T]) -> Callable[..., T]:
        @functools.lru_cache(maxsize=maxsize)
        def cached(*args: object) -> T:
            with torch.inference_mode(False):
                return build(*args)

        @functools.wraps(build)
        def wrapper(*args: object) -> T:
            if torch.compiler.is_compiling():
                return build(*args)
            return cached(*args)

        wrapper.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
        return wrapper

    return decorate
