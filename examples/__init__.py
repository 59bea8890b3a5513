# SPDX-License-Identifier: Apache-2.0
"""Complete models built from winattn's public parts (run from the repository root)."""
