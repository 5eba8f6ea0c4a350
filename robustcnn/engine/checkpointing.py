"""Training checkpoints: what they hold, where they go, and how a run continues from one (written and read here,
side by side: :func:`training_checkpoint` and :class:`CheckpointSaver`; :func:`find_resume_checkpoint`,
:func:`check_resume_geometry` and :func:`restore_training_state`).

Files in the run folder, named as timm names them:

* ``last.pth.tar``: end of the newest finished epoch (what ``--resume auto`` usually continues from);
* ``model_best.pth.tar``: the epoch with the best validation metric;
* ``checkpoint-{epoch}.pth.tar``: every ``--checkpoint-interval`` epochs, the newest ``--checkpoint-hist`` kept;
* ``recovery-{epoch}-{batch}.pth.tar``: every ``--recovery-interval`` optimizer updates inside an epoch, only the
  newest kept, removed once the epoch is finished.

Every file is written with :func:`atomic_save` (never half-written), holds only plain data and tensors, so it
loads with ``torch.load(weights_only=True)``, and carries a SHA-256 of its contents that every load verifies.
"""
from __future__ import annotations

import argparse
import logging
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..checkpoint import (CheckpointError, CheckpointMetadata, atomic_save, check_state_dict_fits, clean_state_dict,
                          load_checkpoint_file, training_args, with_checksum)
from ..errors import UsageError

__all__ = [
    'LAST_NAME', 'BEST_NAME', 'capture_rng_state', 'restore_rng_state', 'training_checkpoint', 'CheckpointSaver',
    'ResumePoint', 'ResumeChoice', 'find_resume_checkpoint', 'checkpoint_progress', 'check_resume_geometry',
    'restore_training_state',
]

_logger = logging.getLogger(__name__)

LAST_NAME = 'last.pth.tar'
BEST_NAME = 'model_best.pth.tar'
_HISTORY_PATTERN = re.compile(r'^checkpoint-(\d+)\.pth\.tar$')
_RECOVERY_PATTERN = re.compile(r'^recovery-(\d+)-(\d+)\.pth\.tar$')


def capture_rng_state() -> dict[str, Any]:
    """Every global RNG as plain data (numpy's key array becomes a tensor so weights-only loading accepts it)."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        'python': random.getstate(),
        'numpy': {'name': name, 'keys': torch.from_numpy(keys.astype(np.int64)), 'position': int(position),
                  'has_gauss': int(has_gauss), 'cached_gaussian': float(cached_gaussian)},
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss_next = state['python']
    random.setstate((version, tuple(internal), gauss_next))
    numpy_state = state['numpy']
    np.random.set_state((numpy_state['name'], numpy_state['keys'].numpy().astype(np.uint32),
                         numpy_state['position'], numpy_state['has_gauss'], numpy_state['cached_gaussian']))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state['cuda'])


def _plain(value: Any) -> Any:
    """Keep only what ``torch.load(weights_only=True)`` accepts (drops e.g. a plateau scheduler's inner object)."""
    if isinstance(value, (str, int, float, bool)) or value is None or isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)):
        items = [_plain(item) for item in value]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, dict):
        return {key: plain for key, item in value.items() if (plain := _plain(item)) is not _DROP}
    return _DROP


_DROP = object()


def training_checkpoint(
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        args: argparse.Namespace,
        metadata: CheckpointMetadata,
        *,
        epoch: int,
        epoch_complete: bool,
        batch_in_epoch: int,
        num_updates: int,
        model_ema: torch.nn.Module | None = None,
        scaler: Any = None,
        metrics: Mapping[str, float] | None = None,
        epoch_totals: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Everything a run continues from, as plain data and tensors (what :func:`restore_training_state` reads
    back): the model under timm's ``arch`` / ``state_dict`` keys, optimizer, schedule, position, RNG state, the
    training flags (``args``) and the :class:`CheckpointMetadata` validate.py uses the weights with."""
    checkpoint: dict[str, Any] = {
        'arch': args.model,
        'state_dict': model.state_dict(),
        'optimizer': optimizer.state_dict(),
        'scheduler': _plain(scheduler.state_dict()),
        'epoch': epoch,
        'epoch_complete': epoch_complete,
        'batch_in_epoch': batch_in_epoch,
        'step': num_updates,
        'rng': capture_rng_state(),
        'args': _plain(dict(vars(args))),
        'metadata': metadata.to_dict(),
    }
    if model_ema is not None:
        checkpoint['state_dict_ema'] = model_ema.module.state_dict()
    if scaler is not None:
        checkpoint['scaler'] = scaler.state_dict()
    if metrics:
        checkpoint['metrics'] = dict(metrics)
    if epoch_totals:
        checkpoint['epoch_totals'] = dict(epoch_totals)
    return checkpoint


def checkpoint_progress(checkpoint: Mapping[str, Any]) -> tuple[int, int]:
    """``(epoch to run next, batches of it already done)``: the point a checkpoint continues from."""
    epoch, batch_in_epoch = checkpoint.get('epoch', -1), checkpoint.get('batch_in_epoch', 0)
    for name, value in (('epoch', epoch), ('batch_in_epoch', batch_in_epoch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < -1:
            raise CheckpointError(f'the checkpoint\'s {name!r} is {value!r}, not a count; it was not written by '
                                  f'train.py')
    if checkpoint.get('epoch_complete', True):
        return epoch + 1, 0
    return epoch, batch_in_epoch


class CheckpointSaver:
    """Writes the run's checkpoints (main process only) and keeps the best metric across resumes."""

    def __init__(self, run_dir: str | Path, metric_name: str = 'top1', checkpoint_interval: int = 10,
                 max_history: int = 1) -> None:
        self.run_dir = Path(run_dir)
        self.metric_name = metric_name
        self.decreasing = metric_name == 'loss'
        self.checkpoint_interval = checkpoint_interval
        self.max_history = max_history
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.prune_history = True  # off after --resume auto fell back past a damaged file: keep every old one

    def is_better(self, metric: float) -> bool:
        if self.best_metric is None:
            return True
        return metric < self.best_metric if self.decreasing else metric > self.best_metric

    def save_epoch(self, checkpoint: dict[str, Any], epoch: int, metric: float | None) -> bool:
        """Save the end-of-epoch files; returns whether this epoch is the new best.

        Order matters for a kill in between: ``last.pth.tar`` is written last, so until it exists a resume redoes
        this epoch and rewrites the others.
        """
        if metric is not None and not math.isfinite(metric):
            # e.g. every validation image undecodable: NaN would become a best that no later epoch can beat
            _logger.warning('epoch %d: validation %s is %s; this epoch cannot be the best', epoch, self.metric_name,
                            metric)
            metric = None
        is_best = metric is not None and self.is_better(metric)
        if is_best:
            self.best_metric, self.best_epoch = metric, epoch
        checkpoint['best_metric'] = self.best_metric
        checkpoint['best_epoch'] = self.best_epoch
        checkpoint = with_checksum(checkpoint)
        if is_best:
            atomic_save(checkpoint, self.run_dir / BEST_NAME)
        if self.max_history > 0 and (epoch + 1) % self.checkpoint_interval == 0:
            atomic_save(checkpoint, self.run_dir / f'checkpoint-{epoch}.pth.tar')
            if self.prune_history:
                self._prune_history()
        atomic_save(checkpoint, self.run_dir / LAST_NAME)
        self._remove_recovery()
        return is_best

    def save_recovery(self, checkpoint: dict[str, Any], epoch: int, batch_in_epoch: int) -> Path:
        checkpoint['best_metric'] = self.best_metric
        checkpoint['best_epoch'] = self.best_epoch
        path = atomic_save(with_checksum(checkpoint), self.run_dir / f'recovery-{epoch}-{batch_in_epoch}.pth.tar')
        self._remove_recovery(keep=path)
        return path

    def remove_stale_temp_files(self) -> list[Path]:
        """Delete temp files a killed write left behind (``.NAME.XXXX.tmp``); call from the main process only,
        before it writes anything, so no write in progress is touched."""
        stale = [path for path in self.run_dir.iterdir() if path.name.startswith('.') and path.name.endswith('.tmp')]
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    def remove_recovery_from(self, epoch: int, batch_in_epoch: int) -> list[Path]:
        """Delete recovery files of ``epoch`` whose weights were used at or after ``batch_in_epoch``.

        Called when the loss went non-finite at that batch: those weights produced it, so ``--resume auto`` must
        not pick them over the last good checkpoint.
        """
        removed = []
        for path in self.run_dir.iterdir():
            match = _RECOVERY_PATTERN.match(path.name)
            if match and int(match.group(1)) == epoch and int(match.group(2)) >= batch_in_epoch:
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    def _prune_history(self) -> None:
        history = sorted((int(match.group(1)), path) for path in self.run_dir.iterdir()
                         if (match := _HISTORY_PATTERN.match(path.name)))
        for _, path in history[:max(0, len(history) - self.max_history)]:
            path.unlink(missing_ok=True)

    def _remove_recovery(self, keep: Path | None = None) -> None:
        for path in self.run_dir.iterdir():
            if _RECOVERY_PATTERN.match(path.name) and path != keep:
                path.unlink(missing_ok=True)


@dataclass
class ResumeChoice:
    """What ``--resume auto`` continues from, and the files it could not use (with why)."""

    path: Path
    checkpoint: dict[str, Any]
    skipped: list[tuple[Path, str]]


# Among checkpoints at the same point, the one most likely to be the run's own newest state wins.
_PREFERENCE = {'recovery': 3, 'last': 2, 'history': 1, 'best': 0}


def _checkpoint_kind(name: str) -> str | None:
    if name == LAST_NAME:
        return 'last'
    if name == BEST_NAME:
        return 'best'
    if _HISTORY_PATTERN.match(name):
        return 'history'
    if _RECOVERY_PATTERN.match(name):
        return 'recovery'
    return None


def find_resume_checkpoint(run_dir: str | Path) -> ResumeChoice | None:
    """The run's checkpoint that is furthest along among those that load and verify (recovery files, ``last``,
    ``checkpoint-N``, ``model_best``), or None when the folder holds none (a fresh run).

    Files that are unreadable, fail their checksum or are not training checkpoints are listed in
    :attr:`ResumeChoice.skipped`, so one damaged ``last.pth.tar`` falls back to an intact older file instead of
    restarting from epoch 0. If files exist but none is usable, that is an error: starting over would overwrite them.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    candidates = sorted(path for path in run_dir.iterdir() if _checkpoint_kind(path.name))
    best: tuple[tuple[int, int, int], Path, dict[str, Any]] | None = None
    skipped: list[tuple[Path, str]] = []
    for path in candidates:
        try:
            checkpoint = load_checkpoint_file(path)
            if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get('state_dict'), Mapping):
                raise CheckpointError('not a training checkpoint (no state_dict)')
            progress = checkpoint_progress(checkpoint)
        except CheckpointError as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else 'unreadable'
            skipped.append((path, reason))
            continue
        rank = (*progress, _PREFERENCE[_checkpoint_kind(path.name)])
        if best is None or rank > best[0]:
            best = (rank, path, dict(checkpoint))
        del checkpoint
    if best is None and skipped:
        reasons = '; '.join(f'{path.name}: {reason}' for path, reason in skipped)
        raise CheckpointError(f'--resume auto: no checkpoint in {run_dir} is usable ({reasons}); restore one from a '
                              f'backup, or start over with --fresh (moves this run aside)')
    return None if best is None else ResumeChoice(best[1], best[2], skipped)


def check_resume_geometry(checkpoint: Any, args: argparse.Namespace, source: str) -> None:
    """A resume with another per-device batch or input size: refused mid-epoch (the position counts batches of
    the old size, so samples would be skipped or repeated), a warning at an epoch boundary."""
    saved = training_args(checkpoint)
    if not saved:
        return
    mid_epoch = not checkpoint.get('epoch_complete', True)
    for flag, name in (('-b/--batch-size', 'batch_size'), ('--img-size', 'img_size')):
        before, now = saved.get(name), getattr(args, name, None)
        if before is None or now is None or before == now:
            continue
        if mid_epoch and name == 'batch_size':
            raise UsageError(f'{source} stopped inside an epoch with {flag} {before}; resuming it with {now} would '
                             f'skip or repeat samples: resume with {flag} {before}')
        _logger.warning('resuming %s, trained with %s %s, with %s %s: the run continues with the new value',
                        source, flag, before, flag, now)


@dataclass
class ResumePoint:
    """Where a resumed run continues."""

    epoch: int = 0
    batch_in_epoch: int = 0
    num_updates: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    epoch_totals: dict[str, float] | None = None   # loss/sample sums of the part of the epoch already done


def restore_training_state(
        checkpoint: Mapping[str, Any],
        source: str,
        model: torch.nn.Module,
        *,
        model_name: str,
        class_names: list[str] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        scaler: Any = None,
        model_ema: torch.nn.Module | None = None,
        restore_optimizer: bool = True,
) -> ResumePoint:
    """Load a training checkpoint into the live objects; raise :class:`CheckpointError` naming any mismatch."""
    if not isinstance(checkpoint, Mapping) or 'state_dict' not in checkpoint:
        raise CheckpointError(f'{source} is not a training checkpoint (no state_dict); use --initial-checkpoint '
                              f'to start from plain weights')
    metadata = CheckpointMetadata.from_checkpoint(checkpoint, source)
    saved_model = metadata.model
    if saved_model and saved_model != model_name:
        raise CheckpointError(f'{source} was trained as model {saved_model!r} but --model is {model_name!r}')
    saved_classes = metadata.class_names
    if class_names is not None and saved_classes and list(saved_classes) != list(class_names):
        raise CheckpointError(
            f'{source} was trained on {len(saved_classes)} classes that differ from the {len(class_names)} class '
            f'folders of this dataset; resume on the same dataset')
    state_dict = clean_state_dict(checkpoint['state_dict'])
    check_state_dict_fits(model, state_dict, source=source)
    model.load_state_dict(state_dict)
    if model_ema is not None:
        if 'state_dict_ema' in checkpoint:
            ema_state = clean_state_dict(checkpoint['state_dict_ema'])
            check_state_dict_fits(model_ema.module, ema_state, source=f'{source} (EMA)')
            model_ema.module.load_state_dict(ema_state)
        else:
            _logger.warning('%s has no EMA weights; the EMA restarts from the resumed weights', source)
            model_ema.module.load_state_dict(state_dict)
    if restore_optimizer and optimizer is not None and 'optimizer' in checkpoint:
        try:
            optimizer.load_state_dict(checkpoint['optimizer'])
        except (ValueError, KeyError) as error:
            raise CheckpointError(f'optimizer state in {source} does not fit --opt {type(optimizer).__name__}: '
                                  f'{error}; pass --no-resume-opt to start a fresh optimizer') from None
    if restore_optimizer and scheduler is not None and checkpoint.get('scheduler'):
        scheduler.load_state_dict(checkpoint['scheduler'])
    if restore_optimizer and scaler is not None and checkpoint.get('scaler'):
        scaler.load_state_dict(checkpoint['scaler'])
    if checkpoint.get('rng'):
        restore_rng_state(checkpoint['rng'])
    epoch, batch_in_epoch = checkpoint_progress(checkpoint)
    return ResumePoint(
        epoch=epoch,
        batch_in_epoch=batch_in_epoch,
        num_updates=int(checkpoint.get('step', 0)),
        best_metric=checkpoint.get('best_metric'),
        best_epoch=checkpoint.get('best_epoch'),
        epoch_totals=dict(checkpoint['epoch_totals']) if checkpoint.get('epoch_totals') else None,
    )
