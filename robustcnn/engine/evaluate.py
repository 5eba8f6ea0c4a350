"""The evaluation loop: top-1/top-5/loss over a loader, each sample counted exactly once across processes.

One loop serves every evaluation set. Per-sample bookkeeping the benchmarks need (ImageNet-C's per corruption and
severity errors) is done with a group id per dataset index, accumulated on the device and summed across processes
at a few agreed points, so a 3.75 M-image run is one pipeline, never a loader per folder.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from ..cli import UsageError
from ..faults import kill_point
from ..interrupts import until_interrupted
from .runtime import IGNORE_TARGET, Runtime, runtime_inference_mode

__all__ = ['EvalResult', 'GroupCounts', 'SampleGroups', 'Predictions', 'evaluate', 'predict', 'normalize_on_device',
           'format_duration', 'top5_hits']

_logger = logging.getLogger(__name__)


@dataclass
class GroupCounts:
    """Per-group totals summed over all processes: images scored, top-1 correct, and files that failed to decode.

    A group is finished once ``scored + skipped`` reaches its size in the dataset.
    """

    correct: list[int]
    scored: list[int]
    skipped: list[int]

    def finished(self, group_sizes: Sequence[int]) -> list[int]:
        return [group for group, size in enumerate(group_sizes)
                if self.scored[group] + self.skipped[group] >= size]


@dataclass
class SampleGroups:
    """Samples whose top-1 counts are also kept per group (a set scored by parts, e.g. ImageNet-C's folders).

    ``of_sample``: the group id of every dataset index. ``on_update`` is called on every process with the counts
    summed over all processes every ``sync_every`` batches (and at the end), so a caller can save finished groups
    as they complete and resume after a kill.
    """

    of_sample: Sequence[int] | torch.Tensor
    num_groups: int = 0
    on_update: Callable[[GroupCounts], None] | None = None
    sync_every: int = 0


@dataclass
class EvalResult:
    """Accuracies in percent; ``loss`` is the mean cross entropy over the scored samples."""

    top1: float
    top5: float
    loss: float
    num_samples: int
    skipped_files: int
    elapsed_seconds: float = 0.0
    groups: GroupCounts | None = None

    def metrics(self) -> dict[str, Any]:
        """The fields of a results file entry."""
        return {'top1': self.top1, 'top5': self.top5, 'loss': self.loss, 'num_samples': self.num_samples,
                'skipped_files': self.skipped_files}


@dataclass
class Predictions:
    """Every sample's model output in dataset order, the same on every process.

    ``outputs``: float32 CPU tensor ``[num_samples, K]`` (logits, or what ``reduce`` made of them); ``scored``: bool
    ``[num_samples]``, False for files that failed to decode (their rows are zeros).
    """

    outputs: torch.Tensor
    scored: torch.Tensor
    skipped_files: int
    elapsed_seconds: float = 0.0


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return '?'
    seconds = int(round(seconds))
    return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def normalize_on_device(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 images (0..255) -> float, normalized. Workers ship uint8 (4x less to copy); the device does the math."""
    images = images.float()
    return images.div_(255.0).sub_(mean).div_(std)


def _batch_logits(model: torch.nn.Module, images: torch.Tensor, runtime: Runtime, mean: torch.Tensor | None,
                  std: torch.Tensor | None, channels_last: bool, amp_dtype: torch.dtype | None) -> torch.Tensor:
    """One batch through the model as :func:`evaluate` and :func:`predict` both score it: to the device,
    normalized there (uint8 from the workers), channels-last if asked, under autocast; float32 logits out."""
    images = images.to(runtime.device, non_blocking=True)
    if mean is not None and not images.is_floating_point():
        images = normalize_on_device(images, mean, std)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with runtime.autocast(amp_dtype):
        output = _forward(model, images)
    return output.float()


def _steps_every_process_takes(loader: Any, world_size: int) -> int | None:
    """The number of batches the shortest shard yields, when the loader lets us know it without talking."""
    sampler = getattr(loader, 'sampler', None)
    batch_size = getattr(loader, 'batch_size', None)
    if world_size == 1:
        try:
            return len(loader)
        except TypeError:
            return None
    if sampler is None or not batch_size or not hasattr(sampler, 'shard_length'):
        return None
    shortest = min(sampler.shard_length(rank) for rank in range(world_size))
    return shortest // batch_size if getattr(loader, 'drop_last', False) else math.ceil(shortest / batch_size)


# What convolutions and pooling say when a picture is smaller than their window (the stem's, a stage's).
_TOO_SMALL_MESSAGES = ("can't be greater than actual input size", 'Output size is too small')


def _forward(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``model(images)``; an image smaller than the model's windows (``--resize_mode none`` with tiny images) is a
    user error with a one-line message, not a convolution traceback."""
    try:
        return model(images)
    except RuntimeError as error:
        if any(text in str(error) for text in _TOO_SMALL_MESSAGES):
            height, width = images.shape[-2:]
            reason = str(error).splitlines()[0]
            raise UsageError(f'images of {height}x{width} pixels are too small for the model ({reason}); use '
                             f'--resize_mode resize_center_crop or resize') from None
        raise


def _device_normalization(normalization: tuple[Sequence[float], Sequence[float]] | None,
                          device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(mean, std)`` as ``[1, C, 1, 1]`` float32 tensors on the device for :func:`normalize_on_device`."""
    if normalization is None:
        return None, None
    mean = torch.tensor(normalization[0], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(normalization[1], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return mean, std


class _GroupTally:
    """:class:`SampleGroups`' per-group counts on the device (rows: top-1 correct, scored, skipped files), summed
    over the processes every ``sync_every`` steps (only while every process still takes steps: the sum is a
    collective) and at the end."""

    def __init__(self, sample_groups: SampleGroups, loader: Iterable[Any], runtime: Runtime) -> None:
        device = runtime.device
        self.runtime = runtime
        self.of_sample = torch.as_tensor(sample_groups.of_sample, dtype=torch.long, device=device)
        self.num_groups = sample_groups.num_groups or (
            int(self.of_sample.max().item()) + 1 if self.of_sample.numel() else 0)
        self.on_update, self.sync_every = sample_groups.on_update, sample_groups.sync_every
        self.sync_limit = _steps_every_process_takes(loader, runtime.world_size) if self.sync_every > 0 else None
        self.counts = torch.zeros(3, max(self.num_groups, 1), dtype=torch.long, device=device)

    def add_failed(self, failed_indices: Sequence[int] | torch.Tensor) -> None:
        if len(failed_indices):
            failed = self.of_sample[torch.as_tensor(failed_indices, dtype=torch.long, device=self.runtime.device)]
            self.counts[2].index_add_(0, failed, torch.ones_like(failed))

    def add(self, indices: torch.Tensor, top1_hits: torch.Tensor, valid: torch.Tensor) -> None:
        batch_groups = self.of_sample[indices.to(self.runtime.device, non_blocking=True)]
        self.counts[0].index_add_(0, batch_groups, top1_hits.long())
        self.counts[1].index_add_(0, batch_groups, valid.long())

    def summed(self) -> GroupCounts:
        reduced = self.runtime.all_reduce_sum(self.counts.clone()).cpu()
        return GroupCounts(correct=reduced[0, :self.num_groups].tolist(), scored=reduced[1, :self.num_groups].tolist(),
                           skipped=reduced[2, :self.num_groups].tolist())

    def after_step(self, step: int) -> None:
        if (self.on_update is not None and self.sync_limit is not None and step <= self.sync_limit
                and step % self.sync_every == 0):
            self.on_update(self.summed())

    def finish(self) -> GroupCounts:
        result = self.summed()
        if self.on_update is not None:
            self.on_update(result)
        return result


class _EvalProgress:
    """The main process's progress line every ``log_freq`` steps, and at the first (an early sign of life) and last."""

    def __init__(self, description: str, loader: Iterable[Any], runtime: Runtime, log_freq: int) -> None:
        self.description = description
        self.runtime = runtime
        self.log_freq = log_freq
        try:
            self.total_steps = len(loader)  # type: ignore[arg-type]
        except TypeError:
            self.total_steps = 0
        self.local_images = 0
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def after_step(self, step: int, counts: torch.Tensor) -> None:
        total_steps = self.total_steps
        if not (self.log_freq and self.runtime.is_main and (step % self.log_freq == 0 or step in (1, total_steps))):
            return
        elapsed = self.elapsed()
        rate = self.local_images * self.runtime.world_size / max(elapsed, 1e-9)
        eta = elapsed / step * (total_steps - step) if total_steps else float('nan')
        progress = f'{step}/{total_steps}' if total_steps else f'{step}'
        _logger.info('%s [%s] %.1f images/s, elapsed %s, ETA %s, top1 %.2f (this process)',
                     self.description, progress, rate, format_duration(elapsed), format_duration(eta),
                     100.0 * counts[0].item() / max(counts[2].item(), 1))


def top5_hits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[B, k]`` booleans, k = min(5, classes): whether a sample's i-th highest logit is its target. Column 0 is
    top-1, ``any(dim=1)`` top-5; a target the logits cannot hold (XLA's IGNORE_TARGET padding) hits nothing."""
    return logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(targets.unsqueeze(1))


@runtime_inference_mode
def evaluate(
        model: torch.nn.Module,
        loader: Iterable[Any],
        runtime: Runtime,
        *,
        amp_dtype: torch.dtype | None = None,
        channels_last: bool = False,
        label_subset: Sequence[int] | torch.Tensor | None = None,
        normalization: tuple[Sequence[float], Sequence[float]] | None = None,
        sample_groups: SampleGroups | None = None,
        log_freq: int = 0,
        description: str = 'eval',
) -> EvalResult:
    """Score ``model`` on every batch of ``loader`` (:class:`robustcnn.data.loader.EvalBatch`).

    - ``label_subset``: logits are restricted to these classifier indices before top-k and loss (ImageNet-R/-A);
      targets must already be positions in that subset.
    - ``normalization``: ``(mean, std)`` applied on the device to uint8 batches; float batches pass unchanged.
    - ``sample_groups``: per-group top-1 counts come back in ``result.groups`` (see :class:`SampleGroups`).
    - Batches may be empty (all files failed); their ``failed_indices`` attribute failures to groups.
    The model is put in eval mode and restored to its previous mode afterwards; the caller sets its memory format.
    """
    device = runtime.device
    was_training = model.training
    model.eval()

    subset = None if label_subset is None else torch.as_tensor(label_subset, dtype=torch.long, device=device)
    mean, std = _device_normalization(normalization, device)
    groups = None if sample_groups is None else _GroupTally(sample_groups, loader, runtime)
    # counts: [top1 correct, top5 correct, scored, failed]; loss kept apart in float64 for exact sums.
    counts = torch.zeros(4, dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    progress = _EvalProgress(description, loader, runtime, log_freq)
    try:
        # XLA pads batches to one shape (padding targets are IGNORE_TARGET) and puts them on the devices
        for step, batch in enumerate(until_interrupted(runtime.eval_batches(loader)), start=1):
            counts[3] += int(batch.num_failed)
            if groups is not None:
                groups.add_failed(batch.failed_indices)
            if batch.images.numel() > 0:
                targets = batch.targets.to(device, non_blocking=True)
                output = _batch_logits(model, batch.images, runtime, mean, std, channels_last, amp_dtype)
                if subset is not None:
                    output = output.index_select(1, subset)
                loss_sum += F.cross_entropy(output, targets, reduction='sum').double()
                hits = top5_hits(output, targets)
                counts[0] += hits[:, 0].sum()
                counts[1] += hits.any(dim=1).sum()
                valid = targets.ne(IGNORE_TARGET)
                counts[2] += valid.sum()
                progress.local_images += targets.shape[0]
                if groups is not None:
                    groups.add(batch.indices, hits[:, 0], valid)
            if groups is not None:
                groups.after_step(step)
            progress.after_step(step, counts)
            kill_point('validation-batch')
    finally:
        model.train(was_training)

    runtime.all_reduce_sum(counts)
    runtime.all_reduce_sum(loss_sum)
    group_result = None if groups is None else groups.finish()
    top1_correct, top5_correct, scored, failed = counts.cpu().tolist()
    if scored == 0:
        top1 = top5 = loss = float('nan')
    else:
        top1, top5, loss = 100.0 * top1_correct / scored, 100.0 * top5_correct / scored, loss_sum.item() / scored
    if failed:
        _logger.warning('%s: %d file(s) could not be decoded and were skipped (named in the warnings above)',
                        description, failed)
    return EvalResult(top1=top1, top5=top5, loss=loss, num_samples=scored, skipped_files=failed,
                      elapsed_seconds=progress.elapsed(), groups=group_result)


@runtime_inference_mode
def predict(
        model: torch.nn.Module,
        loader: Iterable[Any],
        runtime: Runtime,
        num_samples: int,
        *,
        amp_dtype: torch.dtype | None = None,
        channels_last: bool = False,
        normalization: tuple[Sequence[float], Sequence[float]] | None = None,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
        description: str = 'predict',
) -> Predictions:
    """The model's output for every one of the ``num_samples`` dataset indices, gathered over all processes.

    For sets whose metric is not top-k over labels (shape bias, calibration): the caller gets the outputs and
    computes its metric once, on complete data. ``reduce`` runs on the device per batch (float32 logits in, ``[B, K]``
    out), so only what the metric needs leaves the device. Each process writes its shard's rows into a zero
    ``[num_samples, K]`` buffer and the buffers are summed: every row comes from exactly one process (the eval
    sampler does not pad), so the sum is the row itself, bit for bit, in dataset order.
    """
    device = runtime.device
    was_training = model.training
    model.eval()
    mean, std = _device_normalization(normalization, device)
    rows: list[torch.Tensor] = []
    row_indices: list[torch.Tensor] = []
    failed = torch.zeros((), dtype=torch.long, device=device)
    start = time.perf_counter()
    try:
        for batch in until_interrupted(runtime.eval_batches(loader)):
            failed += int(batch.num_failed)
            if batch.images.numel() == 0:
                continue
            output = _batch_logits(model, batch.images, runtime, mean, std, channels_last, amp_dtype)
            if reduce is not None:
                output = reduce(output).float()
            valid = batch.targets.to(device).ne(IGNORE_TARGET)  # XLA pads batches with IGNORE_TARGET rows
            rows.append(output[valid])
            row_indices.append(batch.indices.to(device)[valid])
            kill_point('validation-batch')
    finally:
        model.train(was_training)
    width = rows[0].shape[1] if rows else 0
    width_everywhere = runtime.all_reduce_sum(torch.tensor(width, dtype=torch.long, device=device).view(1))
    # every process that saw images has the same width; one that saw none contributes 0 to the sum of widths
    processes_with_rows = runtime.all_reduce_sum(torch.tensor([int(bool(rows))], dtype=torch.long, device=device))
    width = int(width_everywhere.item()) // max(int(processes_with_rows.item()), 1)
    outputs = torch.zeros(num_samples, width, dtype=torch.float32, device=device)
    scored = torch.zeros(num_samples, dtype=torch.long, device=device)
    if rows:
        indices = torch.cat(row_indices)
        outputs.index_copy_(0, indices, torch.cat(rows))
        scored.index_fill_(0, indices, 1)
    runtime.all_reduce_sum(outputs)
    runtime.all_reduce_sum(scored)
    runtime.all_reduce_sum(failed)
    skipped = int(failed.item())
    if skipped:
        _logger.warning('%s: %d file(s) could not be decoded and were skipped (named in the warnings above)',
                        description, skipped)
    return Predictions(outputs=outputs.cpu(), scored=scored.cpu().bool(), skipped_files=skipped,
                       elapsed_seconds=time.perf_counter() - start)
