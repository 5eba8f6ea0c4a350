"""validate.py uses what a training checkpoint records: model arguments and preprocessing, unless overridden.

The regression: a model trained with ``--model-kwargs patch_size=8`` at 32 px failed to load in validate.py (stem
shape mismatch) and would have been evaluated at the model name's 224 px.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

import robustcnn  # noqa: F401  (registers the models)
from robustcnn.benchmarks.runner import ValidationRequest, apply_checkpoint_defaults, run_validation
from robustcnn.engine.runtime import init_runtime

from helpers_train import make_image_folders, CLASS_COLOURS

CLASSES = sorted(CLASS_COLOURS)
METADATA = {
    'model': 'robust_resnet_dw_pico', 'model_kwargs': {'patch_size': 8}, 'class_names': CLASSES,
    'num_classes': len(CLASSES), 'img_size': 32, 'input_size': [3, 32, 32], 'interpolation': 'bilinear',
    'crop_pct': 1.0, 'mean': [0.5, 0.5, 0.5], 'std': [0.25, 0.25, 0.25],
}


def _checkpoint(path: Path, metadata: dict | None, args: dict | None = None) -> Path:
    torch.manual_seed(0)
    model = timm.create_model('robust_resnet_dw_pico', num_classes=len(CLASSES), patch_size=8)
    checkpoint = {'state_dict': model.state_dict(), 'arch': 'robust_resnet_dw_pico'}
    if metadata is not None:
        checkpoint['metadata'] = metadata
    if args is not None:
        checkpoint['args'] = args
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope='module')
def image_root(tmp_path_factory) -> Path:
    return make_image_folders(tmp_path_factory.mktemp('folders'), train_per_class=1, val_per_class=2, size=40)


def _run(image_root: Path, checkpoint: Path, **options) -> dict:
    request = ValidationRequest(data_dir=str(image_root / 'val'), dataset='folder', checkpoint=str(checkpoint),
                                workers=0, batch_size=4, **options)
    return run_validation(request, init_runtime('cpu'))


def test_checkpoint_metadata_gives_model_kwargs_and_preprocessing(image_root: Path, tmp_path: Path) -> None:
    payload = _run(image_root, _checkpoint(tmp_path / 'trained.pth', METADATA))
    entry = payload['results']['folder']
    assert payload['model'] == 'robust_resnet_dw_pico'
    assert entry['num_samples'] == 2 * len(CLASSES)
    preprocessing = entry['preprocessing']
    assert tuple(preprocessing['input_size']) == (3, 32, 32)
    assert preprocessing['crop_pct'] == 1.0
    assert preprocessing['interpolation'] == 'bilinear'
    assert tuple(preprocessing['mean']) == (0.5, 0.5, 0.5) and tuple(preprocessing['std']) == (0.25, 0.25, 0.25)


def test_flags_override_the_checkpoint(image_root: Path, tmp_path: Path) -> None:
    payload = _run(image_root, _checkpoint(tmp_path / 'trained.pth', METADATA), img_size=48, crop_pct=0.9,
                   interpolation='bicubic', mean=(0.4, 0.4, 0.4))
    preprocessing = payload['results']['folder']['preprocessing']
    assert tuple(preprocessing['input_size']) == (3, 48, 48)
    assert preprocessing['crop_pct'] == 0.9 and preprocessing['interpolation'] == 'bicubic'
    assert tuple(preprocessing['mean']) == (0.4, 0.4, 0.4)
    assert tuple(preprocessing['std']) == (0.25, 0.25, 0.25)  # not overridden: still the checkpoint's


def test_model_kwargs_from_args_when_metadata_lacks_them(image_root: Path, tmp_path: Path) -> None:
    """timm's and older train.py checkpoints record the constructor arguments only under ``args``."""
    metadata = {key: value for key, value in METADATA.items() if key != 'model_kwargs'}
    checkpoint = _checkpoint(tmp_path / 'args_only.pth', metadata, args={'model_kwargs': {'patch_size': 8}})
    payload = _run(image_root, checkpoint)
    assert payload['results']['folder']['num_samples'] == 2 * len(CLASSES)


def test_explicit_model_kwargs_win_and_other_models_get_none() -> None:
    checkpoint = {'metadata': METADATA}
    request = ValidationRequest(data_dir='.', model_kwargs={'patch_size': 4})
    assert apply_checkpoint_defaults(request, checkpoint, 'robust_resnet_dw_pico').model_kwargs == {'patch_size': 4}
    # the stored arguments belong to the stored architecture: not forced onto another model
    other = apply_checkpoint_defaults(ValidationRequest(data_dir='.'), checkpoint, 'resnet18')
    assert other.model_kwargs is None
    assert other.input_size == (3, 32, 32)
    assert apply_checkpoint_defaults(ValidationRequest(data_dir='.'), {'state_dict': {}}, 'resnet18') == \
        ValidationRequest(data_dir='.')
