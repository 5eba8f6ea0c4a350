"""Samplers for evaluation: every sample is seen by exactly one process, so distributed counts are exact.

torch's ``DistributedSampler`` pads the dataset with repeated samples to make the shards equal, which biases
accuracy by a few duplicated images; an evaluation must count each image once.
"""
from __future__ import annotations

from typing import Iterator, Sized

from torch.utils.data import Sampler

__all__ = ['ShardedEvalSampler', 'shard_indices']


def shard_indices(num_samples: int, num_replicas: int, rank: int) -> range:
    """Indices of one process's shard: ``rank, rank + num_replicas, ...`` (strided, no padding, no duplicates).

    Strided shards keep every process moving through the dataset in the same order at the same pace, which
    matters when the samples are grouped (ImageNet-C folders complete at about the same time on every process).
    """
    if num_replicas < 1:
        raise ValueError(f'num_replicas must be at least 1, got {num_replicas}')
    if not 0 <= rank < num_replicas:
        raise ValueError(f'rank must be in [0, {num_replicas}), got {rank}')
    return range(rank, num_samples, num_replicas)


class ShardedEvalSampler(Sampler[int]):
    """Deterministic, unpadded shard of ``dataset`` for process ``rank`` of ``num_replicas``.

    Shard lengths differ by at most one; together the shards cover every index exactly once.
    """

    def __init__(self, dataset: Sized, num_replicas: int = 1, rank: int = 0) -> None:
        self.dataset = dataset
        self.num_replicas = num_replicas
        self.rank = rank
        self.indices = shard_indices(len(dataset), num_replicas, rank)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def shard_length(self, rank: int) -> int:
        """Length of another process's shard (all processes can agree on loop lengths without talking)."""
        return len(shard_indices(len(self.dataset), self.num_replicas, rank))
