"""`robustcnn export`: the folder is in timm's Hub layout and round-trips through ``local-dir:`` with the same
outputs, keeps the constructor arguments (patch_size) and preprocessing, and carries a model card."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import robustcnn  # noqa: F401  (registers the models)
from robustcnn.__main__ import main
from robustcnn.cli import UsageError

from helpers_train import subprocess_env

CLASSES = ['apple', 'grass', 'sea', 'sun']
REPO = Path(__file__).resolve().parents[1]


def trained_checkpoint(path: Path) -> tuple[Path, torch.nn.Module]:
    """A train.py-shaped checkpoint of a pico model with patch_size 4, non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    model = timm.create_model('robust_resnet_dw_pico', num_classes=4, patch_size=4)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    model.eval()
    metadata = {'model': 'robust_resnet_dw_pico', 'model_kwargs': {'patch_size': 4}, 'class_names': CLASSES,
                'num_classes': 4, 'img_size': 32, 'input_size': [3, 32, 32], 'interpolation': 'bilinear',
                'crop_pct': 0.9, 'mean': [0.5, 0.4, 0.3], 'std': [0.2, 0.25, 0.3], 'total_batch_size': 1024,
                'learning_rate': 1e-3}
    args = {'data_dir': '/data/colours', 'epochs': 300, 'opt': 'adamw', 'weight_decay': 0.05, 'sched': 'cosine',
            'drop_path': 0.1, 'aa': 'rand-m9-mstd0.5-inc1', 'mixup': 0.8, 'cutmix': 1.0, 'smoothing': 0.1,
            'model_kwargs': {'patch_size': 4}}
    torch.save({'arch': 'robust_resnet_dw_pico', 'state_dict': model.state_dict(), 'epoch': 299, 'args': args,
                'metadata': metadata, 'optimizer': {}}, path)
    return path, model


def test_export_round_trips_through_timm_local_dir(tmp_path, capsys):
    checkpoint, model = trained_checkpoint(tmp_path / 'last.pth.tar')
    results = tmp_path / 'results.json'
    results.write_text(json.dumps({'model': 'robust_resnet_dw_pico', 'results': {
        'imagenet-r': {'top1': 45.9, 'top5': 60.125, 'num_samples': 30000},
        'imagenet-c': {'mean_corruption_error': 42.3, 'mce': 55.5, 'num_samples': 750, 'partial': False}}}))
    out = tmp_path / 'robust-resnet-pico-colours'
    assert main(['export', str(checkpoint), str(out), '--results', str(results)]) == 0
    assert f"local-dir:{out}" in capsys.readouterr().out
    assert sorted(path.name for path in out.iterdir()) == ['README.md', 'config.json', 'model.safetensors']

    loaded = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))
    assert loaded.stem.kernel_size == (4, 4)  # patch_size came back through model_args
    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 'robust_resnet_dw_pico' and config['num_classes'] == 4
    assert config['model_args']['patch_size'] == 4 and config['label_names'] == CLASSES
    cfg = loaded.pretrained_cfg
    assert tuple(cfg['input_size']) == (3, 32, 32) and cfg['crop_pct'] == 0.9 and cfg['interpolation'] == 'bilinear'
    assert tuple(cfg['mean']) == (0.5, 0.4, 0.3) and tuple(cfg['std']) == (0.2, 0.25, 0.3)
    assert cfg['label_names'] == CLASSES and cfg['tag'] == 'colours'
    data_config = timm.data.resolve_data_config({}, model=loaded)
    assert data_config['input_size'] == (3, 32, 32) and data_config['interpolation'] == 'bilinear'
    # the weights are the checkpoint's, tensor for tensor
    weights = load_file(str(out / 'model.safetensors'))
    assert weights.keys() == model.state_dict().keys()
    assert all(torch.equal(weights[name], tensor) for name, tensor in model.state_dict().items())

    card = (out / 'README.md').read_text()
    assert card.startswith('---\n') and 'library_name: timm' in card and 'license: mit' in card
    assert '# Model card for robust-resnet-pico-colours' in card
    assert '  - Epochs: 300\n' in card and '  - Total batch size: 1024\n' in card and '  - Optimizer: adamw\n' in card
    assert '**Dataset:** colours' in card and '  - patch_size: 4' in card
    assert '| imagenet-r | 45.90 | 60.12 | – | – | 30000 |' in card
    assert '| imagenet-c | – | – | 42.30 | 55.50 | 750 |' in card


def test_export_of_a_bare_released_state_dict_needs_the_model_name(tmp_path):
    torch.manual_seed(1)
    model = timm.create_model('robust_resnet_dw_pico', num_classes=10).eval()
    checkpoint = tmp_path / 'released.pth'
    torch.save({'model': model.state_dict()}, checkpoint)
    with pytest.raises(UsageError, match='does not record its model; pass --model'):
        main(['export', str(checkpoint), str(tmp_path / 'out')])
    assert not (tmp_path / 'out').exists()
    assert main(['export', str(checkpoint), str(tmp_path / 'out'), '--model', 'robust_resnet_dw_pico']) == 0
    loaded = timm.create_model(f'local-dir:{tmp_path / "out"}', pretrained=True).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))
    assert loaded.num_classes == 10  # read off the classifier's rows


def test_export_refuses_weights_that_do_not_fit_and_writes_nothing(tmp_path):
    checkpoint = tmp_path / 'wrong.pth'
    torch.save({'model': timm.create_model('robust_resnet_dw_nano').state_dict()}, checkpoint)
    with pytest.raises(Exception, match='does not fit model'):
        main(['export', str(checkpoint), str(tmp_path / 'out'), '--model', 'robust_resnet_dw_pico'])
    assert not (tmp_path / 'out').exists()


def test_push_without_huggingface_hub_or_network_is_one_line(tmp_path, monkeypatch):
    checkpoint, _ = trained_checkpoint(tmp_path / 'last.pth.tar')
    monkeypatch.setitem(sys.modules, 'huggingface_hub', None)
    with pytest.raises(UsageError, match='needs the huggingface_hub package'):
        main(['export', str(checkpoint), str(tmp_path / 'out'), '--push-to-hub', 'someone/model'])
    assert (tmp_path / 'out' / 'config.json').is_file()  # the folder is written first
    monkeypatch.undo()
    completed = subprocess.run(
        [sys.executable, '-m', 'robustcnn', 'export', str(checkpoint), str(tmp_path / 'out2'), '--push-to-hub',
         'someone/model'], cwd=REPO, capture_output=True, text=True, timeout=120,
        env=subprocess_env(HF_HUB_OFFLINE='1', PYTHONPATH=str(REPO)))
    assert completed.returncode == 2, completed.stderr
    [line] = completed.stderr.strip().splitlines()
    assert line.startswith('robustcnn: error: could not push to the Hub') and 'huggingface-cli upload' in line
