"""The CPU fast path of fused models: pre-packed oneDNN convolutions give the same numbers as nn.Conv2d."""
from __future__ import annotations

import copy
import io

import pytest
import timm
import torch
import torch.nn as nn

import robustcnn  # noqa: F401  (registers the models)
from robustcnn.models.prepacked import PrepackedConv2d, prepack_available, prepack_convolutions

needs_onednn = pytest.mark.skipif(not prepack_available(), reason='this torch build has no oneDNN conv ops')


def _conv_pair(**kwargs) -> tuple[nn.Conv2d, nn.Conv2d]:
    torch.manual_seed(0)
    conv = nn.Conv2d(**kwargs)
    return conv, PrepackedConv2d.from_conv(copy.deepcopy(conv))


@needs_onednn
@pytest.mark.parametrize('kwargs', [
    dict(in_channels=8, out_channels=16, kernel_size=1),
    dict(in_channels=8, out_channels=8, kernel_size=7, padding=3, groups=8),
    dict(in_channels=8, out_channels=16, kernel_size=11, padding=5, stride=2, groups=8),
    dict(in_channels=3, out_channels=8, kernel_size=4, stride=4),
])
def test_prepacked_conv_matches_conv2d_for_any_batch_and_size(kwargs):
    conv, packed = _conv_pair(**kwargs)
    with torch.inference_mode():
        for shape in [(2, kwargs['in_channels'], 16, 16), (5, kwargs['in_channels'], 24, 20)]:
            x = torch.randn(shape)
            for memory_format in (torch.contiguous_format, torch.channels_last):
                torch.testing.assert_close(packed(x.contiguous(memory_format=memory_format)), conv(x),
                                           rtol=1e-4, atol=1e-5)


@needs_onednn
def test_prepacked_conv_follows_weight_changes_and_keeps_state_dict_and_grad_path():
    conv, packed = _conv_pair(in_channels=4, out_channels=6, kernel_size=3, padding=1)
    assert list(packed.state_dict()) == list(conv.state_dict())
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        packed(x)
        packed.weight.mul_(2.0)  # in place: the cached packed weight must be rebuilt
        conv.weight.mul_(2.0)
        torch.testing.assert_close(packed(x), conv(x), rtol=1e-4, atol=1e-5)
    packed.load_state_dict({'weight': torch.ones_like(conv.weight), 'bias': torch.zeros(6)})
    with torch.no_grad():
        torch.testing.assert_close(packed(x), nn.functional.conv2d(x, torch.ones_like(conv.weight), padding=1),
                                   rtol=1e-4, atol=1e-4)
    # with autograd the module is an ordinary conv, so training code stays correct
    output = packed(x.requires_grad_())
    output.sum().backward()
    assert packed.weight.grad is not None and x.grad is not None


@needs_onednn
def test_fused_model_is_prepacked_copyable_and_equal():
    torch.manual_seed(0)
    model = timm.create_model('robust_resnet_dw_pico').eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        fused = copy.deepcopy(model).fuse()
        plain = copy.deepcopy(model).fuse(prepack=False)
        assert any(isinstance(module, PrepackedConv2d) for module in fused.modules())
        assert not any(isinstance(module, PrepackedConv2d) for module in plain.modules())
        assert fused.state_dict().keys() == plain.state_dict().keys()
        torch.testing.assert_close(fused(x), expected, rtol=1e-4, atol=1e-5)
        again = copy.deepcopy(fused)  # the packed cache is dropped on copy and rebuilt
        torch.testing.assert_close(again(x), expected, rtol=1e-4, atol=1e-5)
        buffer = io.BytesIO()
        torch.save(fused.state_dict(), buffer)
        with torch.autocast('cpu', dtype=torch.bfloat16):  # autocast falls back to the ordinary conv
            assert fused(x).dtype == torch.bfloat16


def test_prepack_leaves_non_conv_and_special_padding_alone():
    module = nn.Sequential(nn.Conv2d(3, 3, 3, padding='same'), nn.Conv2d(3, 3, 3, padding_mode='reflect'),
                           nn.Linear(3, 3))
    prepack_convolutions(module)
    assert not any(isinstance(child, PrepackedConv2d) for child in module)
