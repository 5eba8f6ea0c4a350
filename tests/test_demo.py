"""The one-command demo, shrunk to seconds: it must generate, train, evaluate every shift and write a report whose
content is right (every set present, numbers in range, validate.py's JSON contract, a real PNG)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from robustcnn.benchmarks.imagenet_c import CORRUPTIONS
from robustcnn.synthetic.benchmark import CLASS_NAMES
from robustcnn.synthetic.demo import DATASETS, TEXTURE_KEY, default_model_kwargs, training_flags, DemoOptions

from helpers_train import REPO_ROOT, subprocess_env

SHRUNK = ['--model', 'robust_resnet_dw_pico', '--epochs', '1', '--batch-size', '16', '--workers', '0',
          '--train-per-class', '6', '--val-per-class', '3', '--shift-per-class', '2', '--corruption-per-class', '1']


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    root = tmp_path_factory.mktemp('demo')
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / 'scripts' / 'demo.py'), *SHRUNK, '--output', str(root / 'out')],
        cwd=root, capture_output=True, text=True, timeout=240, env=subprocess_env(ROBUSTCNN_CACHE=str(root / 'cache')))
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed, root / 'out' / 'robust_resnet_dw_pico-seed0'


def _percent(value: object) -> bool:
    return isinstance(value, (int, float)) and 0.0 <= value <= 100.0


@pytest.mark.slow
def test_demo_writes_a_complete_report(demo_run) -> None:
    completed, run_dir = demo_run
    for name in ('report.md', 'report.json', 'report.png', 'last.pth.tar', 'summary.csv'):
        assert (run_dir / name).is_file(), name
        assert str(run_dir / name) in completed.stdout or name in ('summary.csv',)
    cache = run_dir.parents[1] / 'cache'
    generated = [entry for entry in cache.iterdir() if entry.name.startswith('synthetic-v1-seed0-')]
    assert len(generated) == 1 and (generated[0] / 'manifest.json').is_file()

    payload = json.loads((run_dir / 'report.json').read_text())
    assert payload['model'] == 'robust_resnet_dw_pico'
    assert payload['checkpoint'] == str(run_dir / 'last.pth.tar')
    results = payload['results']
    assert set(results) == {key for key, *_ in DATASETS} | {TEXTURE_KEY}
    for key, *_ in DATASETS:
        if key == 'imagenet-c':
            continue
        entry = results[key]
        assert _percent(entry['top1']) and _percent(entry['top5']) and entry['top1'] <= entry['top5']
        assert entry['num_samples'] == 10 * (3 if key == 'imagenet' else 2) and entry['skipped_files'] == 0
        assert tuple(entry['preprocessing']['input_size']) == (3, 64, 64)  # from the checkpoint, not 224
    corruption = results['imagenet-c']
    assert list(corruption['errors']) == list(CORRUPTIONS)
    assert all(list(by_severity) == ['1', '2', '3', '4', '5'] and all(map(_percent, by_severity.values()))
               for by_severity in corruption['errors'].values())
    assert corruption['num_samples'] == 75 * 10 and corruption['partial'] is False
    mean = sum(value for row in corruption['errors'].values() for value in row.values()) / 75
    assert math.isclose(corruption['mean_corruption_error'], mean, abs_tol=1e-3)

    demo = payload['demo']
    assert demo['benchmark']['class_names'] == list(CLASS_NAMES)
    assert demo['training']['epochs'] == 1 and demo['training']['model_kwargs'] == {'patch_size': 8, 'kernel_size': 7}
    assert all(_percent(value) for value in demo['summary'].values() if value is not None)
    assert math.isclose(demo['summary']['clean (val)'], results['imagenet']['top1'])
    timing = demo['timing']
    assert timing['total_seconds'] >= timing['training_seconds'] > 0
    assert math.isclose(timing['total_seconds'], timing['generation_seconds'] + timing['training_seconds']
                        + timing['evaluation_seconds'], abs_tol=0.01)  # rounded to 4 decimals in JSON


@pytest.mark.slow
def test_demo_markdown_and_figure(demo_run) -> None:
    completed, run_dir = demo_run
    markdown = (run_dir / 'report.md').read_text()
    payload = json.loads((run_dir / 'report.json').read_text())
    rows = {line.split('|')[1].strip(): line.split('|')[3].strip() for line in markdown.splitlines()
            if line.startswith('| ') and line.count('|') == 4}
    for *_, title in DATASETS:
        assert title in rows
    assert rows['clean (val)'] == f'{payload["results"]["imagenet"]["top1"]:.1f}'
    assert 'shape bias' in rows and 'stylized: texture decisions' in rows
    assert '| gaussian_noise |' in markdown and '| jpeg_compression |' in markdown  # validate.py's C table
    assert 'Time:' in markdown and 'clean (val)' in completed.stdout
    png = (run_dir / 'report.png').read_bytes()
    assert png.startswith(b'\x89PNG\r\n\x1a\n')
    with Image.open(run_dir / 'report.png') as image:
        image.verify()
    with Image.open(run_dir / 'report.png') as image:
        assert image.size[0] > 600 and image.size[1] > 300


def test_a_second_run_into_the_same_folder_is_refused(demo_run) -> None:
    completed, run_dir = demo_run
    again = subprocess.run(
        [sys.executable, str(REPO_ROOT / 'scripts' / 'demo.py'), *SHRUNK, '--output', str(run_dir.parent)],
        capture_output=True, text=True, timeout=120, env=subprocess_env(ROBUSTCNN_CACHE=str(run_dir.parents[1] /
                                                                                            'cache')))
    assert again.returncode == 2
    assert again.stderr.startswith('demo.py: error: ') and 'already holds a run' in again.stderr
    assert again.stderr.count('\n') == 1  # refused before any generation or training


def test_other_models_get_64_px_arguments_and_the_recipe() -> None:
    assert default_model_kwargs('robust_resnet_dw_nano', 64) == {'patch_size': 8, 'kernel_size': 7}
    assert default_model_kwargs('vit_tiny_patch16_224', 64) == {'img_size': 64, 'patch_size': 8}
    assert default_model_kwargs('resnet18', 64) == {}
    flags = training_flags(DemoOptions(model='resnet18'), Path('/data'), 'run')
    for recipe_flag in ('--aa', '--aug-repeats', '--reprob', '--mixup', '--cutmix', '--smoothing', '--drop-path',
                        '--opt', '--sched', '--warmup-epochs'):
        assert recipe_flag in flags
    assert '--model-kwargs' not in flags
    from robustcnn.config import parse_train_args
    args = parse_train_args(training_flags(DemoOptions(), Path('/data'), 'run'))  # train.py accepts them all
    assert args.model_kwargs == {'patch_size': 8, 'kernel_size': 7} and args.img_size == 64 and args.crop_pct == 1.0
