# SPDX-License-Identifier: Apache-2.0
"""Tests of `examples.stf.loader` on synthetic checkpoints in the official format: nested
under `state_dict`, `module.` prefix, CompressAI < 1.2 entropy-bottleneck names and
persistent `relative_position_index` buffers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from examples.stf.loader import convert_official_state_dict, infer_arch, load_official
from examples.stf.models import WACNN, SymmetricalTransFormer
from winattn.functional import relative_position_index

CC_TINY = (32, 32, 32, 32)
STF_TINY = {"embed_dim": 8, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2), "num_slices": 4, "cc_hidden": CC_TINY}
CNN_TINY = {"N": 16, "M": 24, "num_slices": 3, "num_heads": 2, "cc_hidden": CC_TINY}
TINY = {"stf": (SymmetricalTransFormer, STF_TINY), "cnn": (WACNN, CNN_TINY)}


def _old_name(key: str) -> str:
    # entropy_bottleneck.matrices.3 -> entropy_bottleneck._matrix3 (CompressAI < 1.2)
    singular = {"matrices": "matrix", "biases": "bias", "factors": "factor"}
    m = re.fullmatch(r"entropy_bottleneck\.(matrices|biases|factors)\.(\d+)", key)
    return f"entropy_bottleneck._{singular[m[1]]}{m[2]}" if m else key


def _official_format(model: torch.nn.Module) -> dict:
    """The model's weights as an official training checkpoint file holds them."""
    state = {}
    for key, value in model.state_dict().items():
        state["module." + _old_name(key)] = value.clone()
    for name, module in model.named_modules():
        if hasattr(module, "relative_position_bias_table"):
            state[f"module.{name}.relative_position_index"] = relative_position_index(module.window_size)
    return {"epoch": 7, "loss": torch.tensor(1.5), "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}


@pytest.fixture(scope="module", params=["stf", "cnn"])
def original(request: pytest.FixtureRequest) -> tuple[str, torch.nn.Module]:
    cls, kwargs = TINY[request.param]
    torch.manual_seed(0)
    return request.param, cls(**kwargs).eval()


def test_old_format_checkpoint_file_loads_and_reproduces_outputs(original: tuple[str, torch.nn.Module], tmp_path: Path) -> None:
    arch, model = original
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(_official_format(model), path)
    loaded = load_official(path, arch=arch, **TINY[arch][1])
    x = torch.rand(1, 3, 48, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x)["x_hat"], model(x)["x_hat"])


def test_arch_is_inferred_from_the_names(original: tuple[str, torch.nn.Module]) -> None:
    arch, model = original
    assert infer_arch(convert_official_state_dict(_official_format(model))) == arch


def test_old_bottleneck_names_are_renamed() -> None:
    w = torch.zeros(1)
    converted = convert_official_state_dict(
        {"entropy_bottleneck._matrix0": w, "entropy_bottleneck._bias4": w, "entropy_bottleneck._factor3": w}
    )
    assert set(converted) == {"entropy_bottleneck.matrices.0", "entropy_bottleneck.biases.4", "entropy_bottleneck.factors.3"}


def test_module_prefix_is_kept_when_not_on_every_key() -> None:
    w = torch.zeros(1)
    assert set(convert_official_state_dict({"module.a": w, "b": w})) == {"module.a", "b"}


def test_loaded_model_fills_the_coder_tables(original: tuple[str, torch.nn.Module]) -> None:
    arch, model = original
    loaded = load_official(_official_format(model), arch=arch, **TINY[arch][1])
    out = loaded.compress(torch.rand(1, 3, 32, 32))
    assert len(out["strings"][0]) == 1


def test_tables_saved_in_the_checkpoint_are_used() -> None:
    torch.manual_seed(0)
    model = WACNN(**CNN_TINY).eval()
    model.update()
    loaded = load_official(_official_format(model), update=False, **CNN_TINY)
    assert torch.equal(loaded.gaussian_conditional._quantized_cdf, model.gaussian_conditional._quantized_cdf)


def test_missing_key_is_named_in_the_error() -> None:
    checkpoint = _official_format(WACNN(**CNN_TINY))
    del checkpoint["state_dict"]["module.h_a.0.weight"]
    with pytest.raises(ValueError, match=r"missing keys: h_a\.0\.weight"):
        load_official(checkpoint, **CNN_TINY)


def test_unexpected_key_is_named_in_the_error() -> None:
    checkpoint = _official_format(WACNN(**CNN_TINY))
    checkpoint["state_dict"]["module.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"unexpected keys: extra\.weight"):
        load_official(checkpoint, **CNN_TINY)


def test_wrong_architecture_arguments_are_reported_as_shape_mismatches() -> None:
    checkpoint = _official_format(WACNN(**CNN_TINY))
    with pytest.raises(ValueError, match=r"shape mismatches .*g_a\.0\.weight \(16, 3, 5, 5\) vs \(32, 3, 5, 5\)"):
        load_official(checkpoint, **{**CNN_TINY, "N": 32})


def test_wrong_relative_position_index_is_rejected() -> None:
    checkpoint = _official_format(WACNN(**CNN_TINY))
    key = "module.g_a.4.conv_b.0.attn.relative_position_index"
    checkpoint["state_dict"][key] = relative_position_index(4)
    with pytest.raises(ValueError, match="relative_position_index"):
        load_official(checkpoint, **CNN_TINY)


def test_unknown_arch_is_rejected() -> None:
    with pytest.raises(ValueError, match="arch="):
        load_official(_official_format(WACNN(**CNN_TINY)), arch="mbt2018")


def test_checkpoint_without_weights_is_rejected() -> None:
    with pytest.raises(ValueError, match="no state dict"):
        load_official({"epoch": 3, "optimizer": {}})
