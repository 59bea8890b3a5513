# SPDX-License-Identifier: Apache-2.0
"""Integrations with host libraries, each imported lazily (`import winattn` imports none of them).

* `winattn.integrations.compressai`: rebuild patched CompressAI models from a state dict and
  register patched architectures with CompressAI's command-line tools.
* `winattn.integrations.swin`: the drop-in modules that replace timm's, torchvision's and the
  official STF code's Swin-v1 window attention.
"""
