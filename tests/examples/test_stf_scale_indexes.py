# SPDX-License-Identifier: Apache-2.0
"""`scale_indexes` against CompressAI's `GaussianConditional.build_indexes`."""

import pytest
import torch
from compressai.entropy_models import GaussianConditional

from examples.stf.entropy import scale_indexes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_scale_indexes_equal_compressai_build_indexes(dtype):
    conditional = GaussianConditional(None)
    conditional.update_scale_table(torch.exp(torch.linspace(torch.log(torch.tensor(0.11)), torch.log(torch.tensor(256.0)), 64)))
    torch.manual_seed(0)
    scales = torch.exp(torch.empty(2, 5, 7, 9).uniform_(-4, 6))
    table = conditional.scale_table
    scales.view(-1)[: table.numel()] = table  # scales exactly on the table's entries
    scales.view(-1)[table.numel()] = 0.0  # below the lower bound
    scales = scales.to(dtype).contiguous(memory_format=torch.channels_last)
    got = scale_indexes(conditional, scales)
    want = conditional.build_indexes(scales)
    assert got.dtype == want.dtype == torch.int32
    assert torch.equal(got, want)
    assert got.flatten().tolist() == want.flatten().tolist()


def test_scale_indexes_before_update_names_the_fix():
    with pytest.raises(ValueError, match=r"scale table is empty.*model\.update\(\)"):
        scale_indexes(GaussianConditional(None), torch.rand(1, 2, 3, 4))
