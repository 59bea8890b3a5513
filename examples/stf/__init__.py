# SPDX-License-Identifier: Apache-2.0
"""STF and WACNN, the two codecs of the window-attention paper (Zou et al., CVPR 2022)."""
