"""Kill anywhere: SIGKILL training inside a step, during validation, while a file is being written, and at random
moments; resuming with ``--resume auto`` each time must end with exactly the uninterrupted run's weights, and no
checkpoint on disk may ever be unreadable."""
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers_train import (
    REPO_ROOT, TINY_FLAGS, TRAIN_SCRIPT, assert_same_weights, load_weights, make_image_folders, read_summary,
    run_train_subprocess, subprocess_env,
)

EPOCHS = '3'


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    return make_image_folders(tmp_path_factory.mktemp('kill') / 'data', train_per_class=8, val_per_class=4)


def _arguments(dataset, output, experiment):
    return [str(dataset), *TINY_FLAGS, '--epochs', EPOCHS, '--recovery-interval', '1', '--output', str(output),
            '--experiment', experiment, '--resume', 'auto']


def _assert_every_checkpoint_readable(run_dir):
    for path in run_dir.glob('*.pth.tar'):
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
        assert 'state_dict' in checkpoint, path.name


@pytest.mark.slow
def test_kill_anywhere_then_resume_auto_reproduces_the_uninterrupted_run(dataset, tmp_path):
    reference = run_train_subprocess(_arguments(dataset, tmp_path, 'reference'))
    assert reference.returncode == 0, reference.stderr[-2000:]
    expected = load_weights(tmp_path / 'reference' / 'last.pth.tar')

    run_dir = tmp_path / 'killed'
    arguments = _arguments(dataset, tmp_path, 'killed')
    faults = [
        {'ROBUSTCNN_KILL_AFTER_UPDATES': '2'},    # inside training, right after an optimizer update
        {'ROBUSTCNN_KILL_AT': 'validation-batch:1'},  # during the first validation this process runs
        {'ROBUSTCNN_KILL_AT': 'file-write:2'},    # data written to the temp file, not yet renamed into place
        {'ROBUSTCNN_KILL_AT': 'file-write:4'},
    ]
    logs = []
    for fault in faults:
        result = run_train_subprocess(arguments, **fault)
        assert result.returncode == -signal.SIGKILL, (fault, result.stderr[-2000:])
        logs.append(result.stderr)
        _assert_every_checkpoint_readable(run_dir)

    # and at random moments (seeded, so a failure reproduces)
    chooser = random.Random(1234)
    for _ in range(2):
        process = subprocess.Popen([sys.executable, str(TRAIN_SCRIPT), *arguments], cwd=REPO_ROOT,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=subprocess_env())
        time.sleep(chooser.uniform(4.0, 9.0))
        process.kill()
        process.wait()
        _assert_every_checkpoint_readable(run_dir)

    final = run_train_subprocess(arguments)
    assert final.returncode == 0, final.stderr[-2000:]
    assert_same_weights(load_weights(run_dir / 'last.pth.tar'), expected)
    assert [row['eval_top1'] for row in read_summary(run_dir)] == \
        [row['eval_top1'] for row in read_summary(tmp_path / 'reference')]
    assert not [path.name for path in run_dir.iterdir() if path.name.endswith('.tmp')], 'stale temp files removed'
    # with a recovery point after every update, the kill after update 2 loses nothing: the next start resumes there
    assert '2 updates done' in logs[1]


@pytest.mark.distributed
def test_a_dead_rank_stops_the_other_within_bounded_time(dataset, tmp_path):
    """Rank 1 is SIGKILLed in validation; rank 0 must not wait forever in a collective."""
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
               str(TRAIN_SCRIPT), *_arguments(dataset, tmp_path, 'rank-dies')]
    start = time.monotonic()
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180,
                            env=subprocess_env(ROBUSTCNN_KILL_AT='validation-batch:1', ROBUSTCNN_KILL_RANK='1'))
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert elapsed < 120, f'took {elapsed:.0f} s to stop'
    assert 'Signal 9 (SIGKILL)' in result.stderr or 'exitcode  : -9' in result.stderr, result.stderr[-3000:]
    _assert_every_checkpoint_readable(tmp_path / 'rank-dies')


def test_imagenet_c_evaluation_killed_resumes_from_finished_folders(tmp_path):
    """validate.py SIGKILLed mid-way through ImageNet-C: the rerun skips the folders it finished and ends with the
    same numbers as an uninterrupted run."""
    import json

    import timm
    from dataset_trees import build_imagenet_c_tree
    from robustcnn.benchmarks.imagenet_c import CORRUPTIONS

    contents = {(corruption, severity): {3: [3, 40], 900: [900]} for corruption in CORRUPTIONS
                for severity in range(1, 6)}
    root = build_imagenet_c_tree(tmp_path / 'ImageNet-C', contents)
    torch.manual_seed(0)
    checkpoint = tmp_path / 'pico.pth'
    torch.save(timm.create_model('robust_resnet_dw_pico').state_dict(), checkpoint)

    def validate(results, **fault):
        command = [sys.executable, 'validate.py', str(root), '--dataset', 'imagenet-c', '--model',
                   'robust_resnet_dw_pico', '--checkpoint', str(checkpoint), '--workers', '0', '-b', '3',
                   '--save-every', '1', '--results-file', str(results)]
        return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                              env=subprocess_env(**fault))

    reference = validate(tmp_path / 'reference.json')
    assert reference.returncode == 0, reference.stderr[-2000:]
    results = tmp_path / 'killed.json'
    killed = validate(results, ROBUSTCNN_KILL_AT='validation-batch:40')
    assert killed.returncode == -signal.SIGKILL
    partial = tmp_path / 'killed.imagenet-c.partial.json'
    finished = json.loads(partial.read_text())['units']
    assert 30 <= len(finished) < 75, len(finished)
    resumed = validate(results)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    entry = json.loads(results.read_text())['results']['imagenet-c']
    expected = json.loads((tmp_path / 'reference.json').read_text())['results']['imagenet-c']
    assert entry['resumed_folders'] == len(finished)
    assert entry['errors'] == expected['errors'] and entry['num_samples'] == expected['num_samples'] == 225
    assert entry['mean_corruption_error'] == expected['mean_corruption_error']
    assert not partial.exists()
