# SPDX-License-Identifier: Apache-2.0
"""Whether a codec's files decode in another environment (instruction set, threads, PyTorch)."""
