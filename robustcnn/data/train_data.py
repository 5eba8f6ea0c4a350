"""Training data: folders -> augmented, repeated, sharded batches whose content is a pure function of the seed.

Exact resume needs every random choice to be reproducible from ``(seed, epoch, position)`` alone:

* the order of an epoch comes from timm's ``RepeatAugSampler`` (or a ``DistributedSampler``) seeded by
  ``(seed, epoch)``, with explicit ``num_replicas``/``rank`` so repeated augmentation also works on one device;
* every sample's augmentation RNGs (python, numpy, torch) are seeded from ``(seed, epoch, global position)``, so a
  sample looks the same whichever worker decodes it, however many workers there are, and after a mid-epoch resume
  that skips the batches already seen.
"""
from __future__ import annotations

import argparse
import logging
import random
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from PIL import Image
from timm.data import auto_augment as timm_auto_augment
from timm.data import create_transform
from timm.data.distributed_sampler import RepeatAugSampler

from ..cli import UsageError
from ..interrupts import ignore_interrupts
from .folder import ClassFolderDataset, list_class_folders, scan_class_folders
from .loader import collate_eval_batch

__all__ = [
    'check_split_folder', 'resolve_class_names', 'posterize_keeping_zero_bits', 'build_train_transform',
    'SeededSampler', 'SeededDataset', 'build_train_loader', 'sample_seed',
]

_logger = logging.getLogger(__name__)


def check_split_folder(data_dir: str, split: str, flag: str) -> Path:
    """``DATA_DIR/SPLIT`` must exist and hold class folders with images; say exactly what is wrong otherwise."""
    root = Path(data_dir)
    if not root.is_dir():
        raise UsageError(f'data folder not found: {root} (give the dataset root holding {split}/)')
    folder = root / split
    if not folder.is_dir():
        present = ', '.join(sorted(p.name for p in root.iterdir() if p.is_dir())[:6]) or 'no folders'
        raise UsageError(f'{folder} not found ({flag} {split}); {root} holds: {present}')
    classes = list_class_folders(folder)
    if not classes:
        raise UsageError(f'{folder} has no class folders; expected {folder}/<class name>/<image files>')
    return folder


def resolve_class_names(train_folder: Path) -> list[str]:
    """Class names in label order: the sorted training folder names (timm/torchvision convention)."""
    return list_class_folders(train_folder)


def posterize_keeping_zero_bits(image: Image.Image, bits_to_keep: int, **kwargs: Any) -> Image.Image:
    """timm's posterize op, except that keeping 0 bits gives the black image Pillow < 13 gave.

    Why: the paper's ``rand-m9-mstd0.5-inc1`` samples magnitudes up to 10, where timm's PosterizeIncreasing keeps
    0 bits; Pillow 13 raises on 0 bits, which kills a worker about once per 800 images and, since augmentation is
    seeded per sample, again at the same place after a resume. Older Pillow masked every bit off: black.
    """
    if bits_to_keep <= 0:
        return Image.new(image.mode, image.size)
    return timm_auto_augment.posterize(image, bits_to_keep, **kwargs)


def _make_posterize_safe(transform: Any) -> Any:
    """Point every posterize op of timm's RandAugment / AutoAugment / AugMix in ``transform`` at the safe one."""
    for stage in getattr(transform, 'transforms', [transform]):
        ops = list(getattr(stage, 'ops', None) or [])
        for sub_policy in getattr(stage, 'policy', None) or []:
            ops.extend(sub_policy)
        for op in ops:
            if getattr(op, 'aug_fn', None) is timm_auto_augment.posterize:
                op.aug_fn = posterize_keeping_zero_bits
    return transform


def build_train_transform(args: argparse.Namespace, data_config: Mapping[str, Any]) -> Any:
    """timm's ImageNet training pipeline: random-resized crop, flip, RandAugment, normalize, random erasing."""
    return _make_posterize_safe(create_transform(
        input_size=data_config['input_size'],
        is_training=True,
        no_aug=args.no_aug,
        scale=tuple(args.scale),
        ratio=tuple(args.ratio),
        hflip=args.hflip,
        vflip=args.vflip,
        color_jitter=args.color_jitter,
        auto_augment=args.aa,
        interpolation=args.train_interpolation or data_config['interpolation'],
        mean=data_config['mean'],
        std=data_config['std'],
        re_prob=args.reprob,
        re_mode=args.remode,
        re_count=args.recount,
    ))


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A well-mixed 63-bit seed for one sample of one epoch (different for each repeat of the same image)."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(2, dtype=np.uint32).view(np.uint64)[0]
               >> np.uint64(1))


class SeededSampler(Sampler):
    """Yields ``(dataset index, sample seed)`` for one process; the order is a pure function of (seed, epoch).

    ``set_start(num_batches, batch_size)`` skips the samples already consumed in this epoch (mid-epoch resume)
    without changing the order or the seeds of the rest.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, aug_repeats: int = 0) -> None:
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.aug_repeats = aug_repeats
        if aug_repeats > 1:
            self.base: Sampler = RepeatAugSampler(
                dataset, num_replicas=num_replicas, rank=rank, shuffle=True, num_repeats=aug_repeats)
        else:
            self.base = DistributedSampler(
                dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=0, drop_last=False)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.start = 0
        # Both base samplers shuffle with a generator seeded from the epoch number alone (DistributedSampler adds
        # its own seed, left at 0); fold the run seed in so that --seed changes the order.
        self.base.set_epoch(self.seed * 1_000_003 + epoch)

    def set_start(self, num_batches: int, batch_size: int) -> None:
        self.start = num_batches * batch_size

    def full_length(self) -> int:
        return len(self.base)

    def __len__(self) -> int:
        return max(0, len(self.base) - self.start)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for local_position, index in enumerate(self.base):
            if local_position < self.start:
                continue
            global_position = local_position * self.num_replicas + self.rank
            yield index, sample_seed(self.seed, self.epoch, global_position)


class SeededDataset(Dataset):
    """Seeds python, numpy and torch RNGs per sample before the augmentation runs.

    In the main process (``--workers 0``) the global RNG states are put back afterwards, so the training loop's
    own randomness (mixup, drop path) does not depend on how many workers decoded the data.
    """

    def __init__(self, dataset: ClassFolderDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        in_main_process = torch.utils.data.get_worker_info() is None
        if in_main_process:
            saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        random.seed(seed)
        np.random.seed(seed % (2 ** 32))
        torch.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            if in_main_process:
                random.setstate(saved[0])
                np.random.set_state(saved[1])
                torch.set_rng_state(saved[2])


def build_train_loader(
        args: argparse.Namespace,
        train_folder: Path,
        class_to_index: Mapping[str, int],
        transform: Any,
        num_replicas: int,
        rank: int,
        pin_memory: bool = False,
        batch_size: int | None = None,
        workers: int | None = None,
) -> DataLoader:
    """Loader of full batches (``drop_last``) for one process; call ``loader.sampler.set_epoch`` every epoch.

    ``batch_size`` is the batch this process loads (default ``--batch-size``); an XLA host feeding several chips
    loads ``--batch-size`` images for each of them (and runs ``--workers`` loader processes for each: ``workers``).
    """
    batch_size = batch_size or args.batch_size
    workers = args.workers if workers is None else workers
    dataset = ClassFolderDataset(scan_class_folders(train_folder, class_to_index), transform, on_decode_error='replace')
    if len(dataset) == 0:
        raise UsageError(f'{train_folder} holds no image files in its class folders')
    sampler = SeededSampler(dataset, num_replicas, rank, seed=args.seed, aug_repeats=args.aug_repeats)
    if len(sampler) < batch_size:
        raise UsageError(
            f'{train_folder} gives each of the {num_replicas} process(es) {len(sampler)} samples per epoch, fewer '
            f'than one batch of {batch_size} (--batch-size {args.batch_size} per device); use a smaller batch size')
    return DataLoader(
        SeededDataset(dataset),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_eval_batch,
        pin_memory=pin_memory,
        drop_last=True,
        persistent_workers=workers > 0,
        worker_init_fn=ignore_interrupts,  # Ctrl-C reaches the main process only (see robustcnn.interrupts)
        # The sampler supplies every seed; a fixed generator keeps DataLoader from drawing on the global RNG.
        generator=torch.Generator().manual_seed(args.seed),
    )
