"""One training epoch: forward, loss, (accumulated) backward, optimizer step, EMA, schedule, progress.

:func:`train_one_epoch` reads like DeiT's ``engine.py``: load a batch, mixup, forward and loss under autocast,
backward and step, EMA, log. The edge cases live in small named pieces beside it: :class:`OptimizerStep`
(accumulation groups, float16 grad scaling, clipping, the schedule's per-update step), :class:`NonFiniteGuard` (a
NaN or infinite loss or weight stops the run before anything is saved), and the epoch's totals and progress line.

The loop is device-agnostic (it talks to a :class:`Runtime`) and deterministic: before every micro-batch the
global RNGs (mixup, drop path) are seeded from ``(seed, epoch, batch, rank)``, so the run's randomness does not
depend on what happened before a resume.
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from timm.utils import ModelEmaV3, dispatch_clip_grad

from ..faults import kill_after_update
from ..interrupts import until_interrupted
from .evaluate import format_duration
from .runtime import Runtime

if TYPE_CHECKING:
    from ..tracking import Tracker

__all__ = ['NonFiniteLossError', 'EpochResult', 'TrainingSetup', 'OptimizerStep', 'NonFiniteGuard', 'seed_step',
           'unwrap_model', 'train_one_epoch']

_logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite at ``batch_index`` of ``epoch`` (the first such batch)."""

    def __init__(self, message: str, epoch: int, batch_index: int) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.batch_index = batch_index


@dataclass
class EpochResult:
    loss: float               # mean training loss over the epoch's samples on all processes
    num_samples: int          # samples seen this epoch (all processes, including those before a resume)
    num_updates: int          # optimizer updates since the start of training, after this epoch
    seconds: float
    images_per_second: float
    failed_images: int        # unreadable files replaced by other samples (all processes)
    lr: float                 # learning rate of the first parameter group at the end of the epoch


@dataclass(frozen=True)
class TrainingSetup:
    """The objects and settings every epoch trains with, built once per run (``engine.trainer``) and never replaced.

    ``model`` is the module the loop calls (torch.compile and DDP wrappers included). ``num_batches`` is the full
    epoch's length, from the epoch's start, also when a resumed epoch starts later. ``scaler`` is set for float16
    autocast only (bfloat16 and float32 need no loss scaling). ``adversary(model, images, targets, loss_fn)``
    (adversarial training, robustcnn/adversarial/training.py) replaces each batch by its attacked version; it draws
    from the same per-batch seeded generators, so resume stays exact. ``recovery_interval``: updates between
    mid-epoch recovery saves (0: none).
    """

    model: torch.nn.Module
    train_loader: Any
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    runtime: Runtime
    num_batches: int
    scheduler: Any = None
    mixup: Callable | None = None
    scaler: torch.amp.GradScaler | None = None
    model_ema: ModelEmaV3 | None = None
    adversary: Callable[..., torch.Tensor] | None = None
    amp_dtype: torch.dtype | None = None
    accum_steps: int = 1
    clip_grad: float | None = None
    clip_mode: str = 'norm'
    channels_last: bool = False
    seed: int = 0
    log_interval: int = 50
    recovery_interval: int = 0

    @property
    def updates_per_epoch(self) -> int:
        return math.ceil(self.num_batches / self.accum_steps)


def seed_step(seed: int, epoch: int, batch_index: int, rank: int) -> int:
    """Seed python/numpy/torch for one micro-batch: a pure function of where the run is; returns the seed."""
    state = np.random.SeedSequence([seed, epoch, batch_index, rank, 7]).generate_state(2, dtype=np.uint32)
    value = (int(state[0]) << 32 | int(state[1])) >> 1
    random.seed(value)
    np.random.seed(int(state[0]))
    torch.manual_seed(value)
    return value


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model under DistributedDataParallel and torch.compile wrappers."""
    while True:
        if hasattr(model, 'module') and isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, '_orig_mod'):
            model = model._orig_mod
        else:
            return model


class OptimizerStep:
    """Micro-batch gradients into optimizer updates, for one epoch: accumulation groups, backward (through the
    float16 GradScaler when there is one), clipping, the step, ``zero_grad`` and the schedule's per-update step.

    Groups are ``accum_steps`` consecutive micro-batches counted from the epoch's start, the last group holding the
    remainder, and each micro-batch's loss is divided by its group's real size, so every update is the mean
    gradient over the samples of its group. A mid-epoch resume starts on a group boundary (recovery checkpoints are
    saved after updates only). timm's ``NativeScaler`` covers only the float16 backward-and-step; accumulation
    groups, DDP's ``no_sync`` and the schedule are ours, and the checkpoints keep torch's GradScaler state as it is.
    """

    def __init__(self, setup: TrainingSetup, num_updates: int) -> None:
        self.setup = setup
        self.num_updates = num_updates
        self.parameters = [parameter for parameter in setup.model.parameters() if parameter.requires_grad]
        self._is_ddp = isinstance(setup.model, torch.nn.parallel.DistributedDataParallel)

    def group_size(self, batch_index: int) -> int:
        """Micro-batches in the accumulation group of ``batch_index``."""
        steps = self.setup.accum_steps
        return min(steps, self.setup.num_batches - batch_index // steps * steps)

    def is_update(self, batch_index: int) -> bool:
        """Whether ``batch_index`` is its group's last micro-batch, the one whose backward is followed by a step."""
        steps = self.setup.accum_steps
        return batch_index == batch_index // steps * steps + self.group_size(batch_index) - 1

    def gradient_sync(self, batch_index: int) -> contextlib.AbstractContextManager:
        """The context for a micro-batch's forward and backward: under DDP, gradients are all-reduced only in the
        group's last micro-batch (``no_sync`` before it)."""
        if self._is_ddp and not self.is_update(batch_index):
            return self.setup.model.no_sync()
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, batch_index: int) -> None:
        """Add the micro-batch's share of its group's mean gradient."""
        scaled = loss / self.group_size(batch_index)
        if self.setup.scaler is not None:
            self.setup.scaler.scale(scaled).backward()
        else:
            scaled.backward()

    def step(self) -> None:
        """Clip, update the weights, clear the gradients, count the update and move the schedule to it."""
        setup, scaler = self.setup, self.setup.scaler
        if scaler is not None:
            if setup.clip_grad is not None:
                scaler.unscale_(setup.optimizer)  # clip the true gradients, not the scaled ones
                dispatch_clip_grad(self.parameters, setup.clip_grad, mode=setup.clip_mode)
            scaler.step(setup.optimizer)
            scaler.update()
        else:
            if setup.clip_grad is not None:
                dispatch_clip_grad(self.parameters, setup.clip_grad, mode=setup.clip_mode)
            setup.optimizer.step()
        setup.optimizer.zero_grad(set_to_none=True)
        self.num_updates += 1
        if setup.scheduler is not None:
            setup.scheduler.step_update(num_updates=self.num_updates)


class NonFiniteGuard:
    """Stops every process together, before anything is saved, once a loss or the weights are NaN or infinite.

    The index of the first micro-batch with a non-finite loss stays on the device (-1: none), so watching costs no
    sync per step; :meth:`check` reads it and is a collective (all processes call it at the same points).
    """

    ADVICE = ('stopped without saving. Lower --lr, add --clip-grad, or use --amp-dtype bfloat16; then --resume auto '
              'continues from the last good checkpoint')

    def __init__(self, runtime: Runtime, parameters: list[torch.nn.Parameter], epoch: int, num_batches: int) -> None:
        self.runtime = runtime
        self.parameters = parameters
        self.epoch = epoch
        self.num_batches = num_batches
        self.first_bad_batch = torch.full((), -1, dtype=torch.long, device=runtime.device)

    def observe(self, loss: torch.Tensor, batch_index: int) -> None:
        """Note ``batch_index`` if its (detached, float) loss is the epoch's first non-finite one."""
        bad = ~torch.isfinite(loss)
        self.first_bad_batch = torch.where(bad & (self.first_bad_batch < 0), batch_index, self.first_bad_batch)

    def check(self, weights_after_batch: int | None = None) -> None:
        """Raise :class:`NonFiniteLossError` on every process if any saw a non-finite loss.

        ``weights_after_batch`` (before anything is saved): also the weights, as updated by that batch, since the
        update after the last finite loss can still overflow them, and a checkpoint of such weights would fail every
        resume.
        """
        runtime = self.runtime
        slots = torch.zeros(runtime.world_size, dtype=torch.long, device=runtime.device)
        slots[runtime.rank] = self.first_bad_batch + 1
        reported = [value - 1 for value in runtime.all_reduce_sum(slots).tolist() if value > 0]
        if reported:
            first = min(reported)
            raise NonFiniteLossError(
                f'training loss became NaN or infinite in epoch {self.epoch} at batch {first + 1}/{self.num_batches}; '
                f'{self.ADVICE}', epoch=self.epoch, batch_index=first)
        if weights_after_batch is not None and self.parameters:
            bad = torch.stack([torch.isfinite(parameter).all() for parameter in self.parameters]).all().logical_not()
            if runtime.all_reduce_sum(bad.long().reshape(1)).item():
                # the weights used from the next batch on are bad: recovery files from there on get removed
                raise NonFiniteLossError(
                    f'weights became NaN or infinite in epoch {self.epoch} in the update at batch '
                    f'{weights_after_batch + 1}/{self.num_batches}; {self.ADVICE}', epoch=self.epoch,
                    batch_index=weights_after_batch + 1)


class _EpochTotals:
    """The epoch's loss and sample counts: the loss sum kept on the device (float64, no sync per step), summed over
    the processes on demand, plus what a resumed run carried over from before its restart."""

    def __init__(self, runtime: Runtime, carried: dict[str, float] | None) -> None:
        self.runtime = runtime
        self.carried = carried or {}
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=runtime.device)
        self.samples_seen = 0
        self.failed_images = 0

    def add(self, loss: torch.Tensor, num_samples: int) -> None:
        self.loss_sum += loss.double() * num_samples
        self.samples_seen += num_samples

    def local_mean_loss(self) -> float:
        return self.loss_sum.item() / max(self.samples_seen, 1)

    def summed(self) -> dict[str, float]:
        """This epoch's totals over all processes, including the carried ones (a collective)."""
        local = torch.tensor([self.loss_sum.item(), self.samples_seen, self.failed_images], dtype=torch.float64,
                             device=self.runtime.device)
        loss_total, sample_total, failed_total = self.runtime.all_reduce_sum(local).tolist()
        return {'loss_sum': loss_total + self.carried.get('loss_sum', 0.0),
                'num_samples': int(sample_total + self.carried.get('num_samples', 0)),
                'failed_images': int(failed_total + self.carried.get('failed_images', 0))}


class _Progress:
    """The progress line (every ``log_interval`` updates, the epoch's last, and the call's first: on a CPU the first
    interval can take minutes, and a silent start looks hung) and the tracker's curves (interval updates only, so
    the curves' steps do not depend on where a run resumed)."""

    def __init__(self, setup: TrainingSetup, epoch: int, start_batch: int, tracker: Tracker | None) -> None:
        self.setup = setup
        self.epoch = epoch
        self.start_batch = start_batch
        self.tracker = tracker
        self.first_line_pending = True
        self.data_seconds = 0.0
        self.interval_samples = 0
        self.start_time = self.interval_time = time.perf_counter()

    def on_interval(self, batch_index: int) -> bool:
        """Whether the update ending at ``batch_index`` is a logging interval's (or the epoch's last)."""
        update_in_epoch = batch_index // self.setup.accum_steps + 1
        return update_in_epoch % self.setup.log_interval == 0 or update_in_epoch == self.setup.updates_per_epoch

    def log(self, batch_index: int, loss: torch.Tensor, totals: _EpochTotals, num_updates: int,
            track: bool) -> None:
        setup, runtime = self.setup, self.setup.runtime
        self.first_line_pending = False
        runtime.synchronize()
        now = time.perf_counter()
        batches_done = max(batch_index + 1 - self.start_batch, 1)
        rate = runtime.global_count(self.interval_samples) / max(now - self.interval_time, 1e-9)
        remaining = (setup.num_batches - batch_index - 1) * (now - self.start_time) / batches_done
        lr = setup.optimizer.param_groups[0]['lr']
        _logger.info(
            'Train: %d [%d/%d (%.0f%%)] loss %.4f (%.4f) lr %.3e %.1f img/s data %.3fs ETA %s',
            self.epoch, batch_index + 1, setup.num_batches, 100.0 * (batch_index + 1) / setup.num_batches,
            loss.item(), totals.local_mean_loss(), lr, rate, self.data_seconds / batches_done,
            format_duration(remaining))
        if self.tracker is not None and track:
            self.tracker.log_scalars({
                'train/loss': loss.item(), 'train/lr': lr, 'train/images_per_second': rate,
                'train/data_seconds': self.data_seconds / batches_done}, step=num_updates)
        self.interval_samples, self.interval_time = 0, now


def train_one_epoch(
        setup: TrainingSetup,
        epoch: int,
        *,
        start_batch: int = 0,
        num_updates: int = 0,
        carried: dict[str, float] | None = None,
        tracker: Tracker | None = None,
        save_recovery: Callable[[int, int, dict[str, float]], None] | None = None,
) -> EpochResult:
    """Train over ``setup.train_loader`` (the epoch's batches from ``start_batch`` on) and return its statistics.

    ``num_updates``: optimizer updates done before this call. ``save_recovery(batch_in_epoch, num_updates,
    totals)`` is called on every process every ``setup.recovery_interval`` updates with the epoch's totals so far
    (all processes summed: ``loss_sum``, ``num_samples``, ``failed_images``); passing them back as ``carried`` after
    a mid-epoch resume makes the epoch's statistics those of the whole epoch. ``tracker`` (a
    :class:`robustcnn.tracking.Tracker`) gets the progress line's numbers at step ``num_updates``.
    """
    model, runtime = setup.model, setup.runtime
    model.train()
    totals = _EpochTotals(runtime, carried)
    updates = OptimizerStep(setup, num_updates)
    guard = NonFiniteGuard(runtime, updates.parameters, epoch, setup.num_batches)
    progress = _Progress(setup, epoch, start_batch, tracker)
    setup.optimizer.zero_grad(set_to_none=True)

    runtime.step_done()  # XLA: the fresh accumulators become device data, so the first step compiles like the rest
    batch_index = start_batch - 1
    wait_start = time.perf_counter()
    for batch_index, batch in enumerate(until_interrupted(setup.train_loader), start=start_batch):
        progress.data_seconds += time.perf_counter() - wait_start
        totals.failed_images += batch.num_failed
        runtime.seed_device(seed_step(setup.seed, epoch, batch_index, runtime.rank))
        images, targets = runtime.prepare_batch(batch.images, batch.targets, transform=setup.mixup)
        if setup.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if setup.adversary is not None:  # on the plain module: the attack's passes are no DDP step and sync nothing
            images = setup.adversary(unwrap_model(model), images, targets, setup.loss_fn)

        with updates.gradient_sync(batch_index):
            with runtime.autocast(setup.amp_dtype):
                output = model(images)
                loss = setup.loss_fn(output, targets)
            updates.backward(loss, batch_index)
        detached = loss.detach().float()
        guard.observe(detached, batch_index)
        totals.add(detached, images.shape[0])
        progress.interval_samples += images.shape[0]

        is_update = updates.is_update(batch_index)
        if is_update:
            updates.step()
            if setup.model_ema is not None:
                setup.model_ema.update(unwrap_model(model), step=updates.num_updates)
        runtime.step_done()  # XLA: the step's graph ends here, before any value is read below

        if is_update:
            on_interval = progress.on_interval(batch_index)
            if on_interval or progress.first_line_pending:
                guard.check()  # before the line reads the loss
                progress.log(batch_index, detached, totals, updates.num_updates, track=on_interval)
            if save_recovery is not None and setup.recovery_interval \
                    and updates.num_updates % setup.recovery_interval == 0 and batch_index + 1 < setup.num_batches:
                guard.check(weights_after_batch=batch_index)
                save_recovery(batch_index + 1, updates.num_updates, totals.summed())
            kill_after_update(updates.num_updates)
        wait_start = time.perf_counter()

    guard.check(weights_after_batch=batch_index)  # the epoch's checkpoint is written next
    runtime.synchronize()
    seconds = time.perf_counter() - progress.start_time
    summed = totals.summed()
    if summed['failed_images']:
        _logger.warning('epoch %d: %d unreadable image file(s) were replaced by other samples', epoch,
                        summed['failed_images'])
    return EpochResult(
        loss=summed['loss_sum'] / max(summed['num_samples'], 1),
        num_samples=summed['num_samples'],
        num_updates=updates.num_updates,
        seconds=seconds,
        images_per_second=(summed['num_samples'] - totals.carried.get('num_samples', 0)) / max(seconds, 1e-9),
        failed_images=summed['failed_images'],
        lr=float(setup.optimizer.param_groups[0]['lr']),
    )
