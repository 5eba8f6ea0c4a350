"""The checkpoint-metadata record (written by train.py, read in one place) and the leaf modules under it."""
from __future__ import annotations

import argparse
import logging
import subprocess
import sys

import pytest
import timm
import torch

import robustcnn  # noqa: F401  (registers the models)
from robustcnn import checkpoint, cli, errors
from robustcnn.checkpoint import (CheckpointError, CheckpointMetadata, atomic_save, load_checkpoint_file,
                                  training_args, with_checksum)
from robustcnn.data import label_space
from robustcnn.engine.checkpointing import check_resume_geometry, restore_training_state, training_checkpoint

from helpers_train import REPO_ROOT, subprocess_env

# What train.py has always stored under 'metadata', in its order and types (lists, not tuples).
STORED = {
    'version': '0.1.0', 'model': 'robust_resnet_dw_pico', 'model_kwargs': {'patch_size': 8},
    'class_names': ['ant', 'bee', 'cat'], 'num_classes': 3, 'img_size': 32, 'input_size': [3, 32, 32],
    'interpolation': 'bilinear', 'crop_pct': 0.9, 'mean': [0.5, 0.4, 0.3], 'std': [0.2, 0.25, 0.3],
    'total_batch_size': 64, 'learning_rate': 0.0005, 'world_size': 1,
}


def test_leaf_modules_load_no_torch_and_no_other_layer() -> None:
    code = ('import sys, robustcnn; before = set(sys.modules); '
            'import robustcnn.errors, robustcnn.atomic, robustcnn.cli; '
            'from robustcnn.errors import CheckpointError, LabelSpaceError; '
            'assert CheckpointError in robustcnn.cli.user_errors() and LabelSpaceError in robustcnn.cli.user_errors(); '
            'print(sorted(name for name in set(sys.modules) - before if name.startswith("robustcnn"))); '
            'print("torch" in sys.modules)')
    done = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          env=subprocess_env())
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split('\n')[:2] == [
        "['robustcnn.atomic', 'robustcnn.cli', 'robustcnn.errors', 'robustcnn.faults', 'robustcnn.interrupts']",
        'False']


def test_error_classes_keep_their_identity_where_they_are_imported_from() -> None:
    assert cli.UsageError is errors.UsageError and checkpoint.CheckpointError is errors.CheckpointError
    assert label_space.LabelSpaceError is errors.LabelSpaceError and cli.caused_by is errors.caused_by
    assert checkpoint.atomic_write_text.__module__ == 'robustcnn.atomic'


def test_record_reads_and_writes_the_stored_form_unchanged() -> None:
    record = CheckpointMetadata.from_dict(STORED)
    assert record.class_names == ('ant', 'bee', 'cat') and record.input_size == (3, 32, 32)
    assert record.mean == (0.5, 0.4, 0.3) and record.model_kwargs == {'patch_size': 8}
    written = record.to_dict()
    assert written == STORED and list(written) == list(STORED)
    assert all(type(written[key]) is type(value) for key, value in STORED.items())
    assert CheckpointMetadata.from_checkpoint({'state_dict': {}, 'metadata': STORED}) == record


def test_checkpoints_without_metadata_give_an_empty_record() -> None:
    weights = {'w': torch.ones(1)}
    deit_style = {'model': weights, 'epoch': 299, 'args': argparse.Namespace(model='deit_small', batch_size=128)}
    for loaded in (weights, deit_style, None, [weights]):
        assert CheckpointMetadata.from_checkpoint(loaded) == CheckpointMetadata()
        assert CheckpointMetadata.from_checkpoint(loaded).to_dict() == {}
    assert training_args(deit_style) == {'model': 'deit_small', 'batch_size': 128}


def test_complete_fills_model_and_arguments_from_timm_style_records() -> None:
    timm_style = {'arch': 'robust_resnet_dw_pico', 'state_dict': {},
                  'args': argparse.Namespace(model_kwargs={'patch_size': 4})}
    assert CheckpointMetadata.from_checkpoint(timm_style) == CheckpointMetadata()
    completed = CheckpointMetadata.from_checkpoint(timm_style, complete=True)
    assert completed.to_dict() == {'model': 'robust_resnet_dw_pico', 'model_kwargs': {'patch_size': 4}}
    # what the metadata records wins, an empty argument list included
    own = {**timm_style, 'metadata': {'model': 'robust_resnet_dw_tiny', 'model_kwargs': {}}}
    assert CheckpointMetadata.from_checkpoint(own, complete=True).to_dict() == \
        {'model': 'robust_resnet_dw_tiny', 'model_kwargs': {}}


@pytest.mark.parametrize('field,value', [
    ('learning_rate', 'fast'), ('total_batch_size', 0), ('world_size', 2.5), ('version', 3), ('img_size', True),
])
def test_every_field_is_checked_and_named(field: str, value: object) -> None:
    with pytest.raises(CheckpointError, match=rf'^saved.pth: metadata\.{field} is {value!r}, expected .*altered'):
        CheckpointMetadata.from_checkpoint({'metadata': {**STORED, field: value}}, 'saved.pth')


def _tiny_training_objects() -> tuple[torch.nn.Module, torch.optim.Optimizer, object]:
    torch.manual_seed(0)
    model = timm.create_model('robust_resnet_dw_pico', num_classes=3, patch_size=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)


def test_training_checkpoint_round_trips_through_the_file(tmp_path) -> None:
    model, optimizer, scheduler = _tiny_training_objects()
    args = argparse.Namespace(model='robust_resnet_dw_pico', batch_size=4, img_size=32, model_kwargs={'patch_size': 8},
                              data_dir=tmp_path)  # a Path: not plain data, left out of the stored args
    record = CheckpointMetadata.from_dict(STORED)
    written = training_checkpoint(model, optimizer, scheduler, args, record, epoch=1, epoch_complete=False,
                                  batch_in_epoch=5, num_updates=17, metrics={'top1': 50.0})
    assert list(written)[:11] == ['arch', 'state_dict', 'optimizer', 'scheduler', 'epoch', 'epoch_complete',
                                  'batch_in_epoch', 'step', 'rng', 'args', 'metadata']
    assert written['metadata'] == STORED and 'data_dir' not in written['args']
    path = atomic_save(with_checksum(written), tmp_path / 'recovery-1-5.pth.tar')

    loaded = load_checkpoint_file(path)
    assert CheckpointMetadata.from_checkpoint(loaded, path) == record
    fresh, fresh_optimizer, fresh_scheduler = _tiny_training_objects()
    torch.nn.init.zeros_(fresh.head.fc.weight)
    point = restore_training_state(loaded, str(path), fresh, model_name='robust_resnet_dw_pico',
                                   class_names=['ant', 'bee', 'cat'], optimizer=fresh_optimizer,
                                   scheduler=fresh_scheduler)
    assert (point.epoch, point.batch_in_epoch, point.num_updates) == (1, 5, 17)
    assert all(torch.equal(fresh.state_dict()[name], tensor) for name, tensor in model.state_dict().items())
    with pytest.raises(CheckpointError, match='trained on 3 classes that differ from the 2 class folders'):
        restore_training_state(loaded, str(path), fresh, model_name='robust_resnet_dw_pico', class_names=['a', 'b'])


def test_resume_geometry_reads_the_stored_arguments_of_either_form(caplog) -> None:
    now = argparse.Namespace(batch_size=4, img_size=32)
    with pytest.raises(errors.UsageError, match='stopped inside an epoch with -b/--batch-size 8; resuming it with 4'):
        check_resume_geometry({'epoch_complete': False, 'args': {'batch_size': 8, 'img_size': 32}}, now, 'r.pth')
    with caplog.at_level(logging.WARNING):
        check_resume_geometry({'args': argparse.Namespace(batch_size=4, img_size=48)}, now, 'timm.pth')
    assert 'resuming timm.pth, trained with --img-size 48, with --img-size 32' in caplog.text
    check_resume_geometry({'state_dict': {}}, now, 'bare.pth')  # records no arguments: nothing to compare
