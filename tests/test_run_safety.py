"""Nothing lost by an ordinary mistake: an existing run is never overwritten, a damaged checkpoint falls back to an
intact one, one run folder has one writer, and a failed start leaves nothing behind."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import robustcnn  # noqa: F401  (registers the models)
from robustcnn.checkpoint import CheckpointError, load_checkpoint_file
from robustcnn.cli import UsageError
from robustcnn.config import parse_train_args
from robustcnn.engine.trainer import run_training
from robustcnn.run_folder import LOCK_NAME, RunLock

from helpers_train import TINY_FLAGS, make_image_folders, read_summary

pytestmark = pytest.mark.slow


def train_in_process(arguments: list[str]):
    return run_training(parse_train_args(arguments))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def flip_a_weight_bit(path: Path) -> None:
    """Flip one exponent bit inside the stored bytes of the first weight tensor (not the zip's bookkeeping)."""
    weight = next(iter(torch.load(path, weights_only=True)['state_dict'].values()))
    needle = weight.contiguous().view(-1)[:8].numpy().tobytes()
    data = bytearray(path.read_bytes())
    offset = data.find(needle)
    assert offset >= 0 and data.find(needle, offset + 1) < 0, 'the weight bytes must be found exactly once'
    data[offset + 3] ^= 0x40  # float32 little-endian: byte 3 holds the sign and the top exponent bits
    path.write_bytes(bytes(data))


@pytest.fixture(scope='module')
def dataset(tmp_path_factory) -> Path:
    return make_image_folders(tmp_path_factory.mktemp('colours'), train_per_class=4, val_per_class=2)


def _flags(dataset: Path, output: Path, experiment: str, epochs: int) -> list[str]:
    return [str(dataset), *TINY_FLAGS, '--epochs', str(epochs), '--output', str(output), '--experiment', experiment,
            '--checkpoint-interval', '1', '--checkpoint-hist', '2']


def test_a_new_run_into_an_existing_run_refuses_and_fresh_moves_the_old_one_aside(dataset, tmp_path):
    train_in_process(_flags(dataset, tmp_path, 'colours', 1))
    run_dir = tmp_path / 'colours'
    before = {path.name: digest(path) for path in run_dir.iterdir() if path.is_file() and path.name != 'train.log'}
    with pytest.raises(UsageError, match=r'already holds a run .*--resume auto.*--fresh'):
        train_in_process(_flags(dataset, tmp_path, 'colours', 1))
    assert {name: digest(run_dir / name) for name in before} == before, 'the refused start changed the old run'
    assert not (run_dir / LOCK_NAME).exists(), 'the refused start left its lock'

    with pytest.raises(UsageError, match='--fresh starts over and --resume continues'):
        parse_train_args(_flags(dataset, tmp_path, 'colours', 1) + ['--fresh', '--resume', 'auto'])
    train_in_process(_flags(dataset, tmp_path, 'colours', 1) + ['--fresh', '--seed', '5'])
    [old] = tmp_path.glob('colours.old-*')
    assert {name: digest(old / name) for name in before} == before, 'the old run must be moved intact'
    assert digest(run_dir / 'last.pth.tar') != before['last.pth.tar']
    assert len(read_summary(run_dir)) == 1 and not (old / LOCK_NAME).exists()


def test_resume_auto_falls_back_past_a_damaged_checkpoint_and_prunes_nothing(dataset, tmp_path, capfd):
    train_in_process(_flags(dataset, tmp_path, 'run', 2))
    run_dir = tmp_path / 'run'
    flip_a_weight_bit(run_dir / 'last.pth.tar')
    damaged = digest(run_dir / 'last.pth.tar')
    with pytest.raises(CheckpointError, match='last.pth.tar is damaged: its contents do not match the checksum'):
        load_checkpoint_file(run_dir / 'last.pth.tar')
    (run_dir / 'summary.csv').write_bytes(b'\xff\xfe\x00garbage')  # a damaged table must not block the resume
    intact = torch.load(run_dir / 'checkpoint-1.pth.tar', weights_only=True)

    capfd.readouterr()
    train_in_process(_flags(dataset, tmp_path, 'run', 3) + ['--resume', 'auto'])
    log = capfd.readouterr().err
    assert 'continuing from checkpoint-1.pth.tar' in log
    assert 'skipped last.pth.tar (checkpoint' in log and 'is damaged' in log
    [kept] = run_dir.glob('last.pth.tar.damaged-*')
    assert digest(kept) == damaged, 'the damaged file is kept as it was, not overwritten'
    # the fallback continued at epoch 2 from checkpoint-1's state, and pruned no checkpoint-N (hist is 2)
    assert sorted(path.name for path in run_dir.glob('checkpoint-*')) == [
        'checkpoint-0.pth.tar', 'checkpoint-1.pth.tar', 'checkpoint-2.pth.tar']
    resumed = load_checkpoint_file(run_dir / 'last.pth.tar')
    assert resumed['epoch'] == 2 and resumed['step'] > intact['step']
    assert [row['epoch'] for row in read_summary(run_dir)] == ['2']
    assert list(run_dir.glob('summary.csv.damaged-*'))


def test_resume_auto_with_no_usable_checkpoint_is_one_line_and_touches_nothing(dataset, tmp_path):
    run_dir = tmp_path / 'broken'
    run_dir.mkdir()
    (run_dir / 'last.pth.tar').write_bytes(b'not a checkpoint')
    (run_dir / 'checkpoint-3.pth.tar').write_bytes(b'')
    with pytest.raises(CheckpointError, match=r'no checkpoint in .*broken is usable \(checkpoint-3.pth.tar: .*; '
                                              r'last.pth.tar: .*\); restore one from a backup, or start over with '
                                              r'--fresh'):
        train_in_process(_flags(dataset, tmp_path, 'broken', 1) + ['--resume', 'auto'])
    assert sorted(path.name for path in run_dir.iterdir()) == ['checkpoint-3.pth.tar', 'last.pth.tar', 'train.log']


def test_a_second_writer_is_refused_and_a_dead_ones_lock_is_taken_over(dataset, tmp_path):
    run_dir = tmp_path / 'shared'
    run_dir.mkdir()
    sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        (run_dir / LOCK_NAME).write_text(f'{sleeper.pid} {os.uname().nodename}\n')
        with pytest.raises(UsageError, match=rf'in use by another train.py \(process {sleeper.pid}\)'):
            train_in_process(_flags(dataset, tmp_path, 'shared', 1))
        assert (run_dir / LOCK_NAME).read_text().split()[0] == str(sleeper.pid), "the live owner's lock stays"
    finally:
        sleeper.kill()
        sleeper.wait()
    # the owner is gone (as after SIGKILL): its lock is stale, the next run takes it over and releases it at the end
    train_in_process(_flags(dataset, tmp_path, 'shared', 1))
    assert (run_dir / 'last.pth.tar').is_file() and not (run_dir / LOCK_NAME).exists()


def test_the_lock_is_exclusive_within_a_process_and_released(tmp_path):
    first = RunLock(tmp_path).acquire()
    assert (tmp_path / LOCK_NAME).read_text().split()[0] == str(os.getpid())
    with pytest.raises(UsageError, match='in use by another train.py'):
        RunLock(tmp_path).acquire()
    first.release()
    assert not (tmp_path / LOCK_NAME).exists()
    RunLock(tmp_path).acquire().release()


def test_a_failed_start_leaves_no_run_folder(dataset, tmp_path):
    with pytest.raises(UsageError, match='unknown --model'):
        train_in_process(_flags(dataset, tmp_path, 'typo', 1) + ['--model', 'robust_resnet_dw_picco'])
    assert not (tmp_path / 'typo').exists()


def test_validate_keeps_a_finished_evaluation_when_its_results_file_cannot_be_written(tmp_path, monkeypatch):
    """The disk fills up (or the folder turns read-only) during a long evaluation: the results go to the working
    folder with a one-line error naming both places, instead of a traceback and nothing."""
    import json

    import timm
    from PIL import Image

    import robustcnn.report as report
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import validate

    folder = tmp_path / 'val' / 'n01440764'
    folder.mkdir(parents=True)
    for index in range(2):
        Image.new('RGB', (40, 40), (index * 200, 10, 10)).save(folder / f'{index}.png')
    weights = tmp_path / 'pico.pth'
    torch.save(timm.create_model('robust_resnet_dw_pico').state_dict(), weights)
    target = tmp_path / 'results' / 'out.json'
    real_write = report.atomic_write_bytes

    def disk_full_at_target(data, path):
        if Path(path) == target:
            raise OSError(28, f'could not write {path} (No space left on device); no file was written')
        return real_write(data, path)

    monkeypatch.setattr(report, 'atomic_write_bytes', disk_full_at_target)
    work = tmp_path / 'work'
    work.mkdir()
    monkeypatch.chdir(work)
    with pytest.raises(UsageError, match=r'No space left on device.*the results were saved to .*out\.unsaved-'):
        validate.main([str(tmp_path / 'val'), '--dataset', 'imagenet', '--model', 'robust_resnet_dw_pico',
                       '--checkpoint', str(weights), '--workers', '0', '--img-size', '32', '--results-file',
                       str(target)])
    [saved] = work.glob('out.unsaved-*.json')
    assert json.loads(saved.read_text())['results']['imagenet']['num_samples'] == 2


@pytest.mark.parametrize('counts,problem', [
    ({'correct': 90, 'scored': 40, 'skipped': 0}, 'more correct (90) than scored (40)'),
    ({'correct': -5, 'scored': 40, 'skipped': 0}, 'not whole numbers >= 0'),
    ({'correct': 1.5, 'scored': 40, 'skipped': 0}, 'not whole numbers >= 0'),
    ({'correct': 1}, 'lacks correct/scored/skipped counts'),
])
def test_a_tampered_imagenet_c_resume_file_is_ignored_not_scored(tmp_path, counts, problem, caplog):
    """A resume file claiming more correct than scored images gave a mean corruption error of -207."""
    import json

    from types import SimpleNamespace

    from robustcnn.benchmarks.context import ResumeStore

    identity = {'model': 'robust_resnet_dw_pico', 'checkpoint': 'pico.pth'}
    path = tmp_path / 'r.imagenet-c.partial.json'
    store = ResumeStore(path, identity, SimpleNamespace(is_main=True), 'imagenet-c',
                        fields=('correct', 'scored', 'skipped'))
    good = {'correct': 3, 'scored': 4, 'skipped': 1}
    path.write_text(json.dumps({'identity': identity, 'units': {'fog/1': good}}))
    assert store.load() == {'fog/1': good}
    path.write_text(json.dumps({'identity': identity, 'units': {'fog/1': good, 'fog/2': counts}}))
    with caplog.at_level('WARNING'):
        assert store.load() == {}
    assert problem in caplog.text and 'starting over' in caplog.text


def test_a_non_finite_validation_metric_never_becomes_the_best(tmp_path):
    """Every validation image undecodable gives top1 NaN: it must not be saved as a best that nothing can beat."""
    from robustcnn.engine.checkpointing import BEST_NAME, CheckpointSaver

    saver = CheckpointSaver(tmp_path, metric_name='top1', checkpoint_interval=100)
    state = {'state_dict': {'w': torch.ones(1)}, 'epoch': 0}
    assert not saver.save_epoch(dict(state), 0, float('nan'))
    assert saver.best_metric is None and not (tmp_path / BEST_NAME).exists()
    assert saver.save_epoch(dict(state, epoch=1), 1, 12.5)
    assert saver.best_metric == 12.5 and load_checkpoint_file(tmp_path / BEST_NAME)['epoch'] == 1


def test_resuming_with_another_batch_size_is_refused_mid_epoch_and_warned_at_a_boundary(dataset, tmp_path, capfd):
    from robustcnn.checkpoint import with_checksum

    train_in_process(_flags(dataset, tmp_path, 'sizes', 1))
    run_dir = tmp_path / 'sizes'
    capfd.readouterr()
    train_in_process(_flags(dataset, tmp_path, 'sizes', 2) + ['--resume', 'auto', '--batch-size', '4'])
    assert 'trained with -b/--batch-size 8, with -b/--batch-size 4' in capfd.readouterr().err
    # a recovery point inside epoch 2 of that resumed run: its position counts batches of 4
    inside = dict(torch.load(run_dir / 'last.pth.tar', weights_only=True), epoch=2, epoch_complete=False,
                  batch_in_epoch=1)
    torch.save(with_checksum(inside), run_dir / 'recovery-2-1.pth.tar')
    with pytest.raises(UsageError, match=r'recovery-2-1.pth.tar stopped inside an epoch with -b/--batch-size 4; '
                                         r'resuming it with 8 would skip or repeat samples'):
        train_in_process(_flags(dataset, tmp_path, 'sizes', 3) + ['--resume', 'auto'])
