# SPDX-License-Identifier: Apache-2.0
"""The fine-tuning example's command line: the lambda follows --quality, and --out is never
overwritten without --force."""

from __future__ import annotations

import pytest

from examples import finetune_patched


@pytest.mark.parametrize(("quality", "lmbda"), [(1, 0.0018), (3, 0.0067), (4, 0.013), (8, 0.18)])
def test_lambda_is_compressais_mse_lambda_of_the_quality(quality, lmbda):
    args = finetune_patched.parse_args(["--dataset", "d", "--quality", str(quality)])
    assert args.lmbda == lmbda


def test_explicit_lambda_overrides_the_quality():
    args = finetune_patched.parse_args(["--dataset", "d", "--quality", "3", "--lmbda", "0.05"])
    assert args.lmbda == 0.05


def test_existing_out_is_refused_before_training(tmp_path, capsys):
    out = tmp_path / "model.pth.tar"
    out.write_bytes(b"keep")
    code = finetune_patched.main(["--dataset", str(tmp_path / "absent"), "--out", str(out)])
    assert (code, out.read_bytes()) == (1, b"keep")
    assert "--force" in capsys.readouterr().err


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        finetune_patched.parse_args(["--help"])
    assert "(default: bmshj2018-hyperprior)" in " ".join(capsys.readouterr().out.split())
