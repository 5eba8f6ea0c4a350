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
from .runtime import IGNORE_TARGET, runtime_inference_mode

__all__ = ['EvalResult', 'GroupCounts', 'evaluate', 'normalize_on_device', 'format_duration']

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


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return '?'
    seconds = int(round(seconds))
    return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def normalize_on_device(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 images (0..255) -> float, normalized. Workers ship uint8 (4x less to copy); the device does the math."""
    images = images.float()
    return images.div_(255.0).sub_(mean).div_(std)


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


@runtime_inference_mode
def evaluate(
        model: torch.nn.Module,
        loader: Iterable[Any],
        runtime: Any,
        *,
        amp_dtype: torch.dtype | None = None,
        channels_last: bool = False,
        label_subset: Sequence[int] | torch.Tensor | None = None,
        normalization: tuple[Sequence[float], Sequence[float]] | None = None,
        sample_groups: Sequence[int] | torch.Tensor | None = None,
        num_groups: int = 0,
        on_groups_update: Callable[[GroupCounts], None] | None = None,
        group_sync_every: int = 0,
        log_freq: int = 0,
        description: str = 'eval',
) -> EvalResult:
    """Score ``model`` on every batch of ``loader`` (FolderBatch: images, targets, indices, num_failed).

    - ``label_subset``: logits are restricted to these classifier indices before top-k and loss (ImageNet-R/-A);
      targets must already be positions in that subset.
    - ``normalization``: ``(mean, std)`` applied on the device to uint8 batches; float batches pass unchanged.
    - ``sample_groups``: a group id per dataset index; per-group top-1 counts come back in ``result.groups``.
      ``on_groups_update`` is called on every process with the summed counts every ``group_sync_every`` batches
      (and at the end), so callers can save finished groups as they complete.
    - Batches may be empty (all files failed); a batch may carry ``failed_indices`` to attribute failures to groups.
    The model is put in eval mode and restored to its previous mode afterwards; the caller sets its memory format.
    """
    device = runtime.device
    was_training = model.training
    model.eval()

    subset = None
    if label_subset is not None:
        subset = torch.as_tensor(label_subset, dtype=torch.long, device=device)
    mean = std = None
    if normalization is not None:
        mean = torch.tensor(normalization[0], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std = torch.tensor(normalization[1], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    groups = None
    if sample_groups is not None:
        groups = torch.as_tensor(sample_groups, dtype=torch.long, device=device)
        num_groups = num_groups or (int(groups.max().item()) + 1 if groups.numel() else 0)
    # counts: [top1 correct, top5 correct, scored, failed]; loss kept apart in float64 for exact sums.
    counts = torch.zeros(4, dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    group_counts = torch.zeros(3, max(num_groups, 1), dtype=torch.long, device=device)  # correct, scored, skipped

    world_size = getattr(runtime, 'world_size', 1)
    sync_limit = _steps_every_process_takes(loader, world_size) if group_sync_every > 0 else None
    try:
        total_steps = len(loader)  # type: ignore[arg-type]
    except TypeError:
        total_steps = 0
    is_main = getattr(runtime, 'is_main', True)

    def summed_groups() -> GroupCounts:
        reduced = runtime.all_reduce_sum(group_counts.clone()).cpu()
        return GroupCounts(correct=reduced[0, :num_groups].tolist(), scored=reduced[1, :num_groups].tolist(),
                           skipped=reduced[2, :num_groups].tolist())

    start = time.perf_counter()
    local_images = 0
    step = 0
    try:
        # XLA pads batches to one shape (padding targets are IGNORE_TARGET) and puts them on the devices
        batches = runtime.eval_batches(loader) if hasattr(runtime, 'eval_batches') else loader
        for step, batch in enumerate(batches, start=1):
            images, targets, indices, num_failed = batch[0], batch[1], batch[2], int(batch[3])
            counts[3] += num_failed
            failed_indices = getattr(batch, 'failed_indices', None)
            if groups is not None and failed_indices is not None and len(failed_indices):
                failed_groups = groups[torch.as_tensor(failed_indices, dtype=torch.long, device=device)]
                group_counts[2].index_add_(0, failed_groups, torch.ones_like(failed_groups))
            if images.numel() > 0:
                images = images.to(device, non_blocking=True)
                targets = targets.to(device, non_blocking=True)
                if mean is not None and not images.is_floating_point():
                    images = normalize_on_device(images, mean, std)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with runtime.autocast(amp_dtype):
                    output = _forward(model, images)
                output = output.float()
                if subset is not None:
                    output = output.index_select(1, subset)
                loss_sum += F.cross_entropy(output, targets, reduction='sum').double()
                top_k = output.topk(min(5, output.shape[1]), dim=1).indices
                hits = top_k.eq(targets.unsqueeze(1))
                top1_hits = hits[:, 0]
                counts[0] += top1_hits.sum()
                counts[1] += hits.any(dim=1).sum()
                valid = targets.ne(IGNORE_TARGET)
                counts[2] += valid.sum()
                local_images += targets.shape[0]
                if groups is not None:
                    batch_groups = groups[indices.to(device, non_blocking=True)]
                    group_counts[0].index_add_(0, batch_groups, top1_hits.long())
                    group_counts[1].index_add_(0, batch_groups, valid.long())
            if (on_groups_update is not None and sync_limit is not None and step <= sync_limit
                    and step % group_sync_every == 0):
                on_groups_update(summed_groups())
            if log_freq and is_main and (step % log_freq == 0 or step in (1, total_steps)):  # 1: early sign of life
                elapsed = time.perf_counter() - start
                rate = local_images * world_size / max(elapsed, 1e-9)
                eta = elapsed / step * (total_steps - step) if total_steps else float('nan')
                progress = f'{step}/{total_steps}' if total_steps else f'{step}'
                _logger.info('%s [%s] %.1f images/s, elapsed %s, ETA %s, top1 %.2f (this process)',
                             description, progress, rate, format_duration(elapsed), format_duration(eta),
                             100.0 * counts[0].item() / max(counts[2].item(), 1))
            kill_point('validation-batch')
    finally:
        model.train(was_training)

    runtime.all_reduce_sum(counts)
    runtime.all_reduce_sum(loss_sum)
    group_result = None
    if groups is not None:
        group_result = summed_groups()
        if on_groups_update is not None:
            on_groups_update(group_result)
    elapsed = time.perf_counter() - start
    top1_correct, top5_correct, scored, failed = counts.cpu().tolist()
    if scored == 0:
        top1 = top5 = loss = float('nan')
    else:
        top1, top5, loss = 100.0 * top1_correct / scored, 100.0 * top5_correct / scored, loss_sum.item() / scored
    if failed:
        _logger.warning('%s: %d file(s) could not be decoded and were skipped (named in the warnings above)',
                        description, failed)
    return EvalResult(top1=top1, top5=top5, loss=loss, num_samples=scored, skipped_files=failed,
                      elapsed_seconds=elapsed, groups=group_result)
