"""The speed tool's behaviour on tiny inputs (no speed targets here: those live in BENCHMARKS.md)."""
from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from robustcnn.engine.runtime import init_runtime
from robustcnn.speed import throughput
from robustcnn.speed.pipelines import (build_imagenet_c_tree, save_random_checkpoint, time_one_pipeline,
                                       time_per_folder_loop, time_train_loop_overhead)
from robustcnn.speed.throughput import (SpeedSettings, add_reference_ratios, format_table, measure_model,
                                        measure_models, parse_variant, skipped_result, time_steps, write_results)

REPO = Path(__file__).resolve().parent.parent
TINY = dict(batch_size=2, img_size=32, warmup=1, iterations=1, repeats=2, timer='cpu')


def test_parse_variant_and_errors():
    assert parse_variant('amp+channels_last') == {'amp': True, 'channels_last': True, 'compile': False, 'fuse': True}
    assert parse_variant('unfused')['fuse'] is False
    with pytest.raises(ValueError, match='unknown variant'):
        parse_variant('fast')


def test_time_steps_counts_every_step_and_refuses_cpu_timer_on_cuda():
    calls = []
    seconds, warmup_seconds = time_steps(lambda: calls.append(1), init_runtime('cpu'), warmup=2, iterations=3,
                                         repeats=4)
    assert len(calls) == 2 + 3 * 4 and len(seconds) == 4 and all(value >= 0 for value in seconds + [warmup_seconds])
    cuda = dataclasses.replace(init_runtime('cpu'), kind='cuda')  # only its kind is read before the check
    with pytest.raises(ValueError, match='CPU device'):
        time_steps(lambda: None, cuda, 0, 1, 1, timer='cpu')


def test_measure_models_train_and_infer_with_ratios(tmp_path):
    seen = []
    results = measure_models(['robust_resnet_dw_pico', 'resnet18'], ['train', 'infer'], ['base', 'unfused'],
                             SpeedSettings(model='', **TINY), on_result=seen.append)
    # 'unfused' is an inference-only variant: 2 models x (train base, infer base, infer unfused)
    assert [(r.model, r.mode, r.variant) for r in results] == [
        ('robust_resnet_dw_pico', 'train', 'base'), ('resnet18', 'train', 'base'),
        ('robust_resnet_dw_pico', 'infer', 'base'), ('resnet18', 'infer', 'base'),
        ('robust_resnet_dw_pico', 'infer', 'unfused'), ('resnet18', 'infer', 'unfused')]
    assert seen == results
    assert all(r.error is None and r.images_per_second > 0 and r.img_size == 32 for r in results)
    add_reference_ratios(results, ['resnet18'])
    for result in results:
        expected = result.images_per_second / next(
            r for r in results if r.model == 'resnet18' and r.mode == result.mode and r.variant == result.variant
        ).images_per_second
        assert result.ratios['resnet18'] == pytest.approx(expected, rel=1e-2)
    table = format_table(results, ['resnet18'])
    assert table.count('\n') == 2 + len(results) and 'x resnet18' in table
    write_results(results, tmp_path / 'out.json', {'cpu': 'test'})
    payload = json.loads((tmp_path / 'out.json').read_text())
    assert payload['machine'] == {'cpu': 'test'} and len(payload['results']) == len(results)
    write_results(results, tmp_path / 'out.csv', {'cpu': 'test'})
    rows = list(csv.DictReader((tmp_path / 'out.csv').open()))
    assert len(rows) == len(results) and rows[0]['ratio_resnet18'] and rows[0]['cpu'] == 'test'
    with pytest.raises(ValueError, match='.json or .csv'):
        write_results(results, tmp_path / 'out.txt')


def test_a_failing_measurement_is_recorded_not_raised(tmp_path, monkeypatch):
    result = measure_model(SpeedSettings(model='robust_resnet_dw_pico', mode='sideways', **TINY))
    assert result.error and 'mode' in result.error
    assert 'error: ' in format_table([result])

    def out_of_memory():
        raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')

    monkeypatch.setattr(throughput, '_build_step', lambda settings, runtime: (out_of_memory, torch.nn.Linear(1, 1), 32))
    result = measure_model(SpeedSettings(model='robust_resnet_dw_pico', variant='amp', **TINY))
    assert result.error == 'out of memory: CUDA out of memory. Tried to allocate 2.00 GiB'
    skipped = skipped_result(SpeedSettings(model='resnet18', variant='compile', **TINY), 'did not fit')
    write_results([result, skipped], tmp_path / 'failed.json')
    rows = json.loads((tmp_path / 'failed.json').read_text(), parse_constant=pytest.fail)['results']  # no NaN
    assert [(row['images_per_second'], row['error'], row['skipped']) for row in rows] == [
        (None, result.error, None), (None, None, 'did not fit')]
    assert '| resnet18 | infer | compile | 2 | skipped: did not fit |' in format_table([skipped])


def test_cli_writes_results_and_rejects_bad_flags(tmp_path):
    out = tmp_path / 'bench.json'
    command = [sys.executable, str(REPO / 'scripts' / 'speed.py'), '--models', 'robust_resnet_dw_pico',
               '--references', 'resnet18', '--modes', 'infer', '--device', 'cpu', '-b', '1', '--img-size', '32',
               '--warmup', '0', '--iterations', '1', '--repeats', '1', '--threads', '1', '--timer', 'cpu',
               '--results-file', str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert '| robust_resnet_dw_pico | infer | base |' in done.stdout and 'cpu_count=' in done.stdout
    assert {row['variant'] for row in json.loads(out.read_text())['results']} == {'base', 'unfused'}
    bad = subprocess.run(command[:2] + ['--models', 'no_such_model'], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and 'unknown model' in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_imagenet_c_pipeline_benchmark_counts_every_image_in_both_paths(tmp_path):
    root = build_imagenet_c_tree(tmp_path / 'c', num_classes=1, images_per_class=1, image_size=32)
    checkpoint = save_random_checkpoint('robust_resnet_dw_pico', tmp_path / 'w.pth')
    seconds, payload = time_one_pipeline(root, 'robust_resnet_dw_pico', checkpoint, batch_size=16, workers=0)
    result = payload['results']['imagenet-c']
    assert seconds > 0 and result['num_samples'] == 75 and result['skipped_files'] == 0
    seconds, mean_error = time_per_folder_loop(root, 'robust_resnet_dw_pico', checkpoint, batch_size=16, workers=0)
    # one wnid folder (ImageNet class 0) per severity: the loop's folder-order label is the same class
    assert seconds > 0 and mean_error == pytest.approx(result['mean_corruption_error'])
    _, payload = time_one_pipeline(root, 'robust_resnet_dw_pico', checkpoint, batch_size=16, workers=0,
                                   decode_on_device=True)
    assert payload['results']['imagenet-c']['errors'] == result['errors']


def test_train_loop_overhead_measures_both_loops():
    result = time_train_loop_overhead('robust_resnet_dw_pico', batch_size=2, img_size=32, steps=2, repeats=1)
    assert result['train_loop_step_ms'] > 0 and result['bare_step_ms'] > 0
    assert result['overhead_percent'] == pytest.approx(
        100 * (result['train_loop_step_ms'] / result['bare_step_ms'] - 1))
