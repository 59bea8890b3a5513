# SPDX-License-Identifier: Apache-2.0
"""`patch_model` on every image model of CompressAI's development zoo (small configurations):
transformer codecs are swapped whole with nothing changed but speed, models with attention that
winattn cannot swap are refused and left as they were, CNN codecs get their blocks as before.

Runs in the second CI environment (`.ci/compressai_dev.sh`); skipped with compressai 1.2.8.
"""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip(
    "compressai.layers.attn",
    reason="needs CompressAI's development line (compressai-temp); run .ci/compressai_dev.sh",
)

from tests.integrations_dev.zoo import IMAGE_SIZE, ZOO, find_hosts, names, snapshot  # noqa: E402
from winattn import patch_model  # noqa: E402

ATOL = 1e-5


def _image(batch: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, *IMAGE_SIZE, generator=torch.Generator().manual_seed(1))


def _related(a: str, b: str) -> bool:
    """Whether one dotted path is the other or lies inside it."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _assert_outputs_close(got: dict, want: dict) -> None:
    torch.testing.assert_close(got["x_hat"], want["x_hat"], atol=ATOL, rtol=0)
    assert set(got["likelihoods"]) == set(want["likelihoods"])
    for key, value in want["likelihoods"].items():
        torch.testing.assert_close(got["likelihoods"][key], value, atol=ATOL, rtol=0)


def _assert_unchanged(model: torch.nn.Module, before: tuple) -> None:
    tree, state = snapshot(model)
    assert tree == before[0]
    assert list(state) == list(before[1])
    for key, value in before[1].items():
        assert torch.equal(state[key], value), key


@pytest.fixture(scope="module", params=names("swap"))
def swapped(request):
    """(name, original, patched) for each model that must be swapped."""
    original = ZOO[request.param].build()
    patched = patch_model(copy.deepcopy(original))
    return request.param, original, patched


def test_table_covers_every_image_model_of_the_zoo():
    from compressai.zoo import image_models

    assert set(ZOO) == set(image_models)


def test_auto_swaps_every_host_whole_and_reports_it(swapped):
    _, original, patched = swapped
    hosts = find_hosts(original)
    entries = patched.winattn_report.entries
    assert hosts
    assert len(entries) == len(hosts)
    for host in hosts:
        matches = [e for e in entries if _related(e.path, host.path)]
        assert len(matches) == 1, (host, [e.path for e in entries])
        entry = matches[0]
        assert (entry.action, entry.level) == ("swap", "block"), entry
        assert entry.host.split(".")[-1] == host.cls, entry
        assert (tuple(entry.window_size), tuple(entry.shift_size)) == (host.window, host.shift), entry
    assert not find_hosts(patched)


def test_swapped_model_gives_the_same_outputs(swapped):
    _, original, patched = swapped
    x = _image(batch=2)
    with torch.no_grad():
        _assert_outputs_close(patched(x), original(x))


def test_swapped_model_keeps_state_dict_keys_and_loads_strictly_both_ways(swapped):
    name, original, patched = swapped
    assert list(patched.state_dict()) == list(original.state_dict())
    copy.deepcopy(patched).load_state_dict(original.state_dict(), strict=True)
    fresh = ZOO[name].build(seed=1)
    fresh.load_state_dict(patched.state_dict(), strict=True)
    x = _image()
    with torch.no_grad():
        _assert_outputs_close(fresh(x), original(x))


def test_swapped_model_writes_the_same_bitstreams_after_update(swapped):
    _, original, patched = swapped
    original, patched = copy.deepcopy(original), copy.deepcopy(patched)
    original.update(force=True)
    patched.update(force=True)
    x = _image()
    with torch.no_grad():
        want, got = original.compress(x), patched.compress(x)
        assert got["strings"] == want["strings"]
        decoded = patched.decompress(got["strings"], got["shape"])["x_hat"]
        torch.testing.assert_close(decoded, original.decompress(want["strings"], want["shape"])["x_hat"], atol=ATOL, rtol=0)


def _shifted_block_and_input(patched: torch.nn.Module) -> tuple[torch.nn.Module, tuple]:
    entry = next(e for e in patched.winattn_report.entries if any(e.shift_size))
    block = patched.get_submodule(entry.path)
    seen = []
    handle = block.register_forward_hook(lambda _m, args, _out: seen.append(args))
    try:
        with torch.no_grad():
            patched(_image())
    finally:
        handle.remove()
    return block, seen[0]


def test_swapped_shifted_block_compiles_with_fullgraph(swapped):
    _, _, patched = swapped
    block, args = _shifted_block_and_input(patched)
    torch._dynamo.reset()  # each parametrisation compiles afresh, not against a recompile limit
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(*args), block(*args), atol=ATOL, rtol=0)


def test_swapped_shifted_block_exports(swapped):
    _, _, patched = swapped
    block, args = _shifted_block_and_input(patched)
    exported = torch.export.export(block, args)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(*args), block(*args), atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", names("refuse"))
def test_auto_refuses_attention_it_cannot_swap_and_leaves_the_model_unchanged(name):
    model = ZOO[name].build()
    before = snapshot(model)
    with pytest.raises(ValueError, match="insert") as info:
        patch_model(model)
    _assert_unchanged(model, before)
    assert not hasattr(model, "winattn_report")
    if ZOO[name].attention:
        assert any(cls in str(info.value) for cls in ZOO[name].attention), str(info.value)


def test_saaf_is_swapped_whole_or_refused_unchanged():
    original = ZOO["saaf"].build()
    model = copy.deepcopy(original)
    before = snapshot(model)
    try:
        patch_model(model)
    except ValueError as exc:
        _assert_unchanged(model, before)
        assert "_CrossSparseWindowAttention" in str(exc)
        return
    assert {(e.action, e.level) for e in model.winattn_report.entries} == {("swap", "block")}
    assert list(model.state_dict()) == list(original.state_dict())
    x = _image()
    with torch.no_grad():
        _assert_outputs_close(model(x), original(x))


@pytest.mark.parametrize("name", names("insert-or-replace"))
def test_cnn_codec_gets_reported_blocks_and_keeps_its_weights(name):
    original = ZOO[name].build()
    model = patch_model(copy.deepcopy(original))
    report = model.winattn_report
    assert set(report.actions) <= {"insert", "replace"} and report.entries
    with torch.no_grad():
        assert model(_image())["x_hat"].shape == (1, 3, *IMAGE_SIZE)
        original(_image())  # masked convolutions zero their weights on the first forward
    state = model.state_dict()
    changed = {e.path for e in report.entries}
    for key, value in original.state_dict().items():
        if not any(_related(key.rsplit(".", 1)[0], path) for path in changed):
            assert torch.equal(state[key], value), key
