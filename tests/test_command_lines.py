"""train.py and validate.py built the same way: shared typed checkers, a request that checks itself, device defaults
resolved in one place, per-set resume files in a suite, and plain bugs that keep their traceback."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

from dataset_trees import build_wnid_tree, register_color_model, save_color_checkpoint
from robustcnn import arguments
from robustcnn.benchmarks.request import ValidationRequest
from robustcnn.cli import UsageError, run_cli
from robustcnn.config import parse_train_args
from robustcnn.engine.runtime import AMP_DTYPES, DeviceSettings, Runtime

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # validate.py is a script at the repository root
import validate  # noqa: E402

MODEL = register_color_model()


def runtime_of(kind: str, devices_per_process: int = 1) -> Runtime:
    """A runtime of any kind on this CPU: device_settings only reads its kind and devices."""
    return Runtime(kind=kind, device=torch.device('cpu'), devices_per_process=devices_per_process)


@pytest.fixture
def cudnn_benchmark_restored():
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    yield
    torch.backends.cudnn.benchmark = before


def test_amp_dtype_names_without_torch_are_the_runtime_dtypes() -> None:
    assert arguments.AMP_DTYPE_NAMES == tuple(AMP_DTYPES)


@pytest.mark.parametrize('kind, amp_dtype, channels_last, benchmark', [
    ('cuda', 'bfloat16', True, True), ('cpu', None, False, False), ('xla', None, False, False)])
def test_both_commands_get_the_same_device_defaults(kind, amp_dtype, channels_last, benchmark,
                                                    cudnn_benchmark_restored) -> None:
    train_args = parse_train_args(['/data', '-b', '8'])
    request = validate.request_from_args(validate.build_parser().parse_args(['/data', '-b', '8']))
    runtime = runtime_of(kind, devices_per_process=4 if kind == 'xla' else 1)
    from_train = runtime.device_settings(amp=train_args.amp, amp_dtype=train_args.amp_dtype,
                                         channels_last=train_args.channels_last, batch_size=train_args.batch_size)
    from_validate = runtime.device_settings(amp=request.amp, amp_dtype=request.amp_dtype,
                                            channels_last=request.channels_last, batch_size=request.batch_size)
    expected = DeviceSettings(amp_dtype=amp_dtype, channels_last=channels_last, batch_size=32 if kind == 'xla' else 8)
    assert from_train == from_validate == expected
    assert torch.backends.cudnn.benchmark is benchmark  # fixed-shape CUDA work picks its kernels once


def test_explicit_switches_win_over_the_device_and_float16_is_refused_on_xla(cudnn_benchmark_restored) -> None:
    off = runtime_of('cuda').device_settings(amp=False, amp_dtype='bfloat16', channels_last=False, batch_size=2)
    assert off == DeviceSettings(amp_dtype=None, channels_last=False, batch_size=2)
    on = runtime_of('cpu').device_settings(amp=True, amp_dtype='float16', channels_last=True, batch_size=2)
    assert on.torch_amp_dtype is torch.float16 and on.channels_last
    with pytest.raises(UsageError, match='--amp-dtype float16 is not supported on XLA'):
        runtime_of('xla').device_settings(amp=True, amp_dtype='float16', channels_last=None, batch_size=2)


@pytest.mark.parametrize('checker, text, message', [
    (arguments.positive_int, '0', 'must be at least 1, got 0'),
    (arguments.non_negative_int, '-1', 'must be 0 or more, got -1'),
    (arguments.crop_fraction, '0', 'must be between 0.05 and 2.0'),
    (arguments.positive_float, 'nan', 'must be a finite number, got nan'),
    (arguments.positive_float, '0', 'must be a positive number, got 0'),
    (arguments.percent, '100.5', 'between 0 and 100'),
    (arguments.interpolation, 'lanczos3', "must be one of nearest, bilinear, bicubic, lanczos, box, hamming, got "
                                          "'lanczos3'"),
])
def test_a_checker_names_what_it_expected(checker, text, message) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=message.replace('(', r'\(').replace(')', r'\)')):
        checker(text)
    with pytest.raises(UsageError, match='^--flag: '):
        arguments.require('--flag', checker, text)


@pytest.mark.parametrize('flags, message', [
    (['--crop-pct', '0'], 'argument --crop-pct: must be between 0.05 and 2.0'),
    (['--std', '0.2', '0', '0.2'], 'argument --std: must be a positive number, got 0'),
    (['--interpolation', 'cubic'], 'argument --interpolation: must be one of'),
    (['-b', '0'], 'argument -b/--batch-size: must be at least 1, got 0'),
])
def test_train_and_validate_reject_a_value_with_the_same_checker(flags, message) -> None:
    with pytest.raises(UsageError, match=message):
        parse_train_args(['/data', *flags])
    with pytest.raises(UsageError, match=message):
        validate.build_parser().parse_args(['/data', *flags])


@pytest.mark.parametrize('fields, message', [
    ({'batch_size': 0}, '--batch-size: must be at least 1, got 0'),
    ({'suite': True, 'dataset': 'imagenet'}, '--suite evaluates every dataset found'),
    ({'crop_pct': 1e-4}, '--crop-pct: must be between'),
    ({'std': (0.5, 0.5)}, '--std takes 1 or 3 values'),
    ({'mean': (float('nan'),)}, '--mean: must be a finite number'),
    ({'input_size': (1, 32, 32)}, 'C must be 3'),
    ({'amp_dtype': 'float8'}, '--amp-dtype must be one of bfloat16, float16'),
    ({'clean_error': 101.0}, '--clean-error: must be a percentage'),
])
def test_a_request_built_in_code_is_checked_like_the_command_line(fields, message) -> None:
    with pytest.raises(UsageError, match=message.replace('(', r'\(')):
        ValidationRequest(data_dir='/data', **fields)


def test_an_explicit_partial_results_file_is_one_per_set_in_a_suite(tmp_path: Path) -> None:
    from robustcnn.benchmarks.base import PreparedData
    from robustcnn.benchmarks.context import EvaluationContext
    from robustcnn.data.transforms import EvalPreprocessing

    preprocessing = EvalPreprocessing(input_size=(3, 32, 32), resize_mode='none', crop_pct=1.0, crop_mode='center',
                                      interpolation='bilinear', mean=(0.5,) * 3, std=(0.5,) * 3)
    prepared = PreparedData(benchmark='imagenet-c', root=tmp_path, samples=[])
    explicit = tmp_path / 'resume.json'

    def store(name: str, **fields):
        request = ValidationRequest(data_dir=str(tmp_path), partial_results=str(explicit), **fields)
        context = EvaluationContext(request=request, runtime=runtime_of('cpu'), model=torch.nn.Identity(),
                                    model_name='identity', settings=DeviceSettings(None, False, 2), workers=0)
        return context.resume_store(name, prepared, preprocessing, fields=('correct', 'scored', 'skipped'))

    assert store('imagenet-c', dataset='imagenet-c').path == explicit  # one set: the file as given
    first, second = store('imagenet-c', suite=True), store('imagenet-c-bar', suite=True)
    assert (first.path, second.path) == (tmp_path / 'resume.imagenet-c.json', tmp_path / 'resume.imagenet-c-bar.json')
    first.save({'fog/1': {'correct': 1, 'scored': 2, 'skipped': 0}})
    second.save({'blue_noise_sample/3': {'correct': 2, 'scored': 2, 'skipped': 0}})
    assert json.loads(first.path.read_text())['units'] == {'fog/1': {'correct': 1, 'scored': 2, 'skipped': 0}}
    assert first.load() == {'fog/1': {'correct': 1, 'scored': 2, 'skipped': 0}}  # not overwritten by the second
    assert second.load() == {'blue_noise_sample/3': {'correct': 2, 'scored': 2, 'skipped': 0}}


def test_a_plain_bug_inside_scoring_keeps_its_traceback(tmp_path: Path, monkeypatch, capsys) -> None:
    """Only errors raised for bad input are one line and exit 2; a ValueError from a bug is not turned into one."""
    from robustcnn.benchmarks.base import ClassFolderBenchmark

    def broken_score(self, context, prepared):
        raise ValueError('a plain bug')

    monkeypatch.delenv('ROBUSTCNN_TRACEBACK', raising=False)
    monkeypatch.setattr(ClassFolderBenchmark, 'score', broken_score)
    build_wnid_tree(tmp_path / 'val', {1: [1]})
    checkpoint = save_color_checkpoint(tmp_path / 'color.pth')
    with pytest.raises(ValueError, match='a plain bug'):
        run_cli(validate.main, [str(tmp_path / 'val'), '--dataset', 'imagenet', '--model', MODEL, '--checkpoint',
                                str(checkpoint), '--workers', '0'], prog='validate.py')
    assert 'validate.py: error:' not in capsys.readouterr().err
