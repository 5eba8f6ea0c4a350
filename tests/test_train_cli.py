"""train.py end to end on a CPU: it learns, writes its run folder, resumes exactly, and fails clearly."""
from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import robustcnn  # noqa: F401  (registers the models)
from robustcnn.checkpoint import CheckpointError
from robustcnn.cli import UsageError
from robustcnn.config import parse_train_args
from robustcnn.engine.train_loop import NonFiniteLossError
from robustcnn.engine.trainer import SUMMARY_COLUMNS, run_training

from helpers_train import (
    CLASS_COLOURS, REPO_ROOT, TINY_FLAGS, TRAIN_SCRIPT, assert_same_weights, load_weights, make_image_folders,
    read_summary, run_train_subprocess, subprocess_env,
)

pytestmark = pytest.mark.slow


def train_in_process(arguments: list[str]):
    return run_training(parse_train_args(arguments))


@pytest.fixture(scope='module')
def dataset(tmp_path_factory) -> Path:
    return make_image_folders(tmp_path_factory.mktemp('colours'), train_per_class=16, val_per_class=6)


@pytest.fixture(scope='module')
def trained_run(dataset, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp('runs')
    train_in_process([str(dataset), *TINY_FLAGS, '--epochs', '3', '--output', str(output), '--experiment', 'colours',
                      '--checkpoint-interval', '1', '--checkpoint-hist', '2'])
    return output / 'colours'


def test_a_few_epochs_drive_the_loss_down_and_the_accuracy_up(trained_run):
    rows = read_summary(trained_run)
    assert list(rows[0]) == SUMMARY_COLUMNS
    assert [int(row['epoch']) for row in rows] == [0, 1, 2]
    train_loss = [float(row['train_loss']) for row in rows]
    eval_loss = [float(row['eval_loss']) for row in rows]
    top1 = [float(row['eval_top1']) for row in rows]
    assert train_loss[-1] < 0.7 * train_loss[0]
    assert eval_loss[-1] < eval_loss[0]
    assert top1[-1] >= 90.0 and top1[-1] > top1[0] - 1e-9
    # 24 validation images: every accuracy is a whole number of images
    assert all(abs(value * 24 / 100 - round(value * 24 / 100)) < 1e-6 for value in top1)
    # warm-up epoch at 1e-6, then the cosine from 2e-3 (3 epochs, 1 warm-up)
    assert float(rows[0]['lr']) == pytest.approx(1e-6)
    assert float(rows[1]['lr']) == pytest.approx(1e-5 + 0.5 * (2e-3 - 1e-5) * (1 + torch.cos(torch.tensor(
        torch.pi / 3)).item()), rel=1e-6)
    assert all(float(row['images_per_second']) > 0 for row in rows)


def test_the_run_folder_holds_timm_named_weights_only_checkpoints(trained_run):
    names = sorted(path.name for path in trained_run.iterdir())
    assert names == ['args.yaml', 'checkpoint-1.pth.tar', 'checkpoint-2.pth.tar', 'last.pth.tar',
                     'model_best.pth.tar', 'summary.csv', 'train.log']
    last = torch.load(trained_run / 'last.pth.tar', map_location='cpu', weights_only=True)
    assert {'state_dict', 'optimizer', 'scheduler', 'epoch', 'step', 'rng', 'args', 'metadata'} <= set(last)
    assert (last['epoch'], last['epoch_complete'], last['step']) == (2, True, 24)   # 3 epochs x 64 / 8
    metadata = last['metadata']
    assert metadata['class_names'] == sorted(CLASS_COLOURS)
    assert (metadata['model'], metadata['num_classes'], metadata['img_size']) == ('robust_resnet_dw_pico', 4, 32)
    assert metadata['version'] == robustcnn.__version__
    assert last['args']['model_kwargs'] == {'patch_size': 4}
    best = torch.load(trained_run / 'model_best.pth.tar', map_location='cpu', weights_only=True)
    rows = read_summary(trained_run)
    best_row = max(rows, key=lambda row: float(row['eval_top1']))   # first epoch reaching the best top-1
    assert best['epoch'] == int(best_row['epoch']) == last['best_epoch']
    saved_args = yaml.safe_load((trained_run / 'args.yaml').read_text())
    assert saved_args['epochs'] == 3 and saved_args['model'] == 'robust_resnet_dw_pico'
    log = (trained_run / 'train.log').read_text()
    assert re.search(r'Train: 0 \[2/8 \(25%\)\] loss \d+\.\d{4} \(\d+\.\d{4}\) lr \S+ [\d.]+ img/s data [\d.]+s '
                     r'ETA \d+:\d\d:\d\d', log), log[:2000]


def test_resume_with_another_model_or_shape_names_the_mismatch(trained_run, dataset, tmp_path):
    last = str(trained_run / 'last.pth.tar')
    base = [str(dataset), *TINY_FLAGS, '--epochs', '4', '--output', str(tmp_path), '--resume', last]
    with pytest.raises(CheckpointError, match="trained as model 'robust_resnet_dw_pico' but --model is "
                                              "'robust_resnet_dw_nano'"):
        train_in_process(base + ['--model', 'robust_resnet_dw_nano', '--experiment', 'other_model'])
    with pytest.raises(CheckpointError, match=r'shape mismatches .*checkpoint \(\d+, 1, 7, 7\) vs model '
                                              r'\(\d+, 1, 3, 3\)'):
        train_in_process(base + ['--model-kwargs', 'kernel_size=3', '--experiment', 'other_shape'])


def test_a_non_finite_loss_stops_without_touching_the_last_good_checkpoint(trained_run, dataset, tmp_path):
    run_dir = tmp_path / 'diverge'
    run_dir.mkdir()
    shutil.copy(trained_run / 'last.pth.tar', run_dir / 'last.pth.tar')
    digest = hashlib.sha256((run_dir / 'last.pth.tar').read_bytes()).hexdigest()
    with pytest.raises(NonFiniteLossError, match='NaN or infinite in epoch 3'):
        train_in_process([str(dataset), *TINY_FLAGS, '--epochs', '5', '--output', str(tmp_path), '--experiment',
                          'diverge', '--resume', 'auto', '--no-resume-opt', '--lr', '1e30', '--warmup-epochs', '0',
                          '--recovery-interval', '1', '--log-interval', '100'])
    assert hashlib.sha256((run_dir / 'last.pth.tar').read_bytes()).hexdigest() == digest
    assert not list(run_dir.glob('recovery-*')) and not (run_dir / 'model_best.pth.tar').exists()


def test_bad_data_folder_is_one_line_and_exit_status_2_before_any_work(tmp_path):
    result = run_train_subprocess([str(tmp_path / 'missing'), '--output', str(tmp_path / 'out')])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f'train.py: error: data folder not found: {tmp_path / "missing"} '
                                                  f'(give the dataset root holding train/)']
    assert not (tmp_path / 'out').exists()
    (tmp_path / 'empty' / 'train').mkdir(parents=True)
    with pytest.raises(UsageError, match='has no class folders'):
        train_in_process([str(tmp_path / 'empty'), '--output', str(tmp_path / 'out')])
    assert not (tmp_path / 'out').exists()


def test_gradient_accumulation_gives_the_large_batch_update(tmp_path):
    # test_convnext has LayerNorm only, so 2 x 8 accumulated images must update exactly like a batch of 16.
    data = make_image_folders(tmp_path / 'data', train_per_class=8, val_per_class=1)
    common = [str(data), '--model', 'test_convnext', '--img-size', '32', '--epochs', '1', '--workers', '0',
              '--opt', 'sgd', '--lr', '0.05', '--momentum', '0.9', '--warmup-epochs', '0', '--aug-repeats', '0',
              '--mixup', '0', '--cutmix', '0', '--drop-path', '0', '--reprob', '0.25', '--output', str(tmp_path)]
    train_in_process(common + ['--batch-size', '8', '--grad-accum-steps', '2', '--experiment', 'accumulated'])
    train_in_process(common + ['--batch-size', '16', '--experiment', 'large'])
    accumulated = torch.load(tmp_path / 'accumulated' / 'last.pth.tar', weights_only=True)
    large = torch.load(tmp_path / 'large' / 'last.pth.tar', weights_only=True)
    assert accumulated['step'] == large['step'] == 2
    torch.manual_seed(0)
    import timm
    initial = timm.create_model('test_convnext', num_classes=4).state_dict()
    for name, value in large['state_dict'].items():
        torch.testing.assert_close(accumulated['state_dict'][name], value, rtol=1e-4, atol=1e-6, msg=name)
    assert max((value - initial[name]).abs().max().item() for name, value in large['state_dict'].items()) > 1e-3


def _kill_and_resume(dataset: Path, output: Path, experiment: str, kill_after: int, extra: list[str]) -> str:
    arguments = [str(dataset), *TINY_FLAGS, '--workers', '1', '--epochs', '3', '--output', str(output),
                 '--experiment', experiment, '--resume', 'auto', *extra]
    killed = run_train_subprocess(arguments, ROBUSTCNN_KILL_AFTER_UPDATES=str(kill_after))
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = run_train_subprocess(arguments)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    return resumed.stderr


def test_sigkill_then_resume_auto_ends_with_the_uninterrupted_weights(dataset, tmp_path):
    reference_args = [str(dataset), *TINY_FLAGS, '--workers', '1', '--epochs', '3', '--output', str(tmp_path),
                      '--experiment', 'reference', '--recovery-interval', '3']
    reference = run_train_subprocess(reference_args)
    assert reference.returncode == 0, reference.stderr[-2000:]
    expected = load_weights(tmp_path / 'reference' / 'last.pth.tar')
    expected_rows = read_summary(tmp_path / 'reference')

    # killed 2 updates into epoch 1 with no recovery files: continues from the end of epoch 0
    log = _kill_and_resume(dataset, tmp_path, 'boundary', kill_after=10, extra=[])
    assert 'last.pth.tar: epoch 1, batch 0, 8 updates done' in log
    # killed after update 13 with recovery every 3 updates: continues at batch 4 of epoch 1 (after update 12)
    log = _kill_and_resume(dataset, tmp_path, 'recovery', kill_after=13, extra=['--recovery-interval', '3'])
    assert 'recovery-1-4.pth.tar: epoch 1, batch 4, 12 updates done' in log

    for experiment in ('boundary', 'recovery'):
        assert_same_weights(load_weights(tmp_path / experiment / 'last.pth.tar'), expected)
        rows = read_summary(tmp_path / experiment)
        assert [row['epoch'] for row in rows] == ['0', '1', '2']
        assert [row['eval_top1'] for row in rows] == [row['eval_top1'] for row in expected_rows]
        # a recovery checkpoint carries the epoch's loss so far, so even the interrupted epoch's mean loss matches
        assert [row['train_loss'] for row in rows] == [row['train_loss'] for row in expected_rows]
        assert not list((tmp_path / experiment).glob('recovery-*'))


@pytest.mark.distributed
def test_torchrun_two_processes_train_and_validate_every_image_once(dataset, tmp_path):
    data = tmp_path / 'data'
    shutil.copytree(dataset, data)
    (data / 'val' / 'sea' / '000.png').unlink()  # 23 validation images: not divisible by 2 processes
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
               str(TRAIN_SCRIPT), str(data), *TINY_FLAGS, '--epochs', '2', '--aug-repeats', '3', '--grad-accum-steps', '2',
               '--validation-batch-size', '11', '--output', str(tmp_path), '--experiment', 'ddp']
    # (23 images in batches of 11: process 0 scores 12 in 2 batches, process 1 scores 11 in 1 batch)
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240,
                            env=subprocess_env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert '2 processes on cpu' in result.stderr
    checkpoint = torch.load(tmp_path / 'ddp' / 'last.pth.tar', map_location='cpu', weights_only=True)
    assert checkpoint['metrics']['num_samples'] == 23
    assert checkpoint['metadata']['world_size'] == 2 and checkpoint['metadata']['total_batch_size'] == 32
    # RepeatAugSampler keeps an epoch at the dataset's size: 64 draws / 2 processes / 8 per batch = 4 batches,
    # accumulated in pairs: 2 updates per epoch
    assert checkpoint['step'] == 2 * 2

    # the same checkpoint evaluated by a single process gives the same top-1, top-5 and loss
    import timm
    from robustcnn.data.folder import ClassFolderDataset
    from robustcnn.data.loader import build_eval_loader
    from robustcnn.data.transforms import build_eval_transform, resolve_eval_preprocessing
    from robustcnn.engine.evaluate import evaluate
    from robustcnn.engine.runtime import Runtime
    model = timm.create_model('robust_resnet_dw_pico', num_classes=4, patch_size=4)
    model.load_state_dict(checkpoint['state_dict'])
    preprocessing = resolve_eval_preprocessing(model, 'resize_center_crop', img_size=32)
    classes = {name: index for index, name in enumerate(checkpoint['metadata']['class_names'])}
    runtime = Runtime(kind='cpu', device=torch.device('cpu'))
    dataset = ClassFolderDataset.from_folder(data / 'val', classes, build_eval_transform(preprocessing))
    loader = build_eval_loader(dataset, batch_size=8, workers=0, runtime=runtime)
    single = evaluate(model, loader, runtime,
                      normalization=(preprocessing.mean, preprocessing.std))
    assert single.num_samples == 23
    row = read_summary(tmp_path / 'ddp')[-1]
    assert float(row['eval_top1']) == pytest.approx(single.top1, abs=1e-4)
    assert float(row['eval_top5']) == pytest.approx(single.top5, abs=1e-4)
    assert float(row['eval_loss']) == pytest.approx(single.loss, abs=1e-5)
    assert checkpoint['metrics']['top1'] == pytest.approx(single.top1, abs=1e-9)


def test_ema_mixed_precision_and_channels_last_run_and_are_saved(dataset, tmp_path):
    train_in_process([str(dataset), *TINY_FLAGS, '--epochs', '1', '--output', str(tmp_path), '--experiment', 'ema',
                      '--model-ema', '--model-ema-decay', '0.9', '--amp', '--amp-dtype', 'bfloat16',
                      '--channels-last', '--mixup', '0.8', '--cutmix', '1.0', '--aug-repeats', '3', '--aa',
                      'rand-m9-mstd0.5-inc1', '--reprob', '0.25', '--drop-path', '0.1'])
    rows = read_summary(tmp_path / 'ema')
    assert list(rows[0]) == SUMMARY_COLUMNS + ['ema_eval_loss', 'ema_eval_top1', 'ema_eval_top5']
    assert 0.0 <= float(rows[0]['ema_eval_top1']) <= 100.0
    checkpoint = torch.load(tmp_path / 'ema' / 'last.pth.tar', map_location='cpu', weights_only=True)
    model, ema = checkpoint['state_dict'], checkpoint['state_dict_ema']
    assert model.keys() == ema.keys()
    assert any(not torch.equal(model[name], ema[name]) for name in model if model[name].is_floating_point())
    assert 'ema_top1' in checkpoint['metrics']
