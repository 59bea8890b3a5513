# SPDX-License-Identifier: Apache-2.0
"""Integrations with host libraries, each imported lazily (`import winattn` imports none of them).

* `winattn.integrations.compressai`: rebuild patched CompressAI models from a state dict and
  register patched architectures with CompressAI's command-line tools.
"""
