"""The ablation model: its start point is timm's ResNet-50, its end point the released Robust-ResNet-DW, and each
switch in between changes exactly the layers it names."""
import pytest
import timm
import torch
import torch.nn as nn

import robustcnn  # noqa: F401  (registers the models)
from robustcnn.models.resnet_ablation import parse_positions

ALL_SWITCHES = dict(stem='patchify', patch_size=16, depthwise=True, kernel_size=11, activations='one', norms='one')
# the ablation's names for the DW block's layers
DW_NAMES = {'pwconv1': 'conv1', 'conv_dw': 'conv2', 'pwconv2': 'conv3'}


def ablation_key(released_key: str) -> str:
    """A Robust-ResNet-DW state-dict key under the ablation's names (the stem's conv is ``stem.0``)."""
    if released_key.startswith('stem.'):
        return 'stem.0.' + released_key[len('stem.'):]
    for old, new in DW_NAMES.items():
        released_key = released_key.replace(old, new)
    return released_key


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def layer_kinds(model: nn.Module, kind: type) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, kind)]


def test_start_point_is_timm_resnet50_layer_for_layer():
    with torch.device('meta'):
        ablation = timm.create_model('resnet_ablation_50')
        resnet = timm.create_model('resnet50')
    assert sorted(shapes(ablation).values()) == sorted(shapes(resnet).values())
    for kind in (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d):
        assert len(layer_kinds(ablation, kind)) == len(layer_kinds(resnet, kind)), kind
    assert [info['reduction'] for info in ablation.feature_info] == [4, 8, 16, 32]
    assert ablation.feature_info[-1]['num_chs'] == resnet.num_features == 2048


def test_every_switch_on_is_robust_resnet_dw_small():
    with torch.device('meta'):
        ablation = timm.create_model('resnet_ablation_small', **ALL_SWITCHES)
        released = timm.create_model('robust_resnet_dw_small')
    assert shapes(ablation) == {ablation_key(key): shape for key, shape in shapes(released).items()}
    assert [info['reduction'] for info in ablation.feature_info] == [16, 16, 16, 32]


def test_every_switch_on_computes_what_robust_resnet_dw_computes():
    torch.manual_seed(0)
    released = timm.create_model('robust_resnet_dw_pico', patch_size=16, kernel_size=11, num_classes=7).eval()
    ablation = timm.create_model('resnet_ablation_pico', num_classes=7, **ALL_SWITCHES).eval()
    with torch.no_grad():
        for parameter in released.parameters():
            parameter.normal_(0, 0.2)
        for module in released.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    ablation.load_state_dict({ablation_key(key): value for key, value in released.state_dict().items()}, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ablation(x), released(x))


def _blocks(model: nn.Module) -> list[nn.Module]:
    return [block for stage in model.stages for block in stage.blocks]


def test_stem_switch_changes_only_the_stem_and_keeps_the_total_stride():
    base = timm.create_model('resnet_ablation_pico')
    patched = timm.create_model('resnet_ablation_pico', stem='patchify', patch_size=8)
    outside_stem = lambda model: {key: shape for key, shape in shapes(model).items() if not key.startswith('stem.')}
    assert outside_stem(base) == outside_stem(patched)
    assert len(patched.stem) == 1 and patched.stem[0].kernel_size == (8, 8) and patched.stem[0].stride == (8, 8)
    assert [type(module) for module in base.stem] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]
    assert base.stem[0].kernel_size == (7, 7) and base.stem[0].stride == (2, 2)
    assert [info['reduction'] for info in base.feature_info] == [4, 8, 16, 32]
    assert [info['reduction'] for info in patched.feature_info] == [8, 8, 16, 32]
    assert timm.create_model('resnet_ablation_pico', stem='patchify').stem[0].kernel_size == (16, 16)
    with torch.no_grad():
        assert patched.forward_features(torch.zeros(1, 3, 64, 64)).shape[-2:] == (2, 2)


def test_kernel_and_depthwise_switches_change_only_the_spatial_conv():
    base = timm.create_model('resnet_ablation_pico')
    for kwargs, groups_of_width, kernel in (({'kernel_size': 7}, False, 7), ({'depthwise': True}, True, 3),
                                           ({'depthwise': True, 'kernel_size': 11}, True, 11)):
        switched = timm.create_model('resnet_ablation_pico', **kwargs)
        differing = {key for key, shape in shapes(switched).items() if shapes(base)[key] != shape}
        assert differing == {f'stages.{index}.blocks.0.conv2.weight' for index in range(4)}, kwargs
        for block in _blocks(switched):
            assert block.conv2.kernel_size == (kernel, kernel) and block.conv2.padding == (kernel // 2, kernel // 2)
            assert block.conv2.groups == (block.conv2.in_channels if groups_of_width else 1)


def test_activation_and_norm_switches_remove_exactly_those_layers():
    base = timm.create_model('resnet_ablation_pico')
    stem_layers = 1  # the classic stem's own BN and ReLU stay
    assert len(layer_kinds(base, nn.ReLU)) == 3 * 4 + stem_layers
    assert len(layer_kinds(base, nn.BatchNorm2d)) == 3 * 4 + 4 + stem_layers  # + one shortcut BN per stage

    one_act = timm.create_model('resnet_ablation_pico', activations='one')
    assert shapes(one_act) == shapes(base)
    assert [name for name in layer_kinds(one_act, nn.ReLU) if 'stages' in name] == [
        f'stages.{index}.blocks.0.act3' for index in range(4)]
    one_norm = timm.create_model('resnet_ablation_pico', norms='one')
    assert [name for name in layer_kinds(one_norm, nn.BatchNorm2d) if 'stages' in name] == [
        f'stages.{index}.blocks.0.{name}' for index in range(4) for name in ('norm1', 'downsample.1')]
    removed = set(shapes(base)) - set(shapes(one_norm))
    assert removed and all('.norm2.' in key or '.norm3.' in key for key in removed)
    assert len(layer_kinds(one_norm, nn.ReLU)) == len(layer_kinds(base, nn.ReLU))

    custom = timm.create_model('resnet_ablation_pico', activations='conv2+out', norms='conv3')
    block = _blocks(custom)[0]
    assert [type(block.act1), type(block.act2), type(block.act3)] == [nn.Identity, nn.ReLU, nn.ReLU]
    assert [type(block.norm1), type(block.norm2), type(block.norm3)] == [nn.Identity, nn.Identity, nn.BatchNorm2d]
    none = _blocks(timm.create_model('resnet_ablation_pico', activations='none', norms='none'))[0]
    assert all(isinstance(getattr(none, name), nn.Identity) for name in ('act1', 'act2', 'act3', 'norm1', 'norm2'))


def test_position_specs():
    assert parse_positions('all', 'activations') == ('conv1', 'conv2', 'out')
    assert parse_positions('one', 'norms') == ('conv1',)
    assert parse_positions('out+conv1', 'activations') == ('conv1', 'out')
    assert parse_positions(['conv3'], 'norms') == ('conv3',)
    with pytest.raises(ValueError, match="activations='conv3'"):
        parse_positions('conv3', 'activations')
    with pytest.raises(ValueError, match='each at most once'):
        parse_positions('conv1+conv1', 'norms')


def test_bad_switches_raise_clear_errors():
    with pytest.raises(ValueError, match="needs stem='patchify'"):
        timm.create_model('resnet_ablation_pico', patch_size=8)
    with pytest.raises(ValueError, match='kernel_size must be odd'):
        timm.create_model('resnet_ablation_pico', kernel_size=4)
    with pytest.raises(ValueError, match="stem must be 'classic' or 'patchify'"):
        timm.create_model('resnet_ablation_pico', stem='deep')
    with pytest.raises(ValueError, match='pass stage_strides explicitly'):
        timm.create_model('resnet_ablation_pico', stem='patchify', patch_size=6)
    assert [info['reduction'] for info in timm.create_model(
        'resnet_ablation_pico', stem='patchify', patch_size=6, stage_strides=(1, 1, 1, 2)).feature_info][-1] == 12
    with pytest.raises(TypeError):
        timm.create_model('resnet_ablation_pico', not_an_argument=1)


def test_timm_contracts():
    model = timm.create_model('resnet_ablation_pico', num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, 512, 2, 2) and model.num_features == 512
        assert model.forward_head(features).shape == (2, 5)
        assert model.forward_head(features, pre_logits=True).shape == (2, 512)
        final, intermediates = model.forward_intermediates(x)
        assert [tuple(item.shape[1:]) for item in intermediates] == [(64, 16, 16), (128, 8, 8), (256, 4, 4),
                                                                     (512, 2, 2)]
        torch.testing.assert_close(final, features)
        model.reset_classifier(3)
        assert model(x).shape == (2, 3) and model.get_classifier().out_features == 3
        model.reset_classifier(0)
        assert model(x).shape == (2, 512)
    extractor = timm.create_model('resnet_ablation_pico', features_only=True, stem='patchify', patch_size=4).eval()
    assert extractor.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        maps = extractor(torch.randn(1, 3, 64, 64))
    assert [m.shape[1] for m in maps] == extractor.feature_info.channels() == [64, 128, 256, 512]
    assert [tuple(m.shape[-2:]) for m in maps] == [(16, 16), (8, 8), (4, 4), (2, 2)]


def test_fuse_folds_the_block_norms_and_keeps_outputs():
    torch.manual_seed(0)
    model = timm.create_model('resnet_ablation_pico', num_classes=4)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))  # move the running statistics off their init
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        model.fuse(prepack=False)
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)
    assert [name for name in layer_kinds(model, nn.BatchNorm2d)] == ['stem.1']
