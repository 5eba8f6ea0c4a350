"""scripts/device_check.sh on the CPU: the same plan and files as on a GPU, with tiny models (BENCHMARKS.md)."""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from robustcnn.speed import device_check
from robustcnn.speed.device_check import OUTPUT_FILES, plan_for, run_cuda_tests

REPO = Path(__file__).resolve().parent.parent

FAKE_CUDA_TESTS = '''
import pytest


@pytest.mark.cuda
def test_on_the_device():
    assert 2 + 2 == 4


@pytest.mark.cuda
def test_broken_on_the_device():
    assert 2 + 2 == 5


def test_not_a_cuda_test():
    raise AssertionError('-m cuda must not select this')
'''


def _load(out: Path) -> tuple[dict, list[dict], str]:
    payload = json.loads((out / 'device_check.json').read_text(), parse_constant=pytest.fail)  # strict: no NaN
    rows = list(csv.DictReader((out / 'device_check.csv').open()))
    return payload, rows, (out / 'device_check.md').read_text()


@pytest.mark.slow
def test_cpu_quick_check_writes_every_file_and_fails_on_a_failed_cuda_test(tmp_path: Path) -> None:
    tests = tmp_path / 'fake' / 'test_fake_cuda.py'
    tests.parent.mkdir()
    tests.write_text(FAKE_CUDA_TESTS)
    out = tmp_path / 'out'
    done = subprocess.run(['bash', str(REPO / 'scripts' / 'device_check.sh'), '--device', 'cpu', '--quick',
                           '--tests', str(tests), str(out)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'PYTHON': sys.executable})
    assert done.returncode == 1, done.stderr[-3000:]  # one CUDA test failed
    payload, rows, markdown = _load(out)
    plan = plan_for('cpu', quick=True)

    assert payload['tests']['status'] == 'failed'
    assert (payload['tests']['passed'], payload['tests']['failed']) == (1, 1)
    assert payload['tests']['failed_tests'] == ['test_fake_cuda::test_broken_on_the_device']
    assert 'assert (2 + 2) == 5' in (out / 'cuda_tests.log').read_text()

    throughput = payload['throughput']
    models = list(plan.robust_models + plan.reference_models)
    planned = {(model, mode, variant) for model in models for mode in ('train', 'infer')
               for variant in (*plan.variants, 'compile')}
    assert {(row['model'], row['mode'], row['variant']) for row in throughput} == planned
    assert len(throughput) == len(planned)  # each once
    measured = [row for row in throughput if row['variant'] != 'compile']
    assert all(row['error'] is None and row['skipped'] is None and row['images_per_second'] > 0 for row in measured)
    assert all(row['batch_size'] == 2 and row['img_size'] == 32 and row['peak_memory_mib'] is None for row in measured)
    for row in measured:  # throughput is batch / median step time
        assert row['images_per_second'] == pytest.approx(2000.0 / row['step_ms'])
    compiled = [row for row in throughput if row['variant'] == 'compile']
    assert compiled and all(row['skipped'] == '--quick: compilation does not fit' for row in compiled)

    robust, reference = plan.headline_pair
    speed = {(row['model'], row['variant']): row['images_per_second'] for row in measured if row['mode'] == 'train'}
    headline = payload['headline']
    assert (headline['model'], headline['reference'], headline['variant']) == (robust, reference, 'base')
    for variant in plan.variants:
        assert headline['per_variant'][variant] == pytest.approx(speed[robust, variant] / speed[reference, variant],
                                                                 rel=2e-3)
    assert f"Headline: **{robust} trains at {headline['ratio']:.2f}x {reference}'s throughput**" in markdown

    pipeline = payload['imagenet_c']
    assert [entry['decode'] for entry in pipeline] == ['workers-decode', 'decode-on-device']
    assert all(entry['num_images'] == 75 and len(entry['runs_s']) == 2 and entry['seconds'] > 0 for entry in pipeline)
    for entry in pipeline:  # the second run is timed (the first warms up); img/s is of the evaluation loop
        assert (entry['seconds'], entry['eval_seconds']) == (entry['runs_s'][1], entry['eval_runs_s'][1])
        assert entry['eval_seconds'] <= entry['seconds']
        assert entry['images_per_second'] == pytest.approx(75 / entry['eval_seconds'], rel=1e-2)
    assert pipeline[0]['mean_corruption_error'] == pipeline[1]['mean_corruption_error']  # CPU decoders: same pixels

    assert [row['part'] for row in rows] == ['throughput'] * len(throughput) + ['imagenet-c'] * 2
    by_key = {(row['model'], row['mode'], row['variant']): row for row in rows}
    for row in measured:
        csv_row = by_key[row['model'], row['mode'], row['variant']]
        assert csv_row['status'] == 'measured'
        assert float(csv_row['images_per_second']) == pytest.approx(row['images_per_second'], abs=0.01)
        assert csv_row['ratio_to_headline_reference'] == str(row['ratios'][reference])
    assert {by_key[row['model'], row['mode'], 'compile']['status'] for row in compiled} == {'skipped'}

    assert markdown in done.stdout  # printed as written
    assert '| model | mode | variant | batch | img/s | step ms | peak MiB | x test_vit | x test_resnet |' in markdown
    assert f'| {robust} | train | compile | 2 | skipped: --quick: compilation does not fit |' in markdown
    assert '- compile: skipped (--quick: compilation does not fit)' in markdown
    assert '**failed** — 1 passed, 1 failed' in markdown


def test_what_does_not_fit_the_budget_is_reported_as_skipped(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A budget too small for anything: every planned measurement is a skipped row with its reason, no error."""
    assert device_check.main(['--device', 'cpu', '--quick', '--budget', '0.5', str(tmp_path)]) == 0
    payload, rows, markdown = _load(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(OUTPUT_FILES)
    assert payload['throughput'] and all(row['skipped'] for row in payload['throughput'])
    assert all('did not fit the time budget' in row['skipped'] for row in payload['throughput']
               if row['variant'] != 'compile')
    assert [entry.get('skipped', '')[:27] for entry in payload['imagenet_c']] == ['did not fit the time budget'] * 2
    assert payload['headline']['ratio'] is None and 'trains at not measured' in markdown
    assert {row['status'] for row in rows} == {'skipped'}
    assert payload['parts']['headline']['status'] == 'skipped'
    assert payload['parts']['cuda-tests']['status'] == 'skipped'
    assert markdown in capsys.readouterr().out


def test_the_hard_stop_cuts_the_running_part_short_and_reports_the_rest(tmp_path: Path, monkeypatch) -> None:
    """The timer that ends a run whose measurement overran: what ran is kept, nothing planned goes missing."""
    import time

    from robustcnn.speed import throughput

    # Every row "fits" (guess 0 s) and the first one never ends, so the timer must stop it; a real measurement could
    # finish first, or on a loaded machine the set-up alone could eat a tiny budget and every part skip before it.
    monkeypatch.setattr(throughput, 'measure_model', lambda settings: time.sleep(60))
    plan = dataclasses.replace(plan_for('cpu', quick=True, budget_s=2.0), first_measurement_guess_s=0.0)
    report = device_check.run_device_check(plan, tmp_path, grace_s=0.0)
    payload, rows, markdown = _load(tmp_path)
    statuses = {name: part['status'] for name, part in payload['parts'].items()}
    assert list(statuses) == ['headline', 'cuda-tests', 'throughput', 'imagenet-c', 'compile']
    assert 'cut short' in statuses.values()
    after_stop = list(statuses.values())[list(statuses.values()).index('cut short') + 1:]
    assert after_stop and set(after_stop) == {'skipped'}
    planned = {(model, mode, variant) for model in (*plan.robust_models, *plan.reference_models)
               for mode in ('train', 'infer') for variant in (*plan.variants, 'compile')}
    assert sorted((row['model'], row['mode'], row['variant']) for row in payload['throughput']) == sorted(planned)
    assert any('hard time limit' in (row['skipped'] or '') for row in payload['throughput'])
    assert [entry['decode'] for entry in payload['imagenet_c']] == ['workers-decode', 'decode-on-device']
    assert len(rows) == len(planned) + 2 and 'cut short (the run reached its hard time limit' in markdown
    assert report.tests['status'] in ('skipped', 'timed out')


def test_cuda_tests_that_do_not_finish_in_time_count_as_not_passed(tmp_path: Path) -> None:
    tests = tmp_path / 'test_slow_cuda.py'
    tests.write_text('import time\nimport pytest\n\n\n@pytest.mark.cuda\ndef test_slow():\n    time.sleep(60)\n')
    record = run_cuda_tests('cpu', timeout_s=3, out_dir=tmp_path, extra_args=[str(tests)])
    assert record['status'] == 'timed out' and record['returncode'] is None


def test_bad_arguments_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / 'file').write_text('')
    for argv, message in ((['--budget', '0', str(tmp_path)], '--budget must be a positive'),
                          ([str(tmp_path / 'file'), '--device', 'cpu'], 'is not a directory'),
                          (['--device', 'tpu', str(tmp_path)], "invalid choice: 'tpu'")):
        with pytest.raises(device_check.UsageError, match=message):
            device_check.main(argv)
    if not torch.cuda.is_available():  # the default device: refused in one line, before anything runs
        with pytest.raises(device_check.UsageError, match='no CUDA GPU is visible; --device cpu checks the check'):
            device_check.main([str(tmp_path / 'out')])
        assert not (tmp_path / 'out').exists()


def _documented_commands(document: str, prefix: str) -> list[list[str]]:
    text = (REPO / document).read_text().replace('\\\n', ' ')
    commands = []
    for line in text.splitlines():
        line = line.split('#', 1)[0].strip()
        if line.startswith(prefix):
            commands.append(shlex.split(line)[len(shlex.split(prefix)):])
    return commands


def test_documented_speed_and_device_check_commands_parse() -> None:
    """Every `scripts/speed.py` and `scripts/device_check.sh` command in BENCHMARKS.md is accepted as written."""
    from robustcnn.speed import cli, pipelines

    speed_commands = _documented_commands('BENCHMARKS.md', 'python scripts/speed.py')
    assert len(speed_commands) >= 5
    for argv in speed_commands:
        if argv and argv[0] in ('imagenet-c', 'train-loop'):
            pipelines.build_parser(argv[0]).parse_args(argv[1:])
        else:
            cli.build_parser().parse_args(argv)
    check_commands = _documented_commands('BENCHMARKS.md', 'bash scripts/device_check.sh')
    assert len(check_commands) == 3
    for argv in check_commands:
        assert device_check.build_parser().parse_args(argv).out_dir == Path('OUT_DIR')


def test_the_speed_subcommand_of_python_m_robustcnn(capsys: pytest.CaptureFixture) -> None:
    from robustcnn.__main__ import main
    with pytest.raises(SystemExit) as exit_info:
        main(['speed', 'device-check', '--help'])
    assert exit_info.value.code == 0 and 'usage: device_check.sh' in capsys.readouterr().out
