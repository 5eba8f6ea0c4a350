"""One training epoch: forward, loss, (accumulated) backward, optimizer step, EMA, schedule, progress.

The loop is device-agnostic (it talks to a :class:`Runtime`) and deterministic: before every micro-batch the
global RNGs (mixup, drop path) are seeded from ``(seed, epoch, batch, rank)``, so the run's randomness does not
depend on what happened before a resume. A non-finite loss is detected without a per-step device sync and stops the
run before anything is saved.
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from timm.utils import dispatch_clip_grad

from ..faults import kill_after_update
from ..interrupts import until_interrupted
from .runtime import Runtime

__all__ = ['NonFiniteLossError', 'EpochResult', 'seed_step', 'unwrap_model', 'train_one_epoch', 'format_duration']

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


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f'{hours}:{rest // 60:02d}:{rest % 60:02d}'


def train_one_epoch(
        model: torch.nn.Module,
        loader: Any,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        runtime: Runtime,
        *,
        epoch: int,
        num_batches: int,
        start_batch: int = 0,
        num_updates: int = 0,
        accum_steps: int = 1,
        seed: int = 0,
        scheduler: Any = None,
        mixup: Callable | None = None,
        scaler: torch.amp.GradScaler | None = None,
        model_ema: Any = None,
        clip_grad: float | None = None,
        clip_mode: str = 'norm',
        amp_dtype: torch.dtype | None = None,
        channels_last: bool = False,
        log_interval: int = 50,
        recovery_interval: int = 0,
        save_recovery: Callable[[int, int, dict[str, float]], None] | None = None,
        carried: dict[str, float] | None = None,
        tracker: Any = None,
        adversary: Callable[..., torch.Tensor] | None = None,
) -> EpochResult:
    """Train over ``loader`` (the epoch's batches from ``start_batch`` on) and return its statistics.

    ``num_batches`` is the full epoch's length: accumulation groups are ``accum_steps`` consecutive micro-batches
    counted from the epoch's start, the last group holding the remainder, and each micro-batch's loss is divided
    by its group's real size so every update is the mean gradient over the samples of its group.
    ``save_recovery(batch_in_epoch, num_updates, totals)`` is called on every process every ``recovery_interval``
    updates with the epoch's totals so far (all processes summed: ``loss_sum``, ``num_samples``, ``failed_images``);
    passing them back as ``carried`` after a mid-epoch resume makes the epoch's statistics those of the whole epoch.
    ``tracker`` (a :class:`robustcnn.tracking.Tracker`) gets the progress line's numbers at step ``num_updates``.
    ``adversary(model, images, targets, loss_fn)`` (adversarial training) replaces each batch by its attacked
    version (robustcnn/adversarial/training.py); it draws from the same per-batch seeded generators, so resume stays exact.
    """
    model.train()
    device = runtime.device
    is_ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    parameters = [p for p in model.parameters() if p.requires_grad]
    updates_per_epoch = math.ceil(num_batches / accum_steps)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    # index of the first micro-batch with a non-finite loss (-1: none), kept on the device to avoid a sync per step
    first_bad_batch = torch.full((), -1, dtype=torch.long, device=device)
    samples_seen = 0
    failed_images = 0
    data_seconds = 0.0
    interval_samples = 0
    start_time = interval_time = time.perf_counter()
    logged = False
    optimizer.zero_grad(set_to_none=True)

    def summed_totals() -> dict[str, float]:
        """This epoch's totals over all processes (including what a resumed run carried over)."""
        local = torch.tensor([loss_sum.item(), samples_seen, failed_images], dtype=torch.float64, device=device)
        loss_total, sample_total, failed_total = runtime.all_reduce_sum(local).tolist()
        before = carried or {}
        return {'loss_sum': loss_total + before.get('loss_sum', 0.0),
                'num_samples': int(sample_total + before.get('num_samples', 0)),
                'failed_images': int(failed_total + before.get('failed_images', 0))}

    advice = ('stopped without saving. Lower --lr, add --clip-grad, or use --amp-dtype bfloat16; then --resume auto '
              'continues from the last good checkpoint')

    def check_finite(check_weights: bool = False) -> None:
        """Stop every process together if any saw a non-finite loss (a collective: all processes call it).

        ``check_weights`` (before anything is saved): also the weights, since the update after the last finite loss
        can still overflow them, and a checkpoint of such weights would fail every resume.
        """
        slots = torch.zeros(runtime.world_size, dtype=torch.long, device=device)
        slots[runtime.rank] = first_bad_batch + 1
        reported = [value - 1 for value in runtime.all_reduce_sum(slots).tolist() if value > 0]
        if reported:
            first = min(reported)
            raise NonFiniteLossError(
                f'training loss became NaN or infinite in epoch {epoch} at batch {first + 1}/{num_batches}; {advice}',
                epoch=epoch, batch_index=first)
        if check_weights and parameters:
            bad = torch.stack([torch.isfinite(parameter).all() for parameter in parameters]).all().logical_not()
            if runtime.all_reduce_sum(bad.long().reshape(1)).item():
                # the weights used from the next batch on are bad: recovery files from there on get removed
                raise NonFiniteLossError(
                    f'weights became NaN or infinite in epoch {epoch} in the update at batch '
                    f'{batch_index + 1}/{num_batches}; {advice}', epoch=epoch, batch_index=batch_index + 1)

    runtime.step_done()  # XLA: the fresh accumulators become device data, so the first step compiles like the rest
    batch_index = start_batch - 1
    wait_start = time.perf_counter()
    for batch_index, batch in enumerate(until_interrupted(loader), start=start_batch):
        data_seconds += time.perf_counter() - wait_start
        failed_images += batch.num_failed
        runtime.seed_device(seed_step(seed, epoch, batch_index, runtime.rank))
        images, targets = runtime.prepare_batch(batch.images, batch.targets, transform=mixup)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if adversary is not None:  # on the plain module: the attack's passes are no DDP step and sync nothing
            images = adversary(unwrap_model(model), images, targets, loss_fn)

        group_start = (batch_index // accum_steps) * accum_steps
        group_size = min(accum_steps, num_batches - group_start)
        is_update = batch_index == group_start + group_size - 1
        sync_context = model.no_sync() if (is_ddp and not is_update) else contextlib.nullcontext()
        with sync_context:
            with runtime.autocast(amp_dtype):
                output = model(images)
                loss = loss_fn(output, targets)
            scaled = loss / group_size
            if scaler is not None:
                scaler.scale(scaled).backward()
            else:
                scaled.backward()
        detached = loss.detach().float()
        bad = ~torch.isfinite(detached)
        first_bad_batch = torch.where(bad & (first_bad_batch < 0), batch_index, first_bad_batch)
        loss_sum += detached.double() * images.shape[0]
        samples_seen += images.shape[0]
        interval_samples += images.shape[0]

        if is_update:
            if scaler is not None:
                if clip_grad is not None:
                    scaler.unscale_(optimizer)
                    dispatch_clip_grad(parameters, clip_grad, mode=clip_mode)
                scaler.step(optimizer)
                scaler.update()
            else:
                if clip_grad is not None:
                    dispatch_clip_grad(parameters, clip_grad, mode=clip_mode)
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            num_updates += 1
            if model_ema is not None:
                model_ema.update(unwrap_model(model), step=num_updates)
            if scheduler is not None:
                scheduler.step_update(num_updates=num_updates)
        runtime.step_done()  # XLA: the step's graph ends here, before any value is read below

        if is_update:
            update_in_epoch = batch_index // accum_steps + 1
            # also the first update of the call: on a CPU the first interval can take minutes, and a silent start
            # looks hung
            on_interval = update_in_epoch % log_interval == 0 or update_in_epoch == updates_per_epoch
            if on_interval or not logged:
                logged = True
                check_finite()
                runtime.synchronize()
                now = time.perf_counter()
                rate = runtime.global_count(interval_samples) / max(now - interval_time, 1e-9)
                remaining = (num_batches - batch_index - 1) * (now - start_time) / max(batch_index + 1 - start_batch, 1)
                _logger.info(
                    'Train: %d [%d/%d (%.0f%%)] loss %.4f (%.4f) lr %.3e %.1f img/s data %.3fs ETA %s',
                    epoch, batch_index + 1, num_batches, 100.0 * (batch_index + 1) / num_batches, detached.item(),
                    loss_sum.item() / max(samples_seen, 1), optimizer.param_groups[0]['lr'], rate,
                    data_seconds / max(batch_index + 1 - start_batch, 1), format_duration(remaining))
                if tracker is not None and on_interval:  # the curves' steps do not depend on where a run resumed
                    tracker.log_scalars({
                        'train/loss': detached.item(), 'train/lr': optimizer.param_groups[0]['lr'],
                        'train/images_per_second': rate,
                        'train/data_seconds': data_seconds / max(batch_index + 1 - start_batch, 1)}, step=num_updates)
                interval_samples, interval_time = 0, now
            if save_recovery is not None and recovery_interval and num_updates % recovery_interval == 0 \
                    and batch_index + 1 < num_batches:
                check_finite(check_weights=True)
                save_recovery(batch_index + 1, num_updates, summed_totals())
            kill_after_update(num_updates)
        wait_start = time.perf_counter()

    check_finite(check_weights=True)  # the epoch's checkpoint is written next
    runtime.synchronize()
    seconds = time.perf_counter() - start_time
    totals = summed_totals()
    total_loss, total_samples, total_failed = totals['loss_sum'], totals['num_samples'], totals['failed_images']
    if total_failed:
        _logger.warning('epoch %d: %d unreadable image file(s) were replaced by other samples', epoch, total_failed)
    return EpochResult(
        loss=total_loss / max(total_samples, 1),
        num_samples=int(total_samples),
        num_updates=num_updates,
        seconds=seconds,
        images_per_second=(total_samples - (carried or {}).get('num_samples', 0)) / max(seconds, 1e-9),
        failed_images=int(total_failed),
        lr=float(optimizer.param_groups[0]['lr']),
    )
