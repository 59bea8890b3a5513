# SPDX-License-Identifier: Apache-2.0
"""Backends of `window_attention` and how one is chosen.

The call, the backend interface, the registry and the selection live in
`winattn.backends.dispatcher` (re-exported here); each backend is one module: `reference`
(plain PyTorch, the specification), `sdpa` and `triton`. This package registers the built-in
backends, in one place, in the order `"auto"` falls back through them.
"""

from __future__ import annotations

from winattn.backends.dispatcher import (
    AUTO,
    AUTO_ORDER,
    ENV_VAR,
    AttentionCall,
    Backend,
    BackendUnavailableError,
    available_backends,
    backend_reasons,
    check_backend_name,
    dispatch,
    explain,
    get_backend,
    register_backend,
    registered_backends,
    select_backend,
    set_backend,
    use_backend,
)
from winattn.backends.reference import ReferenceBackend
from winattn.backends.sdpa import SdpaBackend
from winattn.backends.triton import TritonBackend

__all__ = [
    "AUTO",
    "AUTO_ORDER",
    "ENV_VAR",
    "AttentionCall",
    "Backend",
    "BackendUnavailableError",
    "BUILTIN_BACKENDS",
    "available_backends",
    "backend_reasons",
    "check_backend_name",
    "dispatch",
    "explain",
    "get_backend",
    "register_backend",
    "registered_backends",
    "select_backend",
    "set_backend",
    "use_backend",
]

#: The backends that ship with winattn.
BUILTIN_BACKENDS: tuple[type[Backend], ...] = (ReferenceBackend, SdpaBackend, TritonBackend)

for _cls in BUILTIN_BACKENDS:
    register_backend(_cls)
