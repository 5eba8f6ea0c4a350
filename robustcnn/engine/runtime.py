"""The one place that knows about devices and processes (cpu / cuda / xla, single or distributed).

Loops call ``runtime.device``, ``runtime.autocast()``, ``runtime.all_reduce_sum()`` and ``runtime.is_main``; they
never branch on the device kind themselves.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

__all__ = ['Runtime', 'init_runtime', 'resolve_device_kind', 'AMP_DTYPES']

AMP_DTYPES = {'bfloat16': torch.bfloat16, 'float16': torch.float16}


def resolve_device_kind(device: str) -> str:
    """Turn ``auto|cpu|cuda|xla`` into the kind to use, with a clear error when it is not available."""
    if device == 'auto':
        if os.environ.get('PJRT_DEVICE'):
            return 'xla'
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if device == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError('--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto')
    if device not in ('cpu', 'cuda', 'xla'):
        raise ValueError(f'unknown --device {device!r}; expected auto, cpu, cuda or xla')
    return device


@dataclass
class Runtime:
    """Where tensors live and how processes talk to each other."""

    kind: str
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all processes (in place) and return it."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def autocast(self, amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
        """Autocast on this device, or a no-op when ``amp_dtype`` is None."""
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.kind, dtype=amp_dtype)

    def synchronize(self) -> None:
        """Wait for queued device work (for honest timings)."""
        if self.kind == 'cuda':
            torch.cuda.synchronize(self.device)

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    @contextlib.contextmanager
    def session(self) -> Iterator['Runtime']:
        try:
            yield self
        finally:
            self.close()


def init_runtime(device: str = 'auto', timeout_minutes: float = 30.0) -> Runtime:
    """Create the runtime; joins the process group when launched by torchrun (``WORLD_SIZE`` > 1).

    ``timeout_minutes`` bounds how long a collective waits for a rank that died, so a broken run stops with an
    error instead of hanging forever.
    """
    kind = resolve_device_kind(device)
    if kind == 'xla':
        raise RuntimeError('--device xla needs torch_xla; see TRAIN.md (TPU section)')
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    if kind == 'cuda':
        torch.cuda.set_device(local_rank)
        torch_device = torch.device('cuda', local_rank)
    else:
        torch_device = torch.device('cpu')
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend='nccl' if kind == 'cuda' else 'gloo',
            timeout=datetime.timedelta(minutes=timeout_minutes),
            device_id=torch_device if kind == 'cuda' else None,
        )
    return Runtime(kind=kind, device=torch_device, rank=rank, world_size=world_size, local_rank=local_rank)
