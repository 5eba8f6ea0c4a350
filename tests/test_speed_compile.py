"""torch.compile sees every Robust-ResNet (training and fused inference forms) as one graph: no graph breaks."""
from __future__ import annotations

import copy

import pytest
import timm
import torch

import robustcnn  # noqa: F401

NANO_MODELS = ['robust_resnet_dw_nano', 'robust_resnet_inverted_dw_nano', 'robust_resnet_up_inverted_dw_nano',
               'robust_resnet_down_inverted_dw_nano']


@pytest.mark.parametrize('name', NANO_MODELS)
def test_no_graph_breaks_unfused_and_fused(name):
    torch._dynamo.reset()
    model = timm.create_model(name, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    for candidate in (model, copy.deepcopy(model).fuse()):
        explanation = torch._dynamo.explain(candidate)(x)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        assert explanation.graph_count == 1
