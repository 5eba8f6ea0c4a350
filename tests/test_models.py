"""Robust-ResNet models: architecture facts, released-checkpoint compatibility, the design knobs, timm's API."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn

import robustcnn
from robustcnn.checkpoint import load_model_weights
from robustcnn.models import RobustResNet

from reference_weights import deterministic_input, deterministic_state_dict

DATA = Path(__file__).parent / 'data'
RELEASED = {
    # name: (params in millions, GMACs at 224, feature reductions)
    'robust_resnet_dw_small': (38.56, 4.47, [16, 16, 16, 32]),
    'robust_resnet_inverted_dw_small': (33.62, 4.57, [16, 16, 16, 32]),
    'robust_resnet_up_inverted_dw_small': (34.43, 4.42, [16, 16, 16, 32]),
    'robust_resnet_down_inverted_dw_small': (34.32, 4.53, [16, 16, 32, 32]),
}
RELEASED_LAYOUT = json.loads((DATA / 'released_state_dict_layout.json').read_text())


def count_macs(model: nn.Module, size: int) -> int:
    """Multiply-accumulates of convs and linears, counted from the shapes each layer actually produces."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kernel_h, kernel_w = module.kernel_size
            total += output.numel() * (module.in_channels // module.groups) * kernel_h * kernel_w
        else:
            total += module.in_features * module.out_features * output.shape[0]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for handle in handles:
        handle.remove()
    return total


def test_import_registers_models():
    names = timm.list_models('robust_resnet*')
    assert set(RELEASED) <= set(names)
    assert {'robust_resnet_dw_pico', 'robust_resnet_dw_nano'} <= set(names)
    assert robustcnn.__version__


@pytest.mark.parametrize('name', RELEASED)
def test_params_macs_and_features_match_the_release_table(name):
    params_m, gmacs, reductions = RELEASED[name]
    model = timm.create_model(name).eval()
    params = sum(p.numel() for p in model.parameters())
    assert params / 1e6 == pytest.approx(params_m, rel=0.005)
    assert count_macs(model, 224) / 1e9 == pytest.approx(gmacs, rel=0.005)
    assert [info['reduction'] for info in model.feature_info] == reductions
    assert not any('gamma' in key for key in model.state_dict()), 'released models have no layer scale'
    bn_count = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    relu_count = sum(isinstance(m, nn.ReLU) for m in model.modules())
    blocks = sum(len(stage.blocks) for stage in model.stages)
    shortcut_bns = sum(isinstance(m, nn.Sequential) and isinstance(m[-1], nn.BatchNorm2d) for m in model.modules())
    assert bn_count - shortcut_bns == blocks, 'exactly one BatchNorm per block'
    assert relu_count == blocks, 'exactly one ReLU per block'


@pytest.mark.parametrize('name', RELEASED)
def test_forward_and_feature_shapes(name):
    _, _, reductions = RELEASED[name]
    model = timm.create_model(name).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (2, 1000)
        features = model.forward_features(torch.randn(1, 3, 224, 224))
    assert features.shape == (1, model.num_features, 7, 7)
    extractor = timm.create_model(name, features_only=True).eval()
    assert extractor.feature_info.reduction() == reductions
    with torch.no_grad():
        maps = extractor(torch.randn(1, 3, 224, 224))
    assert [tuple(m.shape[-2:]) for m in maps] == [(224 // r, 224 // r) for r in reductions]
    assert [m.shape[1] for m in maps] == extractor.feature_info.channels()


@pytest.mark.parametrize('name', RELEASED)
def test_released_key_layout_loads_strictly(name):
    """A state dict with exactly the released keys and shapes (recorded from the original code) loads strictly."""
    model = timm.create_model(name)
    layout = RELEASED_LAYOUT[name]
    assert [key for key, _ in layout] == list(model.state_dict()), 'key names and order equal the release'
    state = {key: torch.full(shape, 0.5) if 'num_batches' not in key else torch.tensor(3) for key, shape in layout}
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(model.stem.weight, torch.full((96, 3, 16, 16), 0.5))


@pytest.mark.parametrize('name', RELEASED)
def test_outputs_equal_the_original_implementation(name):
    """Logits from fixed weights equal those the original release's code computed (tests/data)."""
    reference = json.loads((DATA / 'original_outputs.json').read_text())['models'][name]
    model = timm.create_model(name).eval().double()
    model.load_state_dict(deterministic_state_dict(model))
    with torch.no_grad():
        logits = model(deterministic_input(64).double())[0]
    expected = torch.tensor(reference['logits_every_25th'], dtype=torch.float64)
    torch.testing.assert_close(logits[::25], expected, rtol=1e-9, atol=1e-9)
    assert logits.mean().item() == pytest.approx(reference['logits_mean'], abs=1e-9)


def _checkpoint_forms(state):
    prefixed = {f'module.{k}': v for k, v in state.items()}
    return {
        'bare': state,
        'model': {'model': state, 'epoch': 299},
        'state_dict': {'state_dict': state, 'arch': 'x'},
        'state_dict_ema': {'state_dict_ema': state},
        'module_prefix_model': {'model': prefixed},
        'module_prefix_bare': prefixed,
    }


@pytest.mark.parametrize('form', list(_checkpoint_forms({})))
def test_every_released_checkpoint_form_loads_via_timm_pretrained_overlay(tmp_path, form):
    source = timm.create_model('robust_resnet_inverted_dw_small')
    state = source.state_dict()
    path = tmp_path / f'{form}.pth'
    torch.save(_checkpoint_forms(state)[form], path)
    model = timm.create_model(
        'robust_resnet_inverted_dw_small', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    # and through the project's own loader (validate.py / resume use it), EMA picked when asked
    fresh = timm.create_model('robust_resnet_inverted_dw_small')
    load_model_weights(fresh, path, use_ema=(form == 'state_dict_ema'))
    assert torch.equal(fresh.stages[2].blocks[5].conv_dw.weight, source.stages[2].blocks[5].conv_dw.weight)


def test_layer_scale_off_by_default_and_on_when_asked():
    plain = timm.create_model('robust_resnet_dw_pico')
    assert all(stage.blocks[0].gamma is None for stage in plain.stages)
    scaled = timm.create_model('robust_resnet_dw_pico', layer_scale_init_value=1e-6)
    gammas = [name for name, _ in scaled.named_parameters() if name.endswith('gamma')]
    assert len(gammas) == 4
    block = scaled.stages[1].blocks[0]
    assert block.gamma.shape == (4 * 32,)  # DW blocks output 4d
    assert torch.all(block.gamma == 1e-6)
    # the residual branch is scaled by gamma: with gamma 0 the block reduces to act(shortcut(x))
    with torch.no_grad():
        block.gamma.zero_()
    block.eval()
    x = torch.randn(1, 64, 4, 4)  # stage 1 input: the DW stage 0 outputs 4 * 16 channels
    with torch.no_grad():
        assert torch.allclose(block(x), torch.relu(block.downsample(x)))


def test_drop_path_only_in_training():
    model = timm.create_model('robust_resnet_dw_pico', drop_path_rate=0.9, patch_size=4)
    reference = timm.create_model('robust_resnet_dw_pico', drop_path_rate=0.0, patch_size=4)
    reference.load_state_dict(model.state_dict())
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    reference.eval()
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
        model.train()
        reference.train()
        torch.manual_seed(0)
        dropped = model(x)
        torch.manual_seed(1)
        dropped_again = model(x)
        kept = reference(x)
    assert not torch.allclose(dropped, kept)
    assert not torch.allclose(dropped, dropped_again)
    rates = [stage.blocks[0].drop_path.drop_prob if hasattr(stage.blocks[0].drop_path, 'drop_prob') else 0.0
             for stage in model.stages]
    assert rates == pytest.approx([0.0, 0.3, 0.6, 0.9]), 'linear 0 -> drop_path_rate over all blocks'


@pytest.mark.parametrize('block_type,out_mult', [('dw', 4), ('inverted_dw', 1), ('up_inverted_dw', 1),
                                                 ('down_inverted_dw', 1)])
@pytest.mark.parametrize('patch_size', [4, 8])
def test_design_knobs_produce_the_right_shapes(block_type, out_mult, patch_size):
    dims = (8, 16, 32, 64)
    model = RobustResNet(block_type=block_type, depths=(1, 2, 1, 1), dims=dims, patch_size=patch_size,
                         kernel_size=5, mlp_ratio=2., stage_strides=(1, 2, 1, 2), num_classes=7).eval()
    size = 64
    expected_reductions = [patch_size, patch_size * 2, patch_size * 2, patch_size * 4]
    assert [info['reduction'] for info in model.feature_info] == expected_reductions
    assert [info['num_chs'] for info in model.feature_info] == [d * (2 if out_mult == 4 else 1) for d in dims], 'DW outputs mlp_ratio * d'
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(torch.randn(2, 3, size, size))
        logits = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 7)
    assert [tuple(t.shape[-2:]) for t in intermediates] == [(size // r, size // r) for r in expected_reductions]
    assert model.stem.kernel_size == (patch_size, patch_size) and model.stem.stride == (patch_size, patch_size)
    conv_dw = model.stages[1].blocks[0].conv_dw
    assert conv_dw.kernel_size == (5, 5) and conv_dw.padding == (2, 2)
    stride_holder = model.stages[1].blocks[-1 if block_type == 'down_inverted_dw' else 0]
    assert stride_holder.conv_dw.stride == (2, 2)


def test_stride_point_knob_moves_the_stride():
    first = RobustResNet(block_type='down_inverted_dw', depths=(1, 1, 3, 1), dims=(8, 16, 32, 64),
                         stage_strides=(1, 1, 2, 1), stride_block='first')
    last = RobustResNet(block_type='down_inverted_dw', depths=(1, 1, 3, 1), dims=(8, 16, 32, 64),
                        stage_strides=(1, 1, 2, 1))
    assert first.stages[2].blocks[0].stride == 2 and first.stages[2].blocks[2].stride == 1
    assert last.stages[2].blocks[0].stride == 1 and last.stages[2].blocks[2].stride == 2
    # Down-Inverted: width change in the first block and stride in the last each get their own projection
    assert isinstance(last.stages[2].blocks[0].downsample, nn.Sequential)
    assert isinstance(last.stages[2].blocks[1].downsample, nn.Identity)
    assert last.stages[2].blocks[2].downsample[0].stride == (2, 2)


def test_activation_knob():
    model = RobustResNet(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), act_layer='gelu')
    assert sum(type(m).__name__ == 'GELU' for m in model.modules()) == 4
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())


def test_bad_knobs_raise_clear_errors():
    with pytest.raises(ValueError, match='unknown block_type'):
        RobustResNet(block_type='bottleneck')
    with pytest.raises(ValueError, match='output_stride 16 is not supported'):
        RobustResNet(output_stride=16)
    with pytest.raises(ValueError, match="stride_block must be 'first' or 'last'"):
        RobustResNet(stride_block='middle')
    with pytest.raises(TypeError):
        timm.create_model('robust_resnet_dw_pico', not_an_argument=1)


def test_classifier_api():
    model = timm.create_model('robust_resnet_dw_pico').eval()
    assert model.get_classifier() is model.head.fc
    model.reset_classifier(10)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (2, 10)
        model.reset_classifier(0)
        assert model(x).shape == (2, 512)
        model.reset_classifier(5, global_pool='')
        assert model.head.fc.out_features == 5
        model.reset_classifier(0, global_pool='')
        assert model(x).shape == (2, 512, 2, 2)
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    assert pooled.shape == (2, 512, 2, 2)


def test_grad_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = timm.create_model('robust_resnet_dw_pico', patch_size=4)
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    assert all(stage.grad_checkpointing for stage in model.stages)
    model(x).sum().backward()
    for expected, parameter in zip(plain, model.parameters()):
        torch.testing.assert_close(parameter.grad, expected)


def test_group_matcher_splits_stem_and_blocks():
    from timm.models._manipulate import group_parameters
    model = timm.create_model('robust_resnet_dw_pico')
    groups = group_parameters(model, model.group_matcher(coarse=False))
    assert 'stem.weight' in groups[0] and len(groups) == 6  # stem, 4 blocks, head


def test_init_is_the_release_resnet_init():
    model = timm.create_model('robust_resnet_dw_small')
    conv = model.stages[2].blocks[3].pwconv1
    assert torch.all(conv.bias == 0)
    expected_std = (2.0 / (conv.out_channels * 1 * 1)) ** 0.5  # kaiming normal, fan_out, relu
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.05)
    norm = model.stages[2].blocks[3].norm1
    assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)


def test_default_cfg():
    model = timm.create_model('robust_resnet_dw_small')
    cfg = model.pretrained_cfg
    assert cfg['input_size'] == (3, 224, 224) and cfg['pool_size'] == (7, 7)
    assert cfg['crop_pct'] == 0.875 and cfg['interpolation'] == 'bicubic'
    assert cfg['first_conv'] == 'stem' and cfg['classifier'] == 'head.fc'
    assert cfg['mean'] == timm.data.IMAGENET_DEFAULT_MEAN and cfg['std'] == timm.data.IMAGENET_DEFAULT_STD


def test_module_entry_point_lists_models():
    result = subprocess.run([sys.executable, '-m', 'robustcnn'], capture_output=True, text=True, check=True)
    assert f'robustcnn {robustcnn.__version__}' in result.stdout
    assert 'robust_resnet_down_inverted_dw_small' in result.stdout


def _listed_families(stdout: str) -> dict[str, list[str]]:
    """`robustcnn models` output -> {family heading: [the lines under it]}."""
    families: dict[str, list[str]] = {}
    for line in stdout.split('registered models:\n', 1)[1].splitlines():
        if line.startswith('    '):
            families[list(families)[-1]].append(line.strip())
        elif line.startswith('  '):
            families[line.strip()] = []
    return families


def test_models_command_lists_both_families_under_their_own_headings():
    listed = _listed_families(subprocess.run([sys.executable, '-m', 'robustcnn', 'models'], capture_output=True,
                                             text=True, check=True).stdout)
    robust, ablation = listed  # Robust-ResNet first, then the section-4 ablation family
    assert robust.startswith('Robust-ResNet') and 'section 4' in ablation
    assert set(RELEASED) | {'robust_resnet_dw_pico', 'robust_resnet_dw_nano'} <= set(listed[robust])
    assert all(name.startswith('robust_resnet_') for name in listed[robust])
    assert listed[ablation] == ['resnet_ablation_50', 'resnet_ablation_nano', 'resnet_ablation_pico',
                                'resnet_ablation_small']

    with_params = _listed_families(subprocess.run([sys.executable, '-m', 'robustcnn', 'models', '--params'],
                                                  capture_output=True, text=True, check=True).stdout)
    counts = {line.split()[0]: line.split()[1] for lines in with_params.values() for line in lines}
    assert counts['resnet_ablation_50'] == f'{25_557_032 / 1e6:.2f}'  # timm's resnet50, layer for layer
    assert counts['robust_resnet_dw_small'] == f'{RELEASED["robust_resnet_dw_small"][0]:.2f}'


@pytest.mark.parametrize('name', ['robust_resnet_dw_nano', 'robust_resnet_inverted_dw_nano',
                                  'robust_resnet_up_inverted_dw_nano', 'robust_resnet_down_inverted_dw_nano'])
def test_fuse_folds_every_batchnorm_and_keeps_outputs(name):
    from timm.utils.model import reparameterize_model
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    for module in model.modules():  # non-trivial statistics, else folding would be a no-op
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.2)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        via_timm = reparameterize_model(model)  # timm's hook, on a copy
        fused = model.fuse()
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
        assert not any(isinstance(m, nn.BatchNorm2d) for m in via_timm.modules())
        torch.testing.assert_close(fused(x), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(via_timm(x), expected, rtol=1e-4, atol=1e-5)
