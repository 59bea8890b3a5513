# SPDX-License-Identifier: Apache-2.0
"""CompressAI's development line ports STF and WACNN; with the same weights, `examples.stf.models`
must give the same outputs. A second numeric oracle, written independently of ours: it checks the
order of the context slices (which decoded slices feed which mean/scale/LRP transform) and
PatchMerging's 2x2 concatenation order, which random weights make visible.

The image size keeps every feature map a multiple of its window: CompressAI's STF port uses timm's
`SwinTransformerBlock`, which rolls before it pads, while the paper's code (and ours) pads first;
the two orders only agree when there is nothing to pad.

Both run in float64: the perturbed random weights give activations in the tens, where float32
rounding alone reaches 1e-5, and the check is about the architecture, not the rounding.
"""

from __future__ import annotations

import re

import pytest
import torch

pytest.importorskip(
    "compressai.layers.attn",
    reason="needs CompressAI's development line (compressai-temp); run .ci/compressai_dev.sh",
)

from compressai.models.stf import WACNN as DevWACNN  # noqa: E402
from compressai.models.stf import SymmetricalTransFormer as DevSTF  # noqa: E402

from examples.stf.models import WACNN, SymmetricalTransFormer  # noqa: E402

ATOL = 1e-5

#: CompressAI-dev name -> our name. Its entropy model is a container (`latent_codec`) holding the
#: hyper transforms, the bottleneck and one context head and one leaf per slice; ours keeps the
#: official flat names (`h_a`, `cc_mean_transforms.k`, `lrp_transforms.k`, ...).
_RENAMES = (
    (r"^latent_codec\.h_a\.", "h_a."),
    (r"^latent_codec\.h_s\.h_(mean|scale)_s\.", r"h_\1_s."),
    (r"^latent_codec\.y\.channel_context\.y(\d+)\.(mean|scale)_cc\.", r"cc_\2_transforms.\1."),
    (r"^latent_codec\.y\.latent_codec\.y(\d+)\.lrp_transform\.", r"lrp_transforms.\1."),
    (r"^latent_codec\.z\.entropy_bottleneck\.", "entropy_bottleneck."),
    (r"\.conv_b\.0\.attn\.attn\.", ".conv_b.0.attn."),  # WACNN: WMSA's inner WindowAttention
)
# buffers ours computes (relative_position_index) or keeps once for all slices
_DROPPED = re.compile(r"relative_position_index$|^latent_codec\.y\.latent_codec\.y\d+\.gaussian_conditional\.")


def convert(dev_state: dict[str, torch.Tensor], ours: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The dev model's weights in our layout; our own values only for the Gaussian conditional's
    buffers, which hold no learned weight."""
    converted = {}
    for key, value in dev_state.items():
        if _DROPPED.search(key):
            continue
        for pattern, replacement in _RENAMES:
            key = re.sub(pattern, replacement, key)
        converted[key] = value
    own = {k: v for k, v in ours.state_dict().items() if k.startswith("gaussian_conditional.")}
    assert not set(own) & set(converted)
    return {**converted, **own}


def _perturb(model: torch.nn.Module) -> None:
    """Moves every weight off its initial value (LayerNorm and GDN included), leaving the
    entropy bottleneck alone so its density stays valid."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "entropy_bottleneck" not in name:
                p.add_(0.02 * torch.randn(p.shape, generator=g))


def _assert_same_outputs(dev: torch.nn.Module, ours: torch.nn.Module) -> None:
    x = torch.rand(2, 3, 64, 128, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        want, got = dev.double().eval()(x), ours.double().eval()(x)
    torch.testing.assert_close(got["x_hat"], want["x_hat"], atol=ATOL, rtol=0)
    assert set(got["likelihoods"]) == set(want["likelihoods"]) == {"y", "z"}
    for key in ("y", "z"):
        # ours runs the entropy model in float32 whatever the transforms' dtype
        torch.testing.assert_close(got["likelihoods"][key].double(), want["likelihoods"][key], atol=ATOL, rtol=0)


def _loaded(dev: torch.nn.Module, ours: torch.nn.Module) -> torch.nn.Module:
    _perturb(dev)
    ours.load_state_dict(convert(dev.state_dict(), ours), strict=True)
    return ours


def test_stf_matches_compressai_dev_port():
    config = {"embed_dim": 16, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 2, 4), "num_slices": 4, "max_support_slices": 2}
    torch.manual_seed(0)
    dev = DevSTF(**config)
    _assert_same_outputs(dev, _loaded(dev, SymmetricalTransFormer(**config)))


def test_wacnn_matches_compressai_dev_port():
    # the paper's widths: the dev port's hyper transforms keep 288/256/224 whatever N and M are
    config = {"N": 192, "M": 320, "num_slices": 10, "max_support_slices": 5}
    torch.manual_seed(0)
    dev = DevWACNN(**config)
    _assert_same_outputs(dev, _loaded(dev, WACNN(**config)))
