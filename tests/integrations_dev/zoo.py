# SPDX-License-Identifier: Apache-2.0
"""Every image model of CompressAI's development zoo at a small configuration, what `patch_model`
should do with it, and a structural scan for its window-attention hosts.

Windows are chosen so that the feature maps of a 64x128 image need padding (STF's 3, TCM's and
DCAE's 6): the swapped blocks must reproduce the host's pad and crop, not only its windows.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

#: An input every model of the table accepts: both sides multiples of 64 (the hyperprior's
#: stride), not square, so that row and column orders cannot be confused.
IMAGE_SIZE = (64, 128)

_DICTIONARY = {
    "N": 32,
    "M": 40,
    "hyper_channels": 32,
    "num_slices": 5,
    "feature_dims": (16, 24, 32),
    "block_num": (1, 2, 2),
    "head_dim": (8,) * 6,
    "dict_num": 16,
    "dict_head_num": 2,
    "hyper_head_dim": 8,
    "window_size": 6,
    "hyper_window_size": 3,
}


@dataclass(frozen=True)
class ZooModel:
    """One zoo entry.

    Attributes:
        name: its name in `compressai.zoo.image_models`.
        target: `"module:Class"`.
        kwargs: a small configuration.
        expect: what `patch_model(model)` (auto) must do: `"swap"` (every window-attention host
            swapped whole), `"refuse"` (raise and leave the model unchanged: attention that
            winattn cannot swap), `"swap-or-refuse"`, or `"insert-or-replace"` (a CNN codec).
        attention: class names of the attention the model has; a refusal must name one of them.
    """

    name: str
    target: str
    kwargs: dict[str, Any]
    expect: str
    attention: tuple[str, ...] = field(default=())

    def build(self, seed: int = 0) -> nn.Module:
        """The model in eval mode, with weights drawn from `seed`."""
        module, cls = self.target.split(":")
        torch.manual_seed(seed)
        return getattr(importlib.import_module(module), cls)(**self.kwargs).eval()


_CNN = {"N": 32, "M": 48}
ZOO: dict[str, ZooModel] = {
    m.name: m
    for m in (
        ZooModel(
            "stf",
            "compressai.models.stf:SymmetricalTransFormer",
            {"embed_dim": 16, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 2, 4), "num_slices": 4, "window_size": 3},
            "swap",
        ),
        ZooModel("stf-wacnn", "compressai.models.stf:WACNN", {"N": 32, "M": 40, "num_slices": 5}, "swap"),
        ZooModel(
            "tcm",
            "compressai.models.tcm:TCM",
            {"N": 32, "M": 40, "hyper_channels": 32, "num_slices": 5, "config": (2,) * 6, "window_size": 6, "hyper_window_size": 3},
            "swap",
        ),
        ZooModel("dcae", "compressai.models.dcae:DCAE", _DICTIONARY, "swap"),
        ZooModel("saaf", "compressai.models.saaf:SAAF", _DICTIONARY, "swap-or-refuse", ("_CrossSparseWindowAttention",)),
        ZooModel(
            "cca",
            "compressai.models.cca:CCAModel",
            {
                "latent_channels": 40,
                "hyper_channels": 32,
                "slice_proportions": (8, 32),
                "encoder_dims": (16, 24, 32),
                "encoder_layers": (1, 1, 1),
                "em_hidden_channels": 32,
                "em_num_layers": 1,
            },
            "refuse",
        ),
        ZooModel(
            "mlic",
            "compressai.models.mlic:MLIC",
            {"N": 32, "M": 32, "slice_num": 4},
            "refuse",
            ("_MlicIntraWrapper", "VanillaGlobalIntraContext"),  # quadratic global intra context
        ),
        ZooModel(
            "mlicplus",
            "compressai.models.mlic:MLICPlus",
            {"N": 32, "M": 40, "slice_num": 4},
            "refuse",
            ("WindowCheckerboardAttn", "VanillaGlobalInterContext", "VanillaGlobalIntraContext"),
        ),
        ZooModel(
            "mlicpp",
            "compressai.models.mlic:MLICPlusPlus",
            {"N": 32, "M": 40, "slice_num": 4},
            "refuse",
            ("LocalContext", "LinearGlobalInterContext", "LinearGlobalIntraContext"),
        ),
        ZooModel(
            "mlicv2",
            "compressai.models.mlic:MLICv2",
            {"N": 32, "M": 40, "slice_num": 4},
            "refuse",
            ("LocalContext", "LinearGlobalInterContext", "SimpleTokenMixing", "HGCPModule", "GSCModule"),
        ),
        ZooModel("bmshj2018-factorized", "compressai.models:FactorizedPrior", _CNN, "insert-or-replace"),
        ZooModel("bmshj2018-factorized-relu", "compressai.models:FactorizedPriorReLU", _CNN, "insert-or-replace"),
        ZooModel("bmshj2018-hyperprior", "compressai.models:ScaleHyperprior", _CNN, "insert-or-replace"),
        ZooModel("bmshj2018-hyperprior-vbr", "compressai.models:ScaleHyperpriorVbr", _CNN, "insert-or-replace"),
        ZooModel("mbt2018-mean", "compressai.models:MeanScaleHyperprior", _CNN, "insert-or-replace"),
        ZooModel("mbt2018-mean-vbr", "compressai.models:MeanScaleHyperpriorVbr", _CNN, "insert-or-replace"),
        ZooModel("mbt2018", "compressai.models:JointAutoregressiveHierarchicalPriors", _CNN, "insert-or-replace"),
        ZooModel("mbt2018-vbr", "compressai.models:JointAutoregressiveHierarchicalPriorsVbr", _CNN, "insert-or-replace"),
        ZooModel("cheng2020-anchor", "compressai.models:Cheng2020Anchor", {"N": 32}, "insert-or-replace"),
        ZooModel("cheng2020-attn", "compressai.models:Cheng2020Attention", {"N": 32}, "insert-or-replace"),
    )
}


def names(*expects: str) -> list[str]:
    """Zoo names whose `expect` is one of `expects`."""
    return [name for name, m in ZOO.items() if m.expect in expects]


@dataclass(frozen=True)
class Host:
    """A module that runs the whole pad / roll / partition / attention / reverse path."""

    path: str
    cls: str
    window: tuple[int, int]
    shift: tuple[int, int]


def _pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def find_hosts(model: nn.Module) -> list[Host]:
    """The window-attention hosts of a model of the development zoo, by class, with the window
    and the shift each one really applies."""
    from compressai.layers.attn.swin import WMSA
    from compressai.models.dcae import _WMSA as DcaeWMSA
    from timm.models.swin_transformer import SwinTransformerBlock

    found = []
    for path, m in model.named_modules():
        if isinstance(m, SwinTransformerBlock):
            window, shift = _pair(m.window_size), _pair(m.shift_size)
        elif isinstance(m, WMSA):
            window, shift = _pair(m.window_size), _pair(m.shift_size)
        elif isinstance(m, DcaeWMSA):
            window = _pair(m.window_size)
            shift = (0, 0) if m.type == "W" else _pair(m.window_size // 2)
        else:
            continue
        found.append(Host(path, type(m).__name__, window, shift))
    return found


def snapshot(model: nn.Module) -> tuple[list[tuple[str, str]], dict[str, torch.Tensor]]:
    """The module tree (path, class) and a copy of the state dict, to check that nothing changed."""
    tree = [(p, type(m).__qualname__) for p, m in model.named_modules()]
    return tree, {k: v.detach().clone() for k, v in model.state_dict().items()}
