"""Experiment tracking: TensorBoard event files and offline W&B runs hold the logged numbers (read back from the
files), a resumed run continues the same step numbering without duplicated points, and a missing backend is a
one-line error that names the extra."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

import wandb_records
from helpers_train import TINY_FLAGS, make_image_folders, read_summary
from robustcnn.cli import UsageError
from robustcnn.config import parse_train_args
from robustcnn.engine.trainer import run_training
from robustcnn.tracking import TensorBoardTracker, WANDB_STATE_FILE, log_validation_results

pytest.importorskip('tensorboard')
pytest.importorskip('wandb')
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B writes locally and keeps its settings and caches out of the home folder."""
    for name, value in {'WANDB_MODE': 'offline', 'WANDB_SILENT': 'true', 'WANDB_CONSOLE': 'off',
                        'WANDB_CONFIG_DIR': tmp_path / 'wandb-config', 'WANDB_CACHE_DIR': tmp_path / 'wandb-cache',
                        'WANDB_DATA_DIR': tmp_path / 'wandb-data'}.items():
        monkeypatch.setenv(name, str(value))


def read_events(log_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(log_dir), size_guidance={'scalars': 0, 'tensors': 0})  # 0: keep every point
    events.Reload()
    return events


def scalar_points(events: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(event.step, event.value) for event in events.Scalars(tag)]


def wandb_files(run_dir: Path) -> list[Path]:
    return [wandb_records.wait_until_complete(path) for path in sorted(run_dir.glob('wandb/offline-run-*/run-*.wandb'))]


def logged_losses(train_log: str) -> dict[tuple[int, int], float]:
    """(epoch, batch) -> the loss of the progress line, as train.log prints it (4 decimals)."""
    return {(int(epoch), int(batch)): float(loss)
            for epoch, batch, loss in re.findall(r'Train: (\d+) \[(\d+)/\d+ \(\d+%\)\] loss (\d+\.\d+)', train_log)}


def test_training_curves_resume_without_duplicates(tmp_path, offline_wandb):
    data = make_image_folders(tmp_path / 'data', train_per_class=16, val_per_class=4)
    flags = [str(data), *TINY_FLAGS, '--output', str(tmp_path / 'runs'), '--experiment', 'tracked',
             '--checkpoint-interval', '1', '--checkpoint-hist', '3', '--log-tensorboard', '--log-wandb',
             '--wandb-project', 'tests']
    run_dir = tmp_path / 'runs' / 'tracked'
    run_training(parse_train_args([*flags, '--epochs', '2']))  # 64 images / 8 = 8 updates per epoch
    first_events = read_events(run_dir / 'tensorboard')
    # --log-interval 2: a point every 2 updates; the epoch's numbers at its last update
    assert [step for step, _ in scalar_points(first_events, 'train/loss')] == list(range(2, 17, 2))
    losses = logged_losses((run_dir / 'train.log').read_text())
    for step, value in scalar_points(first_events, 'train/loss'):
        epoch, batch = divmod(step - 1, 8)
        assert value == pytest.approx(losses[(epoch, batch + 1)], abs=6e-5)
    summary = read_summary(run_dir)
    for tag, column in (('epoch/eval_top1', 'eval_top1'), ('epoch/train_loss', 'train_loss'),
                        ('epoch/eval_top5', 'eval_top5'), ('epoch/lr', 'lr')):
        assert [step for step, _ in scalar_points(first_events, tag)] == [8, 16]
        assert [value for _, value in scalar_points(first_events, tag)] == pytest.approx(
            [float(row[column]) for row in summary], rel=1e-5)
    assert all(value > 0 for _, value in scalar_points(first_events, 'train/images_per_second'))
    assert all(value >= 0 for _, value in scalar_points(first_events, 'train/data_seconds'))
    top1 = [float(row['eval_top1']) for row in summary]
    assert [value for _, value in scalar_points(first_events, 'epoch/best_top1')] == pytest.approx(
        [top1[0], max(top1)], rel=1e-5)
    assert 'config' in ''.join(first_events.Tags()['tensors'])

    [first_file] = wandb_files(run_dir)
    first_history = wandb_records.history(first_file)
    assert [row['_step'] for row in first_history] == list(range(2, 17, 2))
    assert [row['epoch/eval_top1'] for row in first_history if 'epoch/eval_top1' in row] == pytest.approx(top1)
    config = wandb_records.config(first_file)
    assert config['model'] == 'robust_resnet_dw_pico' and config['epochs'] == 2 and config['batch_size'] == 8

    # resume from the end of epoch 0 (update 8) and run to 3 epochs: updates 9..24 again and anew
    run_training(parse_train_args([*flags, '--epochs', '3', '--resume', str(run_dir / 'checkpoint-0.pth.tar')]))
    events = read_events(run_dir / 'tensorboard')
    steps = [step for step, _ in scalar_points(events, 'train/loss')]
    assert steps == list(range(2, 25, 2))  # the first run's points after update 8 are purged, none duplicated
    assert [step for step, _ in scalar_points(events, 'epoch/eval_top1')] == [8, 16, 24]
    # training is deterministic given the position: the redone updates give the same losses
    assert dict(scalar_points(events, 'train/loss'))[16] == pytest.approx(dict(scalar_points(
        first_events, 'train/loss'))[16], abs=1e-5)

    files = wandb_files(run_dir)
    assert len(files) == 2 and {wandb_records.run_id(path) for path in files} == {wandb_records.run_id(first_file)}
    steps = [row['_step'] for path in files for row in wandb_records.history(path)]
    assert sorted(steps) == list(range(2, 25, 2))  # the resumed session logs only the steps after the last logged
    state = json.loads((run_dir / 'wandb' / WANDB_STATE_FILE).read_text())
    assert state == {'id': wandb_records.run_id(first_file), 'last_step': 24}


def test_validation_results_and_imagenet_c_table(tmp_path):
    errors = {'gaussian_noise': {'1': 20.0, '2': 40.0}, 'fog': {'1': 10.0, '2': 30.0}}
    payload = {'model': 'm', 'checkpoint': None, 'results': {
        'imagenet-r': {'top1': 45.5, 'top5': 60.25, 'loss': 2.5, 'num_samples': 30},
        'imagenet-c': {'mean_corruption_error': 25.0, 'mce': None, 'relative_mce': float('nan'),
                       'num_samples': 8, 'errors': errors}}}
    tracker = TensorBoardTracker(tmp_path / 'tb')
    log_validation_results(tracker, payload)
    tracker.close()
    events = read_events(tmp_path / 'tb')
    assert scalar_points(events, 'imagenet-r/top1') == [(0, 45.5)]
    assert scalar_points(events, 'imagenet-r/top5') == [(0, 60.25)]
    assert scalar_points(events, 'imagenet-c/mean_corruption_error') == [(0, 25.0)]
    assert scalar_points(events, 'imagenet-c/corruption_error/gaussian_noise') == [(0, 30.0)]
    assert scalar_points(events, 'imagenet-c/corruption_error/fog') == [(0, 20.0)]
    assert 'imagenet-c/mce' not in events.Tags()['scalars']  # not measured: left out, not drawn as 0 or NaN
    [table] = events.Tensors('imagenet-c/top1_error/text_summary')
    text = table.tensor_proto.string_val[0].decode()
    assert '| corruption | severity 1 | severity 2 | mean |' in text
    assert '| gaussian_noise | 20.00 | 40.00 | 30.00 |' in text and '| fog | 10.00 | 30.00 | 20.00 |' in text


def test_validate_py_logs_its_results(tmp_path, offline_wandb):
    sys.path.insert(0, str(REPO))
    import validate
    from dataset_trees import build_wnid_tree, register_color_model, save_color_checkpoint
    model = register_color_model()
    checkpoint = save_color_checkpoint(tmp_path / 'color.pth')
    build_wnid_tree(tmp_path / 'ImageNet' / 'val', {0: [0, 0], 17: [17, 600]})
    results = tmp_path / 'out' / 'results.json'
    assert validate.main([str(tmp_path / 'ImageNet'), '--model', model, '--checkpoint', str(checkpoint),
                          '--workers', '0', '-b', '2', '--results-file', str(results), '--log-tensorboard',
                          '--log-wandb']) == 0
    top1 = json.loads(results.read_text())['results']['imagenet']['top1']
    assert top1 == pytest.approx(75.0, abs=1e-4)
    assert scalar_points(read_events(tmp_path / 'out' / 'tensorboard'), 'imagenet/top1') == [
        (0, pytest.approx(75.0, abs=1e-4))]
    [run_file] = wandb_files(tmp_path / 'out')
    assert wandb_records.history(run_file)[0]['imagenet/top1'] == pytest.approx(75.0, abs=1e-4)
    config = wandb_records.config(run_file)
    assert config['model'] == model and config['checkpoint'] == str(checkpoint) and config['batch_size'] == 2


@pytest.mark.parametrize('flag, module', [('--log-tensorboard', 'tensorboard'), ('--log-wandb', 'wandb')])
def test_a_missing_backend_names_its_extra_at_argument_time(tmp_path, monkeypatch, flag, module):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(UsageError, match=rf'^{flag} needs the {module} package.*robustcnn\[{module}\]'):
        parse_train_args([str(tmp_path), flag])
    sys.path.insert(0, str(REPO))
    import validate
    with pytest.raises(UsageError, match=rf'robustcnn\[{module}\]'):
        validate.main([str(tmp_path), '--checkpoint', 'missing.pth', flag])
