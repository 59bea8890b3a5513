# SPDX-License-Identifier: Apache-2.0
"""WACNN's GDN, which runs by bands of rows when autograd does not record, against
CompressAI's `GDN` with the same parameters."""

import pytest
import torch
from compressai.layers import GDN

from examples.stf import models


@pytest.mark.parametrize("inverse", [False, True], ids=["gdn", "igdn"])
@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format], ids=["nhwc", "nchw"])
def test_banded_gdn_has_the_bits_of_compressai_gdn(monkeypatch, inverse, memory_format):
    monkeypatch.setattr(models, "GDN_BAND_BYTES", 2 * 8 * 13 * 4 * 3)  # three rows per band
    torch.manual_seed(0)
    ours, theirs = models._GDN(8, inverse=inverse), GDN(8, inverse=inverse)
    with torch.no_grad():
        theirs.gamma.add_(0.1 * torch.rand_like(theirs.gamma))
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 8, 10, 13).contiguous(memory_format=memory_format)  # 10 rows: 4 bands
    with torch.no_grad():
        banded, want = ours(x), theirs(x)
    assert banded.is_contiguous(memory_format=memory_format)
    assert torch.equal(banded, want)
    recorded = ours(x)  # autograd records: CompressAI's own path
    assert recorded.requires_grad
    assert torch.equal(recorded.detach(), want)


@pytest.mark.parametrize("inverse", [False, True], ids=["gdn", "igdn"])
def test_gdn_of_an_empty_map_fails_as_compressai_gdn_does(inverse):
    # no band arithmetic on zero-width rows: the same error as CompressAI's GDN
    x = torch.randn(1, 4, 3, 0)
    with torch.no_grad():
        with pytest.raises(RuntimeError) as theirs:
            GDN(4, inverse=inverse)(x)
        with pytest.raises(RuntimeError) as ours:
            models._GDN(4, inverse=inverse)(x)
    assert str(ours.value) == str(theirs.value)
