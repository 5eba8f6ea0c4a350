"""The study: a two-run grid trains and evaluates end to end, survives a kill (finished runs are kept, not redone),
and its table holds exactly the numbers in the run folders; bad arguments fail in one line before any training."""
from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from robustcnn.cli import UsageError
from robustcnn.study import (CLEAN_KEY, StudyOptions, build_parser, build_report, options_from_args, parse_vary,
                             plan_cells, run_study, study_markdown, write_study_figure)

from helpers_train import REPO_ROOT, make_image_folders, subprocess_env

GRID = ['--models', 'resnet_ablation_pico', '--vary', 'kernel_size=3,5', '--seeds', '0', '--epochs', '1',
        '--batch-size', '8', '--workers', '0', '--img-size', '32']
RUN_NAMES = ['resnet_ablation_pico-kernel_size=3-seed0', 'resnet_ablation_pico-kernel_size=5-seed0']


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory) -> Path:
    """4 colour classes at 32 px, and an ImageNet-Sketch-named out-of-distribution folder (val, noised again)."""
    root = make_image_folders(tmp_path_factory.mktemp('study-data'), train_per_class=8, val_per_class=4, size=32)
    shutil.copytree(make_image_folders(root / 'shifted', train_per_class=1, val_per_class=3, size=32, seed=9) / 'val',
                    root / 'sketch')
    return root


def run_study_script(arguments: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / 'scripts' / 'study.py'), *arguments], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300, env=subprocess_env(**env))


def table_rows(markdown: str) -> dict[str, list[str]]:
    """The main table's rows by their kwargs cell: [model, kwargs, params, MACs, seeds, values...]."""
    main = markdown.split('\n## Runs')[0]
    rows = [[cell.strip() for cell in line.strip('|').split('|')] for line in main.splitlines()
            if line.startswith('| `')]
    return {row[1]: row for row in rows}


@pytest.mark.slow
def test_two_run_grid_survives_a_kill_and_reports_the_run_folders_numbers(data_dir, tmp_path, caplog):
    output = tmp_path / 'study'
    arguments = GRID + ['--data-dir', str(data_dir), '--output', str(output)]

    killed = run_study_script(arguments, ROBUSTCNN_KILL_AT='study-run:1')  # dies right after the first run
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    first, second = (output / 'runs' / name for name in RUN_NAMES)
    assert (first / 'run.json').is_file() and not (second / 'run.json').exists()
    assert not (output / 'study.json').exists()
    first_record = (first / 'run.json').read_bytes()
    first_checkpoint = (first / 'train' / 'last.pth.tar').stat().st_mtime_ns

    resumed = run_study_script(arguments)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f'{RUN_NAMES[0]} finished before; kept' in resumed.stderr
    assert f'study: run 2/2 {RUN_NAMES[1]}' in resumed.stderr
    assert (first / 'run.json').read_bytes() == first_record  # not redone
    assert (first / 'train' / 'last.pth.tar').stat().st_mtime_ns == first_checkpoint

    study = json.loads((output / 'study.json').read_text())
    assert [record['name'] for record in study['runs']] == RUN_NAMES
    markdown = (output / 'study.md').read_text()
    rows = table_rows(markdown)
    assert list(rows) == ['kernel_size=3', 'kernel_size=5']
    for name, record, kernel in zip(RUN_NAMES, study['runs'], (3, 5)):
        assert record == json.loads((output / 'runs' / name / 'run.json').read_text())
        assert record['kwargs'] == {'kernel_size': kernel} and record['seed'] == 0
        # the numbers validate.py wrote into the run folder, read independently of the study's own record
        results = json.loads((output / 'runs' / name / 'results.json').read_text())['results']
        assert set(results) == {'imagenet', 'imagenet-sketch'}
        assert results['imagenet']['num_samples'] == 16 and results['imagenet-sketch']['num_samples'] == 12
        expected = [results['imagenet']['top1'], results['imagenet-sketch']['top1']]
        recorded = [record['results']['imagenet'], record['results']['imagenet-sketch']]
        assert recorded == pytest.approx(expected, abs=1e-4)
        row = rows[f'kernel_size={kernel}']
        assert row[0] == '`resnet_ablation_pico`' and row[4] == '0'
        assert row[5:] == [f'{value:.1f}' for value in expected]  # one seed: a mean and no spread
        assert math.isclose(float(row[2]), record['params'] / 1e6, abs_tol=0.005)
    params = [record['params'] for record in study['runs']]
    assert params[1] - params[0] == sum((25 - 9) * width * width for width in (16, 32, 64, 128))  # dense 5x5 vs 3x3
    assert 'clean (val)' in markdown.splitlines()[4]
    with Image.open(output / 'study.png') as image:
        image.verify()
    with Image.open(output / 'study.png') as image:
        assert image.size[0] >= 1000 and image.size[1] > 300  # a knob panel and the scatter

    # a run whose record is lost (killed while it was being written) is redone alone; the report is rebuilt
    (second / 'run.json').unlink()
    with caplog.at_level('INFO', logger='robustcnn.study'):
        outcome = run_study(options_from_args(build_parser().parse_args(arguments)))
    assert f'{RUN_NAMES[1]} was interrupted; starting it over' in caplog.text
    assert f'{RUN_NAMES[0]} finished before; kept' in caplog.text
    assert (first / 'run.json').read_bytes() == first_record
    assert (second / 'run.json').is_file() and outcome[1] == output / 'study.json'

    # the report comes from the run folders alone
    (output / 'study.md').unlink()
    (output / 'study.json').unlink()
    run_study(StudyOptions(output=str(output), report_only=True))
    assert table_rows((output / 'study.md').read_text()).keys() == rows.keys()
    assert [record['name'] for record in json.loads((output / 'study.json').read_text())['runs']] == RUN_NAMES

    with pytest.raises(UsageError, match='holds runs of another recipe'):
        run_study(options_from_args(build_parser().parse_args(arguments[:-2] + ['--epochs', '2', '--output',
                                                                                str(output)])))


def _record(name: str, kwargs: dict, seed: int, clean: float, sketch: float) -> dict:
    return {'name': name, 'model': 'm', 'kwargs': kwargs, 'seed': seed, 'params': 10, 'macs': 20,
            'results': {'imagenet-sketch': sketch, CLEAN_KEY: clean}, 'shifts': ['imagenet-sketch'],
            'titles': {CLEAN_KEY: 'clean (val)', 'imagenet-sketch': 'imagenet-sketch'}, 'seconds': 1.0,
            'recipe': {'epochs': 1}}


def test_table_gives_mean_and_spread_over_seeds(tmp_path):
    records = [_record('b0', {'k': 11}, 0, 61.0, 40.0), _record('a1', {'k': 3}, 1, 70.0, 30.0),
               _record('a0', {'k': 3}, 0, 50.0, 20.0)]
    report = build_report(records)
    assert report['columns'] == [CLEAN_KEY, 'imagenet-sketch'] and report['knobs'] == ['k']
    first, second = report['cells']
    assert [record['name'] for record in report['runs']] == ['a0', 'a1', 'b0']  # kernel 3 before 11, seed order
    assert first['seeds'] == [0, 1] and first['mean'] == {CLEAN_KEY: 60.0, 'imagenet-sketch': 25.0}
    assert math.isclose(first['std'][CLEAN_KEY], math.sqrt(((50 - 60) ** 2 + (70 - 60) ** 2) / 1))  # sample std
    assert second['std'] == {CLEAN_KEY: None, 'imagenet-sketch': None}
    rows = table_rows(study_markdown(report))
    assert list(rows) == ['k=3', 'k=11']
    assert rows['k=3'][5:] == ['60.0 ± 14.1', '25.0 ± 7.1'] and rows['k=11'][5:] == ['61.0', '40.0']
    other = dict(_record('c0', {}, 0, 40.0, 10.0), model='resnet18')  # a second model, without the knob
    figure = write_study_figure(tmp_path / 'study.png', build_report(records + [other]))
    with Image.open(figure) as image:
        assert image.size[0] >= 3 * 500  # panels: model, k, and the scatter


def test_a_knob_one_model_lacks_gives_that_model_one_reference_row():
    cells = plan_cells(['resnet_ablation_pico', 'resnet18'], [('kernel_size', [3, 5])], 32, 4)
    assert [(cell.model, cell.kwargs) for cell in cells] == [
        ('resnet_ablation_pico', (('kernel_size', 3),)), ('resnet_ablation_pico', (('kernel_size', 5),)),
        ('resnet18', ())]
    assert cells[2].params == 11_178_564  # resnet18 with 4 classes
    assert cells[0].macs < cells[1].macs


@pytest.mark.parametrize('arguments, message', [
    (['--models', 'not_a_model'], "unknown model 'not_a_model'"),
    (['--models', 'resnet_ablation_pico', '--vary', 'kernel_sise=3,5'], 'none of the models'),
    (['--models', 'resnet_ablation_pico', '--vary', 'kernel_size'], 'expected KWARG=VALUE1,VALUE2'),
    (['--models', 'resnet_ablation_pico', '--vary', 'kernel_size=3,,5'], 'empty value'),
    (['--models', 'resnet_ablation_pico', '--vary', 'kernel_size=3,3'], 'listed twice'),
    (['--models', 'resnet_ablation_pico', '--vary', 'kernel_size=3', '--vary', 'kernel_size=5'], 'given twice'),
    (['--models', 'resnet_ablation_pico', '--vary', 'kernel_size=4'], 'kernel_size must be odd'),
    (['--models', 'resnet_ablation_pico', '--vary', 'num_classes=3'], 'the study sets num_classes itself'),
    (['--models', 'resnet_ablation_pico', '--seeds', '0,x'], 'expected integers'),
    (['--models', 'resnet_ablation_pico', '--seeds', '1,1'], 'distinct'),
    (['--models', 'resnet_ablation_pico', '--data-dir', '{empty}'], 'no train or val/ folder'),
])
def test_bad_arguments_fail_before_any_training(data_dir, tmp_path, arguments, message):
    empty = tmp_path / 'empty'
    empty.mkdir()
    arguments = [item.format(empty=empty) for item in arguments]
    if '--data-dir' not in arguments:
        arguments += ['--data-dir', str(data_dir)]
    output = tmp_path / 'study'
    with pytest.raises(UsageError, match=message):
        run_study(options_from_args(build_parser().parse_args(arguments + ['--img-size', '32', '--output',
                                                                           str(output)])))
    assert not output.exists()


def test_command_line_errors_are_one_line_with_exit_status_2(tmp_path):
    completed = subprocess.run(
        [sys.executable, '-m', 'robustcnn', 'study', '--models', 'resnet_ablation_pico', '--vary', 'activations=',
         '--output', str(tmp_path / 'study')], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        env=subprocess_env())
    assert completed.returncode == 2
    assert completed.stderr.startswith('robustcnn: error: --vary ') and 'empty value' in completed.stderr
    assert completed.stderr.count('\n') == 1
    assert not (tmp_path / 'study').exists()


def test_values_are_yaml_like_model_kwargs():
    assert parse_vary(['depths=[1,1,2,1],[1,1,1,1]', 'activations=all,conv1+out', 'depthwise=true,false']) == [
        ('depths', [(1, 1, 2, 1), (1, 1, 1, 1)]), ('activations', ['all', 'conv1+out']),
        ('depthwise', [True, False])]


def test_run_names_stay_short_and_distinct():
    from robustcnn.study import Cell
    long = [Cell('m', (('depths', tuple([1] * 60 + [extra])),), (), 1, 1) for extra in (1, 2)]
    names = [cell.run_name(0) for cell in long]
    assert names[0] != names[1] and all(len(name) < 200 and name.endswith('-seed0') for name in names)
    assert Cell('m', (('activations', 'conv1+out'), ('kernel_size', 7)), (), 1, 1).run_name(2) == \
        'm-activations=conv1+out-kernel_size=7-seed2'


def test_the_readme_commands_parse_and_plan():
    """Every `python scripts/study.py` command in README.md: its flags parse and its grid builds (no training)."""
    import shlex
    text = (REPO_ROOT / 'README.md').read_text().replace('\\\n', ' ')
    commands = [line.split('#')[0].strip() for line in text.splitlines() if line.startswith('python scripts/study.py')]
    assert len(commands) >= 2
    for command in commands:
        options = options_from_args(build_parser().parse_args(shlex.split(command)[2:]))
        if not options.report_only:
            assert plan_cells(options.models, options.vary, options.img_size or 64, 10)
