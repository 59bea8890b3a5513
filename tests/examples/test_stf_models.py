# SPDX-License-Identifier: Apache-2.0
"""Tests of `examples.stf.models`: the official layout, any image size, exact decoding,
independent streams per image, low precision and gradient checkpointing.

`data/{stf,cnn}_state_dict.tsv` list the state dicts of the official models with default
arguments, built on CompressAI 1.2.8 (`name<TAB>shape<TAB>dtype`; dumped once from
github.com/Googolxx/STF, which is not a dependency). Everything else runs tiny configs.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from examples.stf.models import WACNN, SymmetricalTransFormer
from winattn.functional import relative_position_index

DATA = Path(__file__).parent / "data"

CC_TINY = (32, 32, 32, 32)
STF_TINY = {"embed_dim": 8, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2), "num_slices": 4, "cc_hidden": CC_TINY}
CNN_TINY = {"N": 16, "M": 24, "num_slices": 3, "num_heads": 2, "cc_hidden": CC_TINY}
# (B, H, W): sizes tested; none but 64x64 and 512x768 is a multiple of 64
SIZES = [(1, 64, 64), (1, 240, 240), (1, 250, 250), (2, 96, 160), (1, 512, 768)]


def _tiny(arch: str) -> SymmetricalTransFormer | WACNN:
    torch.manual_seed(0)
    if arch == "stf":
        model = SymmetricalTransFormer(**STF_TINY)
    else:
        model = WACNN(**CNN_TINY)
        # a random WACNN maps images to |y| < 0.5, so every symbol would be 0: scale the last
        # conv of the analysis so that the entropy coder has real symbols to code
        with torch.no_grad():
            model.g_a[7].weight.mul_(30)
    model.eval()
    model.update()
    return model


@pytest.fixture(scope="module", params=["stf", "cnn"])
def tiny(request: pytest.FixtureRequest) -> SymmetricalTransFormer | WACNN:
    return _tiny(request.param)


def _image(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _read_layout(arch: str) -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in (DATA / f"{arch}_state_dict.tsv").read_text().splitlines():
        name, shape, _ = line.split("\t")
        rows.append((name, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
    return rows


# -- the official layout (full-size models) ---------------------------------------------------

OFFICIAL = {
    "stf": (SymmetricalTransFormer, 779, 99_855_639),
    "cnn": (WACNN, 585, 75_235_779),
}


@pytest.fixture(scope="module", params=["stf", "cnn"])
def full(request: pytest.FixtureRequest) -> tuple[str, torch.nn.Module]:
    return request.param, OFFICIAL[request.param][0]()


def test_official_layout_has_the_documented_entry_count(full: tuple[str, torch.nn.Module]) -> None:
    arch, _ = full
    assert len(_read_layout(arch)) == OFFICIAL[arch][1]


def test_state_dict_names_and_shapes_match_official_less_persistent_index(full: tuple[str, torch.nn.Module]) -> None:
    arch, model = full
    official = [(k, s) for k, s in _read_layout(arch) if not k.endswith(".relative_position_index")]
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == official


def test_official_relative_position_index_entries_match_our_attention_windows(full: tuple[str, torch.nn.Module]) -> None:
    arch, model = full
    modules = dict(model.named_modules())
    for name, shape in _read_layout(arch):
        if name.endswith(".relative_position_index"):
            attn = modules[name.rsplit(".", 1)[0]]
            assert tuple(relative_position_index(attn.window_size).shape) == shape


def test_parameter_count_matches_official(full: tuple[str, torch.nn.Module]) -> None:
    arch, model = full
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL[arch][2]


def test_official_state_dict_with_persistent_index_loads_strictly(full: tuple[str, torch.nn.Module]) -> None:
    arch, model = full
    state = dict(model.state_dict())
    for name, _ in _read_layout(arch):
        if name.endswith(".relative_position_index"):
            attn = model.get_submodule(name.rsplit(".", 1)[0])
            state[name] = relative_position_index(attn.window_size)
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


# -- constructor arguments -----------------------------------------------------------------------


def test_stf_widths_follow_embed_dim_and_depth() -> None:
    model = SymmetricalTransFormer(embed_dim=8, depths=(1, 1, 1), num_heads=(1, 2, 4), num_slices=4, hyper_channels=24)
    out = model(_image(1, 40, 40))
    # three stages: latent stride 2 * 2**2 = 8, latent channels 8 * 2**2 = 32
    assert out["likelihoods"]["y"].shape == (1, 32, 5, 5)
    assert out["likelihoods"]["z"].shape == (1, 24, 2, 2)


def test_cnn_widths_follow_n_and_m() -> None:
    model = WACNN(N=16, M=24, num_slices=3, num_heads=2)
    out = model(_image(1, 48, 80))
    assert out["likelihoods"]["y"].shape == (1, 24, 3, 5)
    assert out["likelihoods"]["z"].shape == (1, 16, 1, 2)


def test_slice_transforms_see_max_support_slices_of_context() -> None:
    model = WACNN(N=16, M=24, num_slices=6, max_support_slices=2, num_heads=2)
    widths = [t[0].in_channels for t in model.cc_mean_transforms]
    assert widths == [24, 28, 32, 32, 32, 32]


def test_latent_channels_not_divisible_by_slices_raise() -> None:
    with pytest.raises(ValueError, match="num_slices=7"):
        WACNN(N=16, M=24, num_slices=7, num_heads=2)


def test_mismatched_depths_and_heads_raise() -> None:
    with pytest.raises(ValueError, match="depths"):
        SymmetricalTransFormer(embed_dim=8, depths=(1, 1), num_heads=(1, 2, 4))


# -- any image size, exact decoding ----------------------------------------------------------


@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_forward_returns_the_input_size(tiny: torch.nn.Module, size: tuple[int, int, int]) -> None:
    x = _image(*size)
    with torch.no_grad():
        assert tiny(x)["x_hat"].shape == x.shape


# 512x768 (a multiple of 64) only runs the forward above, to keep CI short
@pytest.mark.parametrize("size", SIZES[:-1], ids=lambda s: "x".join(map(str, s)))
def test_decompress_equals_eval_forward_exactly(tiny: torch.nn.Module, size: tuple[int, int, int]) -> None:
    x = _image(*size)
    with torch.no_grad():
        expected = tiny(x)["x_hat"].clamp(0, 1)
    out = tiny.compress(x)
    decoded = tiny.decompress(out["strings"], out["shape"])["x_hat"]
    assert torch.equal(decoded, expected)


def test_compress_records_the_original_size(tiny: torch.nn.Module) -> None:
    assert tiny.compress(_image(1, 37, 91))["shape"] == (37, 91)


def test_compress_codes_nonzero_symbols(tiny: torch.nn.Module) -> None:
    # guards the exactness tests above against a latent that rounds to all zeros
    x = _image(1, 64, 64)
    with torch.no_grad():
        y = tiny.analysis(x)
    assert (torch.round(y) != 0).float().mean() > 0.05


def test_batch_gives_one_independently_decodable_stream_per_image(tiny: torch.nn.Module) -> None:
    x = _image(3, 48, 80)
    out = tiny.compress(x)
    batch = tiny.decompress(out["strings"], out["shape"])["x_hat"]
    y_strings, z_strings = out["strings"]
    assert len(y_strings) == len(z_strings) == 3
    for b in (2, 0):
        alone = tiny.decompress([[y_strings[b]], [z_strings[b]]], out["shape"])["x_hat"]
        # batch size can change the float rounding of the convs, not the decoded symbols
        torch.testing.assert_close(alone, batch[b : b + 1], atol=1e-5, rtol=0)


def _recorded_indexes(model: torch.nn.Module, run) -> list[torch.Tensor]:
    """The entropy coder's indexes that `run()` asks `gaussian_conditional` for, in order."""
    seen: list[torch.Tensor] = []
    original = model.gaussian_conditional.build_indexes

    def record(scales: torch.Tensor) -> torch.Tensor:
        seen.append(original(scales))
        return seen[-1]

    model.gaussian_conditional.build_indexes = record
    try:
        run()
    finally:
        del model.gaussian_conditional.build_indexes
    return seen


def test_stream_decoded_alone_uses_the_indexes_it_was_encoded_with(tiny: torch.nn.Module) -> None:
    # rANS decodes correctly only with the exact indexes of the encoder; they come from convs
    # whose rounding may depend on the batch size, so both sides work image by image.
    x = _image(3, 40, 56, seed=3)
    out = {}
    encoded = _recorded_indexes(tiny, lambda: out.update(tiny.compress(x)))
    y_strings, z_strings = out["strings"]
    per_image = len(encoded) // 3
    decoded = _recorded_indexes(
        tiny, lambda: tiny.decompress([[y_strings[1]], [z_strings[1]]], out["shape"])
    )
    assert len(decoded) == per_image
    for got, want in zip(decoded, encoded[per_image : 2 * per_image]):
        assert torch.equal(got, want)


def test_compress_before_update_raises() -> None:
    model = WACNN(**CNN_TINY)
    with pytest.raises(RuntimeError, match="update"):
        model.compress(_image(1, 32, 32))


def test_decompress_rejects_mismatched_string_lists(tiny: torch.nn.Module) -> None:
    out = tiny.compress(_image(2, 32, 32))
    with pytest.raises(ValueError, match="one y string and one z string"):
        tiny.decompress([out["strings"][0], out["strings"][1][:1]], out["shape"])


def test_decompress_rejects_a_bad_shape(tiny: torch.nn.Module) -> None:
    out = tiny.compress(_image(1, 32, 32))
    with pytest.raises(ValueError, match="shape"):
        tiny.decompress(out["strings"], (0, 32))


def test_forward_rejects_a_non_image() -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        WACNN(**CNN_TINY)(torch.rand(3, 32, 32))


# -- low precision ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_decode_equals_forward(tiny: torch.nn.Module, dtype: torch.dtype) -> None:
    model = copy.deepcopy(tiny).to(dtype)
    x = _image(1, 48, 80).to(dtype)
    with torch.no_grad():
        forward = model(x)
    out = model.compress(x)
    decoded = model.decompress(out["strings"], out["shape"])["x_hat"]
    assert decoded.dtype == dtype
    assert torch.equal(decoded, forward["x_hat"].clamp(0, 1))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_likelihoods_stay_positive(tiny: torch.nn.Module, dtype: torch.dtype) -> None:
    model = copy.deepcopy(tiny).to(dtype)
    with torch.no_grad():
        likelihoods = model(_image(1, 48, 80).to(dtype))["likelihoods"]
    assert all((v > 0).all() for v in likelihoods.values())


def test_update_after_casting_to_half_fills_tables_and_keeps_the_dtype() -> None:
    model = WACNN(**CNN_TINY).half()
    assert model.update()
    assert model.gaussian_conditional._quantized_cdf.numel() > 0
    assert model.entropy_bottleneck.quantiles.dtype == torch.float16


# -- training ---------------------------------------------------------------------------------------


def _gradients(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    torch.manual_seed(1)
    out = model(x)
    loss = out["x_hat"].square().mean() + sum(v.log().mean() for v in out["likelihoods"].values())
    loss.backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["stf", "cnn"])
def test_gradient_checkpointing_gives_the_same_gradients(arch: str) -> None:
    torch.manual_seed(0)
    if arch == "stf":
        model = SymmetricalTransFormer(**STF_TINY, drop_path_rate=0.0)
    else:
        model = WACNN(**CNN_TINY)
    model.train()
    x = _image(1, 40, 56)
    plain = _gradients(model, x)
    model.use_checkpoint = True
    checkpointed = _gradients(model, x)
    assert plain.keys() == checkpointed.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_aux_loss_is_a_finite_scalar() -> None:
    loss = WACNN(**CNN_TINY).aux_loss()
    assert loss.dim() == 0 and torch.isfinite(loss)


def test_printed_models_name_the_official_layer_classes() -> None:
    for model in (WACNN(N=32, M=40, num_slices=5),
                  SymmetricalTransFormer(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), num_slices=4)):
        text = repr(model)
        assert "GELU(approximate='none')" in text
        assert "_GELU" not in text and "_GDN" not in text
    assert "GDN(" in repr(WACNN(N=32, M=40, num_slices=5))
