# SPDX-License-Identifier: Apache-2.0
"""Complete models built from winattn's public parts.

In a checkout this folder is the package `examples`; installed (`pip install ".[examples]"`) it
is the package `winattn_examples`, a name that does not clash with the top-level `examples`
package that the CompressAI wheel installs. Its modules import each other relatively, so both
names work.
"""
