"""The one place that knows about devices and processes (cpu / cuda / xla, single or distributed).

Loops call ``runtime.device``, ``runtime.prepare_batch()``, ``runtime.autocast()``, ``runtime.step_done()``,
``runtime.all_reduce_sum()`` and ``runtime.is_main``; they never branch on the device kind themselves.

XLA (TPU VMs and pods) runs in SPMD mode, the data-parallel path torch_xla recommends: each *host* is one process
that traces one program for the global batch, and the compiler splits that batch over every chip (a 1-D device
mesh, batch dimension sharded). So on XLA ``rank``/``world_size`` count hosts (the processes that read different
data), ``devices_per_process`` counts the chips each host feeds, and values computed on the device from the
sharded batch (loss sums, correct counts) are already totals over the whole job.
"""
from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.distributed as dist

from ..cli import UsageError

__all__ = ['Runtime', 'DeviceSettings', 'init_runtime', 'resolve_device_kind', 'AMP_DTYPES', 'IGNORE_TARGET',
           'DeviceGroupBatchNorm2d', 'xla_compile_count', 'runtime_inference_mode', 'usable_cpu_count', 'cgroup_cpu_limit', 'local_world_size',
           'runnable_elsewhere', 'cpu_threads']

_logger = logging.getLogger(__name__)

AMP_DTYPES = {'bfloat16': torch.bfloat16, 'float16': torch.float16}

# Target of the padding samples that keep XLA evaluation batches one static shape: cross entropy ignores it
# (PyTorch's default ignore_index) and it never equals a top-k class, so padding is never counted.
IGNORE_TARGET = -100

XLA_INSTALL_HINT = "pip install torch==2.9.0 torchvision==0.24.0 'torch_xla[tpu]==2.9.0'"


def cgroup_cpu_limit(cgroup_root: Path = Path('/sys/fs/cgroup'),
                     membership: Path = Path('/proc/self/cgroup')) -> float | None:
    """The CPU time this process's control groups allow, in cores (``quota / period``), or None when unlimited.

    Containers and batch schedulers cap CPU time with a cgroup quota while ``sched_getaffinity`` still lists every
    core of the host, so a process that sizes its threads by the affinity alone runs more threads than it gets time
    for, and OpenMP threads that wait for each other at every parallel region then stall whenever one is throttled.
    Reads cgroup v2 (``cpu.max``) and v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), along the process's own
    cgroup path up to the root (a parent's limit binds its children); the tightest limit wins.
    """
    limits: list[float] = []
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        lines = []
    paths_v2: list[str] = []
    paths_v1: list[tuple[str, str]] = []
    for line in lines:
        parts = line.split(':', 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == '':
            paths_v2.append(path)
        elif 'cpu' in controllers.split(','):
            paths_v1.append((controllers, path))
    for path in paths_v2 or ['/']:
        for folder in _cgroup_folders(cgroup_root, path):
            limits += _read_quota((folder / 'cpu.max',), split=True)
    for controllers, path in paths_v1 or [('cpu', '/')]:
        for mount in dict.fromkeys((controllers, 'cpu', 'cpu,cpuacct')):
            for folder in _cgroup_folders(cgroup_root / mount, path):
                limits += _read_quota((folder / 'cpu.cfs_quota_us', folder / 'cpu.cfs_period_us'), split=False)
    return min(limits) if limits else None


def _cgroup_folders(root: Path, path: str) -> list[Path]:
    """``root/a/b``, ``root/a``, ``root`` for the cgroup path ``/a/b`` (those that exist). Inside a container the
    path printed in /proc/self/cgroup is often the host's and the container's own cgroup is mounted at the root."""
    parts = [part for part in path.split('/') if part and part != '..']
    folders = [root.joinpath(*parts[:length]) for length in range(len(parts), -1, -1)]
    return [folder for folder in folders if folder.is_dir()]


def _read_quota(files: tuple[Path, ...], split: bool) -> list[float]:
    try:
        texts = [file.read_text().split() for file in files]
    except OSError:
        return []
    try:
        quota, period = (texts[0][0], texts[0][1]) if split else (texts[0][0], texts[1][0])
        if quota == 'max' or int(quota) <= 0 or int(period) <= 0:  # v2 "max", v1 -1: no limit
            return []
        return [int(quota) / int(period)]
    except (IndexError, ValueError):
        return []


def usable_cpu_count() -> int:
    """Cores this process may use: its CPU affinity, lowered to its cgroup CPU quota (rounded up, as Go's and
    Java's runtimes do). Every default that sizes threads or worker processes starts from this one number."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    return max(1, cores)


def cpu_threads(adapt_to_load: bool = False) -> tuple[int, str]:
    """Torch threads for a CPU process, and why: its share of the usable cores (all of them, or an equal part for
    each torchrun process on this machine); with ``adapt_to_load``, no more than the cores other processes leave
    idle right now (at least one).

    OpenMP threads wait for each other at every parallel region, so when another process holds a core, one
    descheduled thread stalls the rest: on the project's 2-core VM under load (load average 16), a training step
    of the nano model at batch 64 took 1.2-2.3 s with 1 thread and 5.9-7.5 s with 2.
    """
    share = max(1, usable_cpu_count() // local_world_size())
    reason = f'{usable_cpu_count()} usable cores, {local_world_size()} process(es) on this machine'
    if not adapt_to_load:
        return share, reason
    others = runnable_elsewhere()
    if others is None:
        return share, reason
    idle = (os.cpu_count() or share) - others
    return max(1, min(share, idle)), f'{reason}, {others} other runnable thread(s) on {os.cpu_count()} cores'


def runnable_elsewhere(samples: int = 5, interval: float = 0.05, stat: Path = Path('/proc/stat')) -> int | None:
    """Threads of other processes that want a core right now (``procs_running`` of /proc/stat, less this one), as
    the median of a few samples; None where the kernel does not say (not Linux).

    An instantaneous count, not the load average: the load average lags a minute behind and counts this process's
    own work of a moment ago (the demo's generation before its training).
    """
    counts = []
    for index in range(samples):
        try:
            text = stat.read_text()
        except OSError:
            return None
        match = next((line for line in text.splitlines() if line.startswith('procs_running ')), None)
        if match is None:
            return None
        counts.append(max(0, int(match.split()[1]) - 1))  # this thread, reading the file, is running
        if index + 1 < samples:
            time.sleep(interval)
    return sorted(counts)[len(counts) // 2]


def local_world_size() -> int:
    """Processes on this machine (torchrun's ``LOCAL_WORLD_SIZE``; 1 when not launched by torchrun)."""
    try:
        return max(1, int(os.environ.get('LOCAL_WORLD_SIZE', '1')))
    except ValueError:
        return 1


def resolve_device_kind(device: str) -> str:
    """Turn ``auto|cpu|cuda|xla`` into the kind to use, with a clear error when it is not available."""
    if device == 'auto':
        if os.environ.get('PJRT_DEVICE'):
            return 'xla'
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if device == 'cuda' and not torch.cuda.is_available():
        raise UsageError('--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto')
    if device not in ('cpu', 'cuda', 'xla'):
        raise UsageError(f'unknown --device {device!r}; expected auto, cpu, cuda or xla')
    return device


class DeviceGroupBatchNorm2d(torch.nn.BatchNorm2d):
    """BatchNorm whose training statistics come from each device's slice of the batch, as on separate GPUs.

    Under SPMD the program sees the global batch, so a plain BatchNorm would normalize over all chips at once
    (what ``--sync-bn`` does on GPUs). The release trained on a TPU v3-8 with one process per chip, each normalizing
    its own 128 images; this layer keeps that: the batch is viewed as ``num_groups`` consecutive slices (the same
    slices the mesh puts on each device, so no communication is needed) and each is normalized by its own
    statistics. The running statistics move towards the mean of the slices' statistics. Parameters, buffers and
    evaluation are exactly ``BatchNorm2d``'s, so checkpoints are the same as on any other device.
    """

    num_groups: int = 1

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        groups = self.num_groups
        if not self.training or groups <= 1 or input.dim() != 4 or input.shape[0] % groups:
            return super().forward(input)
        batch, channels, height, width = input.shape
        grouped = input.float().reshape(groups, batch // groups, channels, height, width)
        mean = grouped.mean(dim=(1, 3, 4), keepdim=True)
        variance = grouped.var(dim=(1, 3, 4), unbiased=False, keepdim=True)
        output = ((grouped - mean) * torch.rsqrt(variance + self.eps)).reshape(batch, channels, height, width)
        if self.affine:
            output = output * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                count = batch // groups * height * width
                momentum = 0.1 if self.momentum is None else self.momentum
                unbiased = variance * (count / max(count - 1, 1))
                self.running_mean.mul_(1 - momentum).add_(mean.mean(dim=0).flatten(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.mean(dim=0).flatten(), alpha=momentum)
                self.num_batches_tracked.add_(1)
        return output.to(input.dtype)


def group_batchnorm_by_device(model: torch.nn.Module, num_groups: int) -> torch.nn.Module:
    """Turn every ``BatchNorm2d`` of ``model`` into a :class:`DeviceGroupBatchNorm2d` (in place, same tensors)."""
    for module in model.modules():
        if type(module) is torch.nn.BatchNorm2d:
            module.__class__ = DeviceGroupBatchNorm2d
            module.num_groups = num_groups
    return model


def runtime_inference_mode(function: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for ``f(model, loader, runtime, ...)``: run it under ``runtime.inference_mode()``."""
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        runtime = kwargs.get('runtime', args[2] if len(args) > 2 else None)
        context = runtime.inference_mode() if hasattr(runtime, 'inference_mode') else torch.inference_mode()
        with context:
            return function(*args, **kwargs)
    return wrapper


def xla_compile_count() -> int:
    """How many XLA graphs this process has compiled so far (0 without torch_xla): the recompilation check."""
    try:
        import torch_xla.debug.metrics as metrics
    except ImportError:
        return 0
    data = metrics.metric_data('CompileTime')
    return int(data[0]) if data else 0


@dataclass(frozen=True)
class DeviceSettings:
    """What :meth:`Runtime.device_settings` resolved: autocast dtype name (None: float32), channels-last, and the
    batch one process loads. Results files and resume identities record these resolved values."""

    amp_dtype: str | None
    channels_last: bool
    batch_size: int

    @property
    def torch_amp_dtype(self) -> torch.dtype | None:
        return AMP_DTYPES[self.amp_dtype] if self.amp_dtype else None


@dataclass
class Runtime:
    """Where tensors live and how processes talk to each other.

    ``rank``/``world_size`` are the processes that read different shards of the data (GPU processes; XLA hosts).
    ``devices_per_process`` is how many devices each process feeds (1, or the chips of an XLA host), so the loader
    batch of a process is ``per-device batch x devices_per_process`` and the job's data-parallel width is
    ``data_parallel_size``.
    """

    kind: str
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    devices_per_process: int = 1
    spmd: bool = False
    mesh: Any = field(default=None, repr=False)
    _sharding_specs: dict[int, Any] = field(default_factory=dict, repr=False)

    @property
    def distributed(self) -> bool:
        """Whether a torch.distributed process group connects the processes (never under SPMD: one program)."""
        return self.world_size > 1 and not self.spmd

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def data_parallel_size(self) -> int:
        """Devices that each take a slice of the batch: the ``devices`` of ``total batch = batch x devices``."""
        return self.world_size * self.devices_per_process

    def describe(self) -> str:
        if self.spmd:
            return (f'{self.data_parallel_size} {self.kind} devices (SPMD, {self.world_size} host(s) x '
                    f'{self.devices_per_process})')
        return f'{self.world_size} processes on {self.kind}' if self.distributed else f'one process on {self.kind}'

    @property
    def cores_per_process(self) -> int:
        """This process's share of the usable cores: all of them, or an equal part for each torchrun process."""
        return cpu_threads()[0]

    def configure_threads(self, threads: int | None = None, log_level: int = logging.INFO) -> int:
        """Set torch's intra-op threads: ``threads`` when given (``--threads``), else on a CPU run the process's
        share of the usable cores (:func:`cpu_threads`). Returns the number in use; the choice is logged at
        ``log_level`` (validate.py: DEBUG, so that its data checks' errors stay one line).

        torch's own default is the host's physical cores, whatever the affinity, the cgroup quota or the processes
        beside it. ``OMP_NUM_THREADS`` set by the user is kept outside torchrun (torchrun itself sets it to 1 for
        several processes, which leaves cores idle). GPU and XLA runs keep torch's threads unless ``threads`` is
        given. The default does not look at the load, so a run's thread count (and its floating-point summation
        order) is the same every time on the same machine; the demo, whose job is to be quick, asks
        :func:`cpu_threads` to adapt and passes the result as ``threads``.
        """
        reason = f'--threads {threads}'
        if threads is None:
            if self.kind != 'cpu':
                return torch.get_num_threads()
            from_env = os.environ.get('OMP_NUM_THREADS', '')
            if from_env.isdigit() and int(from_env) > 0 and 'LOCAL_WORLD_SIZE' not in os.environ:
                threads, reason = int(from_env), f'OMP_NUM_THREADS={from_env}'
            else:
                threads, reason = cpu_threads()
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        _logger.log(log_level, 'using %d torch thread(s) (%s)', threads, reason)
        return threads

    def loader_workers(self, requested: int) -> int:
        """Loader processes per process: on a CPU at most this process's cores, since the workers take cores from
        the model's threads (the GPU recipes' ``--workers 6`` would run 8 busy processes on a 2-core laptop)."""
        if self.kind != 'cpu' or requested <= self.cores_per_process:
            return requested
        _logger.info('using %d loader worker(s) instead of %d: %d core(s) for this process', self.cores_per_process,
                     requested, self.cores_per_process)
        return self.cores_per_process

    def process_batch_size(self, per_device: int) -> int:
        """The batch one process loads for ``per_device`` images per device."""
        return per_device * self.devices_per_process

    def global_count(self, count: int) -> int:
        """A number of samples the loop saw on its device tensors, as a count over the whole job.

        Processes with their own batches multiply by their number; under SPMD the loop already sees the global
        batch.
        """
        return count if self.spmd else count * self.world_size

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()
        elif self.spmd:
            self.step_done()
            if self.world_size > 1:
                import torch_xla.core.xla_model as xm
                xm.rendezvous('robustcnn-barrier')

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all processes (in place) and return it.

        Under SPMD a device tensor computed from the sharded batch already holds the job's total, so it is returned
        as it is.
        """
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def check_amp_dtype(self, amp_dtype: torch.dtype | None) -> None:
        """XLA has no float16 gradient scaler; TPUs compute in bfloat16 natively. On a CPU autocast works but is
        slow (CPUs without native bfloat16 emulate it), so asking for it gets a one-line warning."""
        if self.kind == 'xla' and amp_dtype == torch.float16:
            raise UsageError('--amp-dtype float16 is not supported on XLA devices; use --amp-dtype bfloat16')
        if self.kind == 'cpu' and amp_dtype is not None and self.is_main:
            _logger.warning('--amp on a CPU: %s autocast is usually several times slower than float32 here; '
                            '--no-amp runs in float32', str(amp_dtype).replace('torch.', ''))

    def device_settings(self, *, amp: bool | None, amp_dtype: str, channels_last: bool | None,
                        batch_size: int) -> 'DeviceSettings':
        """train.py's and validate.py's speed switches as this device runs them: the one place their defaults live.

        ``amp`` / ``channels_last`` left unset (None) are on for CUDA (bf16 autocast and channels-last are its fast
        path) and off elsewhere; ``batch_size`` is per device, so an XLA host loads one batch for all its chips.
        On CUDA, ``cudnn.benchmark`` is switched on as the speed tool does and timm's train.py / validate.py do:
        the batches of training (random-resized crops) and of evaluation (one input size per set) have fixed
        shapes, so cuDNN's search for the fastest convolution kernels runs once per shape (the last, shorter batch
        of a set adds one; ``--resize-mode none`` on images of mixed sizes one per size) and every later batch
        uses its pick.
        """
        use_amp = (self.kind == 'cuda') if amp is None else amp
        settings = DeviceSettings(
            amp_dtype=amp_dtype if use_amp else None,
            channels_last=(self.kind == 'cuda') if channels_last is None else channels_last,
            batch_size=self.process_batch_size(batch_size))
        self.check_amp_dtype(settings.torch_amp_dtype)
        if self.kind == 'cuda':
            torch.backends.cudnn.benchmark = True
        return settings

    def inference_mode(self) -> contextlib.AbstractContextManager:
        """No autograd for evaluation: ``torch.inference_mode`` where the device supports it (XLA tensors cannot be
        inference tensors, so there it is ``torch.no_grad``)."""
        return torch.no_grad() if self.kind == 'xla' else torch.inference_mode()

    def autocast(self, amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
        """Autocast on this device, or a no-op when ``amp_dtype`` is None."""
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.kind, dtype=amp_dtype)

    def configure_batchnorm(self, model: torch.nn.Module, sync_bn: bool) -> torch.nn.Module:
        """Apply ``--sync-bn`` (statistics over the global batch) or keep per-device statistics (the default).

        GPUs: SyncBatchNorm when asked for. XLA/SPMD: the compiled program sees the global batch, so per-device
        statistics need :class:`DeviceGroupBatchNorm2d` and ``--sync-bn`` is plain BatchNorm.
        """
        if self.spmd:
            if not sync_bn and self.data_parallel_size > 1:
                return group_batchnorm_by_device(model, self.data_parallel_size)
            return model
        if sync_bn and self.distributed:
            if self.kind != 'cuda':
                raise UsageError(f'--sync-bn needs CUDA GPUs (PyTorch has no SyncBatchNorm on {self.kind})')
            return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if sync_bn:
            _logger.info('--sync-bn has no effect in a single process')
        return model

    def seed_device(self, seed: int) -> None:
        """Seed the device's own generator (drop path, dropout): torch.manual_seed covers CPU and CUDA only."""
        if self.kind == 'xla':
            import torch_xla.core.xla_model as xm
            xm.set_rng_state(seed % (2 ** 63), str(self.device))

    def _xla_put(self, tensor: torch.Tensor) -> torch.Tensor:
        """Copy a host batch tensor to the XLA devices, split on its first dimension over the mesh.

        Each host gives its own slice (``minibatch``): the global tensor is the hosts' slices one after another.
        """
        import torch_xla.core.xla_model as xm
        import torch_xla.distributed.spmd as xs
        if tensor.dim() == 0:
            return tensor.to(self.device)
        spec = self._sharding_specs.get(tensor.dim())
        if spec is None:
            spec = xs.ShardingSpec(self.mesh, ('data',) + (None,) * (tensor.dim() - 1), minibatch=True)
            self._sharding_specs[tensor.dim()] = spec
        return xm.send_cpu_data_to_device([tensor], self.device, spec)[0]

    def prepare_batch(self, images: torch.Tensor, targets: torch.Tensor,
                      transform: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None
                      = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Move a loader batch to the device (sharded over the mesh on XLA) and apply ``transform`` (mixup).

        On GPUs mixup runs on the device after the copy. On XLA it runs on the host first: CutMix pastes a box of
        random size, and a new shape on the device would be a new compiled graph at every step.
        """
        if self.spmd:
            if transform is not None:
                images, targets = transform(images, targets)
            return self._xla_put(images), self._xla_put(targets)
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        if transform is not None:
            images, targets = transform(images, targets)
        return images, targets

    def step_done(self) -> None:
        """End of one step's work: XLA compiles (once) and runs the traced graph here; elsewhere nothing happens.

        Cutting every step at the same place keeps one graph per kind of step, and later ``.item()`` calls only
        read finished values instead of compiling partial graphs.
        """
        if self.kind == 'xla':
            import torch_xla
            torch_xla.sync()

    def eval_batches(self, loader: Iterable[Any]) -> Iterable[Any]:
        """The evaluation loader as the device needs it.

        XLA compiles a graph per input shape, so every batch is padded to the loader's batch size (padding targets
        are :data:`IGNORE_TARGET`, never counted) and moved to the devices here; with several hosts, a host whose
        unpadded shard is shorter adds all-padding batches so every host runs the same number of steps (SPMD
        programs run in lockstep). Other devices get the loader unchanged.
        """
        if not self.spmd:
            return loader
        return self._padded_eval_batches(loader)

    def _padded_eval_batches(self, loader: Iterable[Any]) -> Iterator[Any]:
        loader_batch = getattr(loader, 'batch_size', None)
        sampler = getattr(loader, 'sampler', None)
        steps_needed = 0
        if loader_batch and sampler is not None and hasattr(sampler, 'shard_length'):
            steps_needed = max(math.ceil(sampler.shard_length(rank) / loader_batch) for rank in range(self.world_size))
        template: torch.Tensor | None = None
        size = 0
        steps = 0
        self.step_done()  # the caller's fresh accumulators become device data: the first step compiles like the rest
        for batch in loader:
            images, targets, indices = batch[0], batch[1], batch[2]
            if images.numel() > 0:
                template = images[:1]
            steps += 1
            if template is None:
                yield batch  # nothing decoded yet: nothing to run and no shape to pad to
                continue
            size = size or _round_up(loader_batch or targets.shape[0], self.devices_per_process)
            padded = self._pad(images, targets, indices, template, size)
            yield batch._replace(images=padded[0], targets=padded[1], indices=padded[2])
            self.step_done()
        while steps < steps_needed and template is not None:
            from ..data.loader import EvalBatch
            empty = torch.empty((0,), dtype=torch.long)
            padded = self._pad(template[:0], empty, empty, template, size)
            steps += 1
            yield EvalBatch(padded[0], padded[1], padded[2], 0, empty)
            self.step_done()

    def _pad(self, images: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor, template: torch.Tensor,
             size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        missing = size - targets.shape[0]
        if missing > 0:
            if images.numel() == 0:
                images = template[:0]
            images = torch.cat([images, template.new_zeros((missing, *template.shape[1:]))])
            targets = torch.cat([targets, torch.full((missing,), IGNORE_TARGET, dtype=targets.dtype)])
            indices = torch.cat([indices, torch.zeros(missing, dtype=indices.dtype)])
        return self._xla_put(images), self._xla_put(targets), self._xla_put(indices)

    def host_state(self, value: Any) -> Any:
        """A checkpoint's content with every tensor on the CPU, so it loads anywhere (GPU, CPU, XLA alike).

        On XLA the pending graph runs first, so the values are those of the finished step. Elsewhere the value is
        returned unchanged (torch.save keeps the device, and loading maps it to the CPU).
        """
        if self.kind != 'xla':
            return value
        self.step_done()
        return _to_cpu(value)

    def synchronize(self) -> None:
        """Wait for queued device work (for honest timings)."""
        if self.kind == 'cuda':
            torch.cuda.synchronize(self.device)
        elif self.kind == 'xla':
            import torch_xla.core.xla_model as xm
            xm.wait_device_ops()

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    @contextlib.contextmanager
    def session(self) -> Iterator['Runtime']:
        try:
            yield self
        finally:
            self.close()


def _round_up(value: int, multiple: int) -> int:
    return math.ceil(value / multiple) * multiple


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_cpu(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_to_cpu(item) for item in value)
    return value


def _init_xla_runtime() -> Runtime:
    """SPMD over every device of the job: one process per host, the batch split over a 1-D mesh of all chips."""
    if int(os.environ.get('WORLD_SIZE', '1')) > 1:
        raise UsageError('--device xla runs one process per host (SPMD over its chips): start it with python3, '
                         'not torchrun (see TRAIN.md, TPU section)')
    try:
        import numpy as np
        import torch_xla
        import torch_xla.distributed.spmd as xs
        import torch_xla.runtime as xr
    except ImportError as error:
        raise UsageError(f'--device xla needs torch_xla ({error}); install it with: {XLA_INSTALL_HINT}') from None
    if not os.environ.get('PJRT_DEVICE'):
        os.environ['PJRT_DEVICE'] = 'TPU'
    # 0 and 1 would otherwise be baked into graphs as constants: the first two batches of every epoch (and any
    # scalar that happens to be 0 or 1) would compile graphs of their own
    os.environ.setdefault('XLA_NO_SPECIAL_SCALARS', '1')
    if not xr.is_spmd():
        xr.use_spmd()
    num_devices = xr.global_runtime_device_count()
    mesh = xs.Mesh(np.arange(num_devices), (num_devices,), ('data',))
    world_size = xr.process_count()
    devices_per_process = num_devices // max(world_size, 1)
    expected = os.environ.get('ROBUSTCNN_XLA_NUM_DEVICES')  # scripts/launch_xla.py --num-devices
    if expected and int(expected) != devices_per_process:
        raise UsageError(f'--num-devices {expected} was asked for but this host has {devices_per_process} XLA '
                         f'devices ({xr.device_type()}); pass --num-devices {devices_per_process} or leave it out')
    return Runtime(kind='xla', device=torch_xla.device(), rank=xr.process_index(), world_size=world_size,
                   local_rank=0, devices_per_process=devices_per_process, spmd=True, mesh=mesh)


def init_runtime(device: str = 'auto', timeout_minutes: float = 30.0) -> Runtime:
    """Create the runtime; joins the process group when launched by torchrun (``WORLD_SIZE`` > 1).

    ``timeout_minutes`` bounds how long a collective waits for a rank that died, so a broken run stops with an
    error instead of hanging forever.
    """
    kind = resolve_device_kind(device)
    if kind == 'xla':
        return _init_xla_runtime()
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
