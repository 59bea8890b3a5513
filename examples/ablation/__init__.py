# SPDX-License-Identifier: Apache-2.0
"""Does window attention help? Train a CompressAI codec and its `patch_model` version alike, and compare."""
