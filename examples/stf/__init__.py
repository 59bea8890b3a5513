# SPDX-License-Identifier: Apache-2.0
"""STF and WACNN, the two codecs of the window-attention paper (Zou et al., CVPR 2022)."""

from winattn.integrations.compressai import import_compressai

import_compressai()  # the models build on CompressAI; import it without torch's warning about it
