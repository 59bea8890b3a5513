# SPDX-License-Identifier: Apache-2.0
"""The entropy model's fast paths: oneDNN convolutions on the CPU where they are faster than
PyTorch's own kernel, and a compress that skips the work nothing reads."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from examples.stf import entropy
from examples.stf.entropy import OneDNNConv2d
from examples.stf.models import WACNN, SymmetricalTransFormer


def _ops(fn) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {event.key for event in prof.key_averages()}


_needs_onednn = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="needs a PyTorch built with oneDNN"
)


@_needs_onednn
def test_small_3x3_conv_takes_onednn_where_it_is_faster(monkeypatch):
    monkeypatch.setattr(entropy, "_onednn_for_small_maps", lambda: True)  # an AVX-512 CPU
    conv = OneDNNConv2d(16, 8, kernel_size=3, padding=1)
    x = torch.randn(1, 16, 4, 6)  # 384 elements: nn.Conv2d would take _slow_conv2d_forward
    with torch.no_grad():
        assert "aten::_slow_conv2d_forward" in _ops(lambda: nn.functional.conv2d(x, conv.weight, conv.bias, padding=1))
        assert "aten::_slow_conv2d_forward" not in _ops(lambda: conv(x))


@_needs_onednn
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_small_maps_keep_pytorchs_kernel_elsewhere_and_larger_ones_take_onednn(monkeypatch, memory_format):
    monkeypatch.setattr(entropy, "_onednn_for_small_maps", lambda: False)  # an AVX2 CPU
    conv = OneDNNConv2d(16, 8, kernel_size=3, padding=1)
    small = torch.randn(1, 16, 4, 6).contiguous(memory_format=memory_format)
    at_limit = torch.randn(1, 20, 32, 32).contiguous(memory_format=memory_format)  # 20480
    large = torch.randn(1, 16, 40, 33).contiguous(memory_format=memory_format)  # 21120
    batch = torch.randn(2, 16, 4, 6).contiguous(memory_format=memory_format)
    wide = OneDNNConv2d(20, 8, kernel_size=3, padding=1)
    with torch.no_grad():
        for layer, x in ((conv, small), (wide, at_limit)):
            pytorch = _ops(partial(nn.functional.conv2d, x, layer.weight, layer.bias, padding=1))
            assert _ops(partial(layer, x)) == pytorch
            assert "aten::mkldnn_convolution" not in pytorch
        for x in (large, batch):
            assert "aten::mkldnn_convolution" in _ops(partial(conv, x))


def test_onednn_for_small_maps_follows_the_cpu_capability():
    capability = torch.backends.cpu.get_cpu_capability()
    assert entropy._onednn_for_small_maps() == capability.startswith("AVX512")


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("stride", [1, 2])
def test_onednn_conv_computes_what_nn_conv2d_computes(memory_format, stride):
    torch.manual_seed(0)
    conv = OneDNNConv2d(12, 20, kernel_size=3, stride=stride, padding=1)
    reference = nn.Conv2d(12, 20, kernel_size=3, stride=stride, padding=1)
    reference.load_state_dict(conv.state_dict())
    x = torch.randn(2, 12, 7, 9).contiguous(memory_format=memory_format)
    out = conv(x)
    torch.testing.assert_close(out, reference(x), atol=1e-5, rtol=0)
    assert out.is_contiguous(memory_format=memory_format)


def test_onednn_conv_passes_gradients():
    torch.manual_seed(0)
    conv = OneDNNConv2d(6, 4, kernel_size=3, padding=1)
    reference = nn.Conv2d(6, 4, kernel_size=3, padding=1)
    reference.load_state_dict(conv.state_dict())
    x = torch.randn(1, 6, 5, 5, requires_grad=True)
    conv(x).square().sum().backward()
    grad = x.grad.clone()
    x.grad = None
    reference(x).square().sum().backward()
    torch.testing.assert_close(grad, x.grad, atol=1e-5, rtol=0)
    torch.testing.assert_close(conv.weight.grad, reference.weight.grad, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "model",
    [WACNN(N=32, M=40, num_slices=5), SymmetricalTransFormer(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), num_slices=4)],
    ids=["cnn", "stf"],
)
def test_every_entropy_model_conv_is_a_onednn_conv(model):
    parts = (model.h_a, model.h_mean_s, model.h_scale_s, model.cc_mean_transforms, model.cc_scale_transforms, model.lrp_transforms)
    convs = [m for part in parts for m in part.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(isinstance(m, OneDNNConv2d) for m in convs)


@pytest.mark.parametrize("max_support_slices", [2, -1])
def test_compress_runs_the_residual_prediction_only_of_slices_later_slices_read(max_support_slices):
    model = WACNN(N=32, M=40, num_slices=5, max_support_slices=max_support_slices).eval()
    model.update()
    ran = []
    for i, transform in enumerate(model.lrp_transforms):
        transform.register_forward_hook(lambda module, args, out, i=i: ran.append(i))
    model.compress(torch.rand(1, 3, 40, 56))
    assert ran == ([0, 1] if max_support_slices == 2 else [0, 1, 2, 3])
