"""The one-command demo, shrunk to seconds: it must generate, train, evaluate every shift and write a report whose
content is right (every set present, numbers in range, validate.py's JSON contract, a real PNG)."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from robustcnn.benchmarks.imagenet_c import CORRUPTIONS
from robustcnn.synthetic.benchmark import CLASS_NAMES
from robustcnn.synthetic.demo import (DATASETS, HEADLINES, STATE_NAME, TEXTURE_KEY, DemoOptions, _check_run_folder,
                                     _options_record, build_parser, default_model_kwargs, options_from_args,
                                     training_flags)

from helpers_train import REPO_ROOT, subprocess_env

SHRUNK = ['--model', 'robust_resnet_dw_pico', '--epochs', '2', '--batch-size', '16', '--workers', '0',
          '--train-per-class', '6', '--val-per-class', '3', '--shift-per-class', '2', '--corruption-per-class', '1']
UPDATES_PER_EPOCH = 60 // 16  # 10 classes x 6 images, full batches of 16 (repeated augmentation keeps the length)


def _demo(root: Path, *extra: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / 'scripts' / 'demo.py'), *SHRUNK, '--output', str(root / 'out'), *extra],
        cwd=root, capture_output=True, text=True, timeout=240,
        env=subprocess_env(ROBUSTCNN_CACHE=str(root / 'cache'), **env))


@pytest.fixture(scope='module')
def demo_runs(tmp_path_factory) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess, Path]:
    """A demo killed in its second epoch, then run again with the same command: it must continue, not restart."""
    root = tmp_path_factory.mktemp('demo')
    killed = _demo(root, ROBUSTCNN_KILL_AFTER_UPDATES=str(UPDATES_PER_EPOCH + 1))
    assert killed.returncode == -9, killed.stderr[-3000:]
    completed = _demo(root)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return killed, completed, root / 'out' / 'robust_resnet_dw_pico-seed0'


@pytest.fixture(scope='module')
def demo_run(demo_runs) -> tuple[subprocess.CompletedProcess, Path]:
    return demo_runs[1], demo_runs[2]


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
    assert demo['training']['epochs'] == 2 and demo['training']['model_kwargs'] == {'patch_size': 8, 'kernel_size': 7}
    assert all(_percent(value) for value in demo['summary'].values() if value is not None)
    assert math.isclose(demo['summary']['clean validation'], results['imagenet']['top1'])
    assert demo['chance_top1'] == 10.0 and demo['sessions'] == 2
    timing = demo['timing']
    assert timing['total_seconds'] >= timing['training_seconds'] > 0
    assert math.isclose(timing['total_seconds'], timing['generation_seconds'] + timing['training_seconds']
                        + timing['evaluation_seconds'], abs_tol=0.01)  # rounded to 4 decimals in JSON


@pytest.mark.slow
def test_demo_markdown_and_figure(demo_run) -> None:
    completed, run_dir = demo_run
    markdown = (run_dir / 'report.md').read_text()
    payload = json.loads((run_dir / 'report.json').read_text())
    rows = {line.split('|')[1].strip(): line.split('|')[2].strip()
            for line in markdown.split('\n---\n')[0].splitlines() if line.startswith('| ') and line.count('|') == 3
            and not line.startswith('| set |')}
    assert list(rows) == [label for _, label in HEADLINES]  # the six headline numbers, README's labels
    assert rows['clean validation'] == f'{payload["results"]["imagenet"]["top1"]:.1f}'
    shape, texture = payload['results']['stylized-imagenet']['top1'], payload['results'][TEXTURE_KEY]['top1']
    if shape + texture:
        assert rows[HEADLINES[-1][1]] == f'{100 * shape / (shape + texture):.1f}'
    assert f'Texture decisions (stylized images classified as the class whose texture they wear): {texture:.1f}%' \
        in markdown
    assert 'chance (a guess among 10 classes) is 10% top-1' in markdown and 'Sketch is the hardest shift' in markdown
    readme = (REPO_ROOT / 'README.md').read_text()
    for _, label in HEADLINES:
        assert f'| {label} |' in readme  # README's table uses the report's labels
    assert '| gaussian_noise |' in markdown and '| jpeg_compression |' in markdown  # validate.py's C table
    assert 'Time:' in markdown and 'clean validation' in completed.stdout
    png = (run_dir / 'report.png').read_bytes()
    assert png.startswith(b'\x89PNG\r\n\x1a\n')
    with Image.open(run_dir / 'report.png') as image:
        image.verify()
    with Image.open(run_dir / 'report.png') as image:
        assert image.size[0] > 600 and image.size[1] > 300


@pytest.mark.slow
def test_a_killed_demo_continues_where_it_stopped(demo_runs) -> None:
    killed, completed, run_dir = demo_runs
    assert 'Train: 0 [1/3' in killed.stderr  # the first progress line comes after the first update
    assert 'Train: 1 [' not in killed.stderr.split('epoch 0:')[0]
    assert 'continuing the demo' in completed.stderr and 'resumed from' in completed.stderr
    assert 'Train: 0 [' not in completed.stderr and 'Train: 1 [' in completed.stderr  # epoch 0 is not trained again
    assert 'synthetic benchmark: using' in completed.stderr  # the benchmark is not generated again
    with (run_dir / 'summary.csv').open() as file:
        assert [row['epoch'] for row in csv.DictReader(file)] == ['0', '1']
    state = json.loads((run_dir / STATE_NAME).read_text())
    assert state['finished'] is True and state['sessions'] == 2
    # the evaluation log names the synthetic sets for what they are, and has no (empty) README row
    assert 'README row' not in completed.stderr and ' INFO imagenet: ' not in completed.stderr
    assert ' INFO clean (val): top1 ' in completed.stderr and 'corruptions (15 x 5): mean_corruption_error' in \
        completed.stderr


@pytest.mark.slow
def test_a_finished_demo_prints_its_report_again(demo_run) -> None:
    completed, run_dir = demo_run
    report = (run_dir / 'report.json').read_bytes()
    again = _demo(run_dir.parents[1])
    assert again.returncode == 0, again.stderr[-2000:]
    assert 'holds a finished demo' in again.stderr and 'Train:' not in again.stderr
    assert again.stdout == completed.stdout  # the same report, nothing recomputed
    assert (run_dir / 'report.json').read_bytes() == report


def test_other_options_or_foreign_files_are_refused_and_fresh_moves_the_old_run_aside(tmp_path: Path) -> None:
    run_dir = tmp_path / 'out' / 'robust_resnet_dw_pico-seed0'
    run_dir.mkdir(parents=True)
    (run_dir / 'args.yaml').write_text('model: x\n')
    refused = _demo(tmp_path)
    assert refused.returncode == 2 and refused.stderr.count('\n') == 1
    assert refused.stderr.startswith('demo.py: error: ') and 'not a demo run' in refused.stderr
    assert '--fresh' in refused.stderr

    options = options_from_args(build_parser().parse_args(SHRUNK + ['--output', str(tmp_path / 'out')]))
    (run_dir / 'args.yaml').unlink()
    (run_dir / STATE_NAME).write_text(json.dumps({'options': {**_options_record(options), 'epochs': 5}}))
    other = _demo(tmp_path)
    assert other.returncode == 2 and 'other options (epochs 5 -> 2)' in other.stderr

    fresh = options_from_args(build_parser().parse_args(SHRUNK + ['--output', str(tmp_path / 'out'), '--fresh']))
    assert _check_run_folder(fresh, run_dir) is None
    moved = [entry for entry in run_dir.parent.iterdir() if entry.name.startswith(f'{run_dir.name}.old-')]
    assert not run_dir.exists() and len(moved) == 1
    assert json.loads((moved[0] / STATE_NAME).read_text())['options']['epochs'] == 5  # kept, never deleted


def test_help_is_one_text_per_command_with_every_default() -> None:
    text = ' '.join(build_parser('robustcnn demo').format_help().split())
    assert text.startswith('usage: robustcnn demo ')
    assert '(default: 12)' in text and '(default: robust_resnet_dw_nano)' in text and '--fresh' in text


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

