# SPDX-License-Identifier: Apache-2.0
"""patch_model on every CompressAI 1.2.8 image architecture: training, update, bitstreams,
checkpoints, and bad input. Models are tiny (N=32) and images 64x64 so the file runs in CI."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

compressai = pytest.importorskip("compressai")

from compressai.models import (  # noqa: E402
    Cheng2020Anchor,
    Cheng2020Attention,
    FactorizedPrior,
    FactorizedPriorReLU,
    JointAutoregressiveHierarchicalPriors,
    MeanScaleHyperprior,
    ScaleHyperprior,
)
from compressai.models.sensetime import (  # noqa: E402
    Cheng2020AnchorCheckerboard,
    Elic2022Chandelier,
    Elic2022Official,
)
from compressai.models.vbr import (  # noqa: E402
    JointAutoregressiveHierarchicalPriorsVbr,
    MeanScaleHyperpriorVbr,
    ScaleHyperpriorVbr,
)

from winattn import WindowAttentionBlock, patch_model  # noqa: E402
from winattn.integrations.compressai import from_state_dict  # noqa: E402
from winattn.modules import GatedWindowAttentionBlock  # noqa: E402

# name in CompressAI's registry -> tiny constructor
ARCHS = {
    "bmshj2018-factorized": lambda: FactorizedPrior(32, 48),
    "bmshj2018-factorized-relu": lambda: FactorizedPriorReLU(32, 48),
    "bmshj2018-hyperprior": lambda: ScaleHyperprior(32, 48),
    "mbt2018-mean": lambda: MeanScaleHyperprior(32, 48),
    "mbt2018": lambda: JointAutoregressiveHierarchicalPriors(32, 48),
    "cheng2020-anchor": lambda: Cheng2020Anchor(32),
    "cheng2020-attn": lambda: Cheng2020Attention(32),
    "bmshj2018-hyperprior-vbr": lambda: ScaleHyperpriorVbr(32, 48),
    "mbt2018-mean-vbr": lambda: MeanScaleHyperpriorVbr(32, 48),
    "mbt2018-vbr": lambda: JointAutoregressiveHierarchicalPriorsVbr(32, 48),
    "cheng2020-anchor-checkerboard": lambda: Cheng2020AnchorCheckerboard(32),
    "elic2022-official": lambda: Elic2022Official(32, 160),
    "elic2022-chandelier": lambda: Elic2022Chandelier(32, 160),
}
REPLACED = {"cheng2020-attn", "elic2022-official", "elic2022-chandelier"}
# Upstream's eval forward rounds y without the means in these autoregressive models, so even
# unpatched their decoded image differs from the forward's x_hat (by up to ~0.04 here).
FORWARD_NOT_DECODE = {"mbt2018", "cheng2020-anchor", "cheng2020-attn"}


@functools.cache
def _prototype(arch: str) -> nn.Module:
    torch.manual_seed(0)
    return ARCHS[arch]()


def _build(arch: str) -> nn.Module:
    """A fresh copy of the architecture's (cached) randomly initialised model."""
    return copy.deepcopy(_prototype(arch))


def _image(seed: int = 1, size: tuple[int, int] = (64, 64)) -> torch.Tensor:
    return torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(seed))


def _new_keys(model: nn.Module) -> set[str]:
    return {
        k
        for k in model.state_dict()
        if ".winattn_stage2." in k or ".winattn_latent." in k
    }


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_auto_mode_inserts_or_replaces_four_blocks(arch):
    model = patch_model(_build(arch))
    report = model.winattn_report
    assert report.actions == (["replace"] if arch in REPLACED else ["insert"])
    assert [(e.window_size, e.shift_size) for e in report.entries] == [
        ((8, 8), (4, 4)),
        ((4, 4), (2, 2)),
        ((4, 4), (2, 2)),
        ((8, 8), (4, 4)),
    ]


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_training_step_reaches_new_blocks(arch):
    model = patch_model(_build(arch), init="paper").train()
    out = model(_image())
    bpp = sum(-torch.log2(v).sum() for v in out["likelihoods"].values()) / (64 * 64)
    loss = bpp + 100 * torch.mean((out["x_hat"] - _image()) ** 2)
    loss.backward()
    new = [m for m in model.modules() if isinstance(m, WindowAttentionBlock)]
    assert len(new) == 4
    for block in new:
        grads = [p.grad for p in block.parameters()]
        assert all(g is not None for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)
    assert torch.isfinite(model.aux_loss())


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_decoded_image_matches_eval_forward(arch):
    model = patch_model(_build(arch), init="paper").eval()
    model.update(force=True)
    x = _image()
    with torch.no_grad():
        enc = model.compress(x)
        dec = model.decompress(enc["strings"], enc["shape"])
        ref = model(x)["x_hat"].clamp(0, 1)
    assert dec["x_hat"].shape == x.shape
    if arch in FORWARD_NOT_DECODE:
        # the decoder's own output for the decoded latent, bit for bit, run twice
        again = model.decompress(enc["strings"], enc["shape"])["x_hat"]
        assert torch.equal(dec["x_hat"], again)
    else:
        torch.testing.assert_close(dec["x_hat"], ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", sorted(set(ARCHS) - REPLACED | {"cheng2020-attn"}))
def test_identity_insert_keeps_bitstream_byte_identical(arch):
    base = _build(arch).eval()
    base.update(force=True)
    patched = patch_model(copy.deepcopy(base), mode="insert", init="identity")
    patched.update(force=True)
    x = _image(seed=3)
    with torch.no_grad():
        a, b = base.compress(x), patched.compress(x)
        da = base.decompress(a["strings"], a["shape"])["x_hat"]
        db = patched.decompress(b["strings"], b["shape"])["x_hat"]
    assert b["strings"] == a["strings"]
    assert torch.equal(da, db)


@pytest.mark.parametrize("arch", sorted(set(ARCHS) - REPLACED))
def test_pretrained_weights_load_with_only_new_keys_missing(arch):
    pretrained = _build(arch).state_dict()
    model = patch_model(_build(arch))
    missing, unexpected = model.load_state_dict(pretrained, strict=False)
    assert unexpected == []
    assert set(missing) == _new_keys(model) != set()


@pytest.mark.parametrize("arch", ["bmshj2018-hyperprior", "cheng2020-attn"])
def test_state_dict_loads_strictly_into_fresh_patched_model(arch):
    state = patch_model(_build(arch)).state_dict()
    fresh = patch_model(_build(arch))
    fresh.load_state_dict(state, strict=True)
    assert all(torch.equal(v, state[k]) for k, v in fresh.state_dict().items())


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_from_state_dict_rebuilds_updated_patched_model(arch):
    model = patch_model(_build(arch), num_heads=4).eval()
    model.update(force=True)
    state = model.state_dict()
    rebuilt = from_state_dict(arch, state)
    assert rebuilt.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in rebuilt.state_dict().items())


def test_window_size_argument_sets_every_block_and_survives_rebuild():
    model = patch_model(ScaleHyperprior(32, 48), window_size=6)
    assert {e.window_size for e in model.winattn_report.entries} == {(6, 6)}
    rebuilt = from_state_dict("bmshj2018-hyperprior", model.state_dict())
    assert {e.shift_size for e in rebuilt.winattn_report.entries} == {(3, 3)}


def test_identity_init_block_is_exact_identity():
    block = GatedWindowAttentionBlock(32, num_heads=4, window_size=8, shift_size=4)
    x = torch.randn(2, 32, 11, 19)
    assert torch.equal(block(x), x)


def test_replace_with_identity_keeps_attention_block_convolutions():
    torch.manual_seed(0)
    model = Cheng2020Attention(32)
    before = {k: v.clone() for k, v in model.g_a[3].state_dict().items()}
    patch_model(model)
    after = model.g_a._modules["3"].state_dict()
    assert torch.equal(after["conv_a.1.conv.2.weight"], before["conv_a.1.conv.2.weight"])
    assert torch.equal(after["conv_b.1.conv.0.weight"], before["conv_b.0.conv.0.weight"])
    assert torch.equal(after["conv_b.4.weight"], before["conv_b.3.weight"])
    assert not after["conv_b.0.attn.proj.weight"].any()


def test_patched_model_runs_on_sizes_that_are_not_window_multiples():
    base = FactorizedPrior(32, 48).eval()
    model = patch_model(copy.deepcopy(base), init="paper")
    x = _image(size=(40, 72))  # features 10x18 and 3x5: windows 8 and 4 need padding
    with torch.no_grad():
        assert model(x)["x_hat"].shape == base(x)["x_hat"].shape


def test_original_sequential_keys_are_kept():
    model = ScaleHyperprior(32, 48)
    before = list(model.state_dict())
    patch_model(model)
    after = list(model.state_dict())
    assert [k for k in after if "winattn_" not in k] == before
    assert not any("downsample" in k or k.startswith("module.") for k in after)


def test_patching_twice_is_a_noop_noted_in_report():
    model = patch_model(ScaleHyperprior(32, 48))
    keys = list(model.state_dict())
    patch_model(model)
    assert list(model.state_dict()) == keys
    assert "already patched" in str(model.winattn_report)


def test_report_prints_every_path():
    text = str(patch_model(ScaleHyperprior(32, 48)).winattn_report)
    for path in ("g_a.winattn_stage2", "g_a.winattn_latent", "g_s.winattn_latent", "g_s.winattn_stage2"):
        assert path in text


def test_non_module_raises_type_error_naming_it():
    with pytest.raises(TypeError, match="model=dict"):
        patch_model({"g_a": None})


def test_unknown_mode_raises():
    with pytest.raises(ValueError, match="mode='fuse'"):
        patch_model(ScaleHyperprior(32, 48), mode="fuse")


def test_unknown_init_raises():
    with pytest.raises(ValueError, match="init='zeros'"):
        patch_model(ScaleHyperprior(32, 48), init="zeros")


@pytest.mark.parametrize("window_size", [0, -4, (8, 8, 8), "8", 2.5])
def test_window_size_that_does_not_fit_raises(window_size):
    with pytest.raises((TypeError, ValueError), match="window_size="):
        patch_model(ScaleHyperprior(32, 48), window_size=window_size)


def test_num_heads_not_dividing_channels_raises_naming_path():
    with pytest.raises(ValueError, match="num_heads=7 .*g_a.winattn_stage2"):
        patch_model(ScaleHyperprior(32, 48), num_heads=7)


def test_model_without_anything_to_patch_says_what_was_looked_for():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2))
    with pytest.raises(ValueError, match="Looked for.*transforms.*Found.*fewer than 4 strided"):
        patch_model(model)


def test_forced_swap_without_swin_modules_raises():
    with pytest.raises(ValueError, match="mode='swap'.*Swin-v1"):
        patch_model(ScaleHyperprior(32, 48), mode="swap")


def test_unseen_cnn_codec_gets_blocks_after_second_stage_and_on_latent():
    def stage(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.LeakyReLU()]

    encoder = nn.Sequential(*stage(3, 16), *stage(16, 16), *stage(16, 16), *stage(16, 24))
    patch_model(encoder)
    assert list(encoder._modules) == ["0", "1", "2", "3", "winattn_stage2", "4", "5", "6", "7", "winattn_latent"]


def _ssf() -> nn.Module:
    from compressai.models.video import ScaleSpaceFlow

    torch.manual_seed(0)
    return ScaleSpaceFlow()


def _frames() -> list[torch.Tensor]:
    # ScaleSpaceFlow needs sides divisible by 128 (4 strides, then 3 in its hyperprior)
    return [_image(seed=s, size=(128, 128)) for s in (11, 12)]


def test_ssf_training_step_reaches_image_motion_and_residual_pairs():
    model = patch_model(_ssf(), init="paper").train()
    paths = [e.path.split(".")[0] for e in model.winattn_report.entries]
    assert sorted(set(paths)) == sorted(
        f"{kind}_{part}" for kind in ("img", "motion", "res") for part in ("encoder", "decoder")
    )
    out = model(_frames())
    loss = sum(-torch.log2(v).sum() for lk in out["likelihoods"] for d in lk.values() for v in d.values())
    loss = loss + sum(torch.mean((a - b) ** 2) for a, b in zip(out["x_hat"], _frames()))
    loss.backward()
    for block in (m for m in model.modules() if isinstance(m, GatedWindowAttentionBlock)):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())
    assert all(torch.isfinite(a) for a in model.aux_loss())


def test_ssf_identity_patch_keeps_bitstreams_and_decodes_forward_output():
    base = _ssf().eval()
    base.update(force=True)
    model = patch_model(copy.deepcopy(base))
    model.update(force=True)
    with torch.no_grad():
        strings, shapes = model.compress(_frames())
        decoded = model.decompress(strings, shapes)
        forward = model(_frames())["x_hat"]
        assert strings == base.compress(_frames())[0]
    for dec, ref in zip(decoded, forward):
        torch.testing.assert_close(dec, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("x", "error", "pattern"),
    [
        (torch.zeros(1, 32, 8, 8, dtype=torch.int64), TypeError, r"floating-point.*torch\.int64"),
        (torch.zeros(1, 32, 0, 8), ValueError, r"empty spatial size"),
        (torch.zeros(1, 16, 8, 8), ValueError, r"16 channels.*dim=32"),
    ],
)
def test_gated_block_rejects_bad_input_naming_it(x, error, pattern):
    block = GatedWindowAttentionBlock(32, num_heads=4, window_size=8, shift_size=4)
    with pytest.raises(error, match=pattern):
        block(x)
