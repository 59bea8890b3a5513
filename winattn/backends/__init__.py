# SPDX-License-Identifier: Apache-2.0
"""Backends of `window_attention` and how one is chosen.

The call, the backend interface, the registry and the selection live in
`winattn.backends.dispatcher` (all of its public names are re-exported here); each backend is
one module: `reference` (plain PyTorch, the specification), `sdpa`, `triton` and `exact`
(fixed point, bit-identical everywhere; opt-in, never picked by `"auto"`). This package
registers the built-in backends, in one place, in the order `"auto"` falls back through them.
"""

from __future__ import annotations

from winattn.backends import dispatcher
from winattn.backends.dispatcher import *  # noqa: F403  (the public names, listed in its __all__)
from winattn.backends.dispatcher import Backend, register_backend
from winattn.backends.exact import ExactBackend
from winattn.backends.reference import ReferenceBackend
from winattn.backends.sdpa import SdpaBackend
from winattn.backends.triton import TritonBackend

__all__ = [*dispatcher.__all__, "BUILTIN_BACKENDS"]

#: The backends that ship with winattn.
BUILTIN_BACKENDS: tuple[type[Backend], ...] = (
    ReferenceBackend, SdpaBackend, TritonBackend, ExactBackend
)

for _cls in BUILTIN_BACKENDS:
    register_backend(_cls)
