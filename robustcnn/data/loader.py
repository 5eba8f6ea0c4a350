"""The one batch type and collate of every loader, and the evaluation DataLoader (training's validation, validate.py).

Evaluation shards are not padded (each image counted once over all processes) and a batch names the dataset
indices of the files that failed to decode, so a set scored per sample group (ImageNet-C's folders) knows which
group lost them. Training batches use the same type and collate (their ``failed_indices`` stay empty: training
replaces an unreadable file by the next readable one).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, NamedTuple, Sequence

import torch
from torch.utils.data import DataLoader

from ..cli import UsageError
from ..engine.runtime import usable_cpu_count
from ..interrupts import ignore_interrupts
from .folder import ClassFolderDataset
from .samplers import ShardedEvalSampler

__all__ = ['EvalBatch', 'stack_images', 'collate_eval_batch', 'build_eval_loader', 'available_cores', 'default_workers']

_logger = logging.getLogger(__name__)


class EvalBatch(NamedTuple):
    """A collated batch: decoded images, their labels and dataset indices, how many files failed to decode (a
    training sample replaced after two failures counts two) and the dataset indices of the skipped ones."""

    images: torch.Tensor
    targets: torch.Tensor
    indices: torch.Tensor
    num_failed: int
    failed_indices: torch.Tensor


def stack_images(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack same-size CHW images (sizes that differ are a UsageError saying what to do).

    Images that are views of HWC pixels (PIL decodes) are stacked as HWC and come out as one channels-last batch.
    Why: torch.stack of permuted uint8 views is a slow strided copy (measured 0.43 s for 32 images of 224x224,
    more than the model's forward), the HWC stack is one plain memcpy per image.
    """
    try:
        if all(image.dim() == 3 and image.permute(1, 2, 0).is_contiguous() and not image.is_contiguous()
               for image in images):
            return torch.stack([image.permute(1, 2, 0) for image in images]).permute(0, 3, 1, 2)
        return torch.stack(list(images))
    except RuntimeError as error:
        shapes = sorted({tuple(image.shape) for image in images})
        raise UsageError(
            f'images of different sizes {shapes[:3]} in one batch; with --resize_mode none every image must '
            f'already have the same size (use resize or resize_center_crop)'
        ) from error


def collate_eval_batch(batch: Sequence[tuple[Any, int, int, int]]) -> EvalBatch:
    """Stack the decoded samples of ``ClassFolderDataset`` items, dropping skipped ones and counting every failure."""
    kept = [sample for sample in batch if sample[0] is not None]
    failed = torch.tensor([sample[2] for sample in batch if sample[0] is None], dtype=torch.long)
    num_failed = sum(sample[3] for sample in batch)
    if not kept:
        return EvalBatch(torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.long),
                         torch.empty(0, dtype=torch.long), num_failed, failed)
    images = stack_images([torch.as_tensor(sample[0]) for sample in kept])
    targets = torch.tensor([sample[1] for sample in kept], dtype=torch.long)
    indices = torch.tensor([sample[2] for sample in kept], dtype=torch.long)
    return EvalBatch(images, targets, indices, num_failed, failed)


def available_cores() -> int:
    return usable_cpu_count()


def default_workers() -> int:
    return min(8, available_cores())


def build_eval_loader(
        dataset: ClassFolderDataset,
        batch_size: int,
        workers: int,
        runtime: Any,
        pin_memory: bool = False,
        collate_fn: Callable[[Sequence[Any]], Any] = collate_eval_batch,
) -> DataLoader:
    """Loader over this process's shard; workers decode and resize, the device normalizes.

    The workers ignore Ctrl-C (the main process ends them, see :mod:`robustcnn.interrupts`).
    """
    sampler = ShardedEvalSampler(dataset, num_replicas=runtime.world_size, rank=runtime.rank)
    if workers > available_cores():
        # More decoding processes than cores only adds switching; the release's "--workers 8" meets small machines.
        _logger.info('using %d loader workers (--workers %d, %d cores available)', available_cores(), workers,
                     available_cores())
        workers = available_cores()
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate_fn,
        pin_memory=pin_memory and runtime.kind == 'cuda', drop_last=False,
        persistent_workers=False, prefetch_factor=4 if workers > 0 else None, worker_init_fn=ignore_interrupts,
    )
