"""Throughput: training steps and inference of timm models (ours and references) in one run.

Absolute numbers depend on the machine (and, on a shared CPU, on what else runs), so every run measures the
reference models too and reports ratios against them; results carry the machine and software they came from.
On a CPU, ``timer='cpu'`` counts the process's CPU seconds instead of wall time, which is far less disturbed by
other processes on the same cores (images per CPU-second; equal to wall-time throughput on an idle machine with
one thread).

On a GPU the timed loop holds nothing but the step: the batch is generated on the device once, cuDNN picks its
fastest kernels for the fixed shape (``cudnn.benchmark``) during the untimed warm-up, which also holds
torch.compile's compilation, and the clock reads only after ``torch.cuda.synchronize``. Peak memory is counted
from a reset after the model is built, so each row's figure is its own (weights, optimizer state, activations).
"""
from __future__ import annotations

import csv
import datetime
import gc
import io
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..atomic import atomic_write_text
from ..engine.runtime import AMP_DTYPES, Runtime, init_runtime
from ..models.fuse import fuse_for_inference

__all__ = [
    'ROBUST_MODELS', 'REFERENCE_MODELS', 'SpeedSettings', 'SpeedResult', 'measure_model', 'measure_models',
    'add_reference_ratios', 'format_table', 'write_results', 'machine_info', 'time_steps', 'parse_variant',
    'VARIANT_FLAGS', 'skipped_result',
]

_logger = logging.getLogger(__name__)

ROBUST_MODELS = (
    'robust_resnet_dw_small', 'robust_resnet_inverted_dw_small', 'robust_resnet_up_inverted_dw_small',
    'robust_resnet_down_inverted_dw_small',
)
REFERENCE_MODELS = ('deit_small_patch16_224', 'resnet50', 'convnext_tiny')

# A variant is '+'-joined flags, e.g. 'base', 'amp', 'amp+channels_last', 'compile', 'unfused'.
VARIANT_FLAGS = ('base', 'amp', 'channels_last', 'compile', 'unfused')


def parse_variant(variant: str) -> dict[str, bool]:
    """'amp+channels_last' -> {'amp': True, 'channels_last': True, 'compile': False, 'fuse': True}."""
    flags = [flag.strip() for flag in variant.split('+') if flag.strip()]
    unknown = [flag for flag in flags if flag not in VARIANT_FLAGS]
    if unknown or not flags:
        raise ValueError(f'unknown variant {variant!r}: join flags from {", ".join(VARIANT_FLAGS)} with "+"')
    return {'amp': 'amp' in flags, 'channels_last': 'channels_last' in flags, 'compile': 'compile' in flags,
            'fuse': 'unfused' not in flags}


@dataclass
class SpeedSettings:
    """One measurement: a model in one mode ('train' or 'infer') with one set of speed options."""

    model: str
    mode: str = 'infer'
    batch_size: int = 8
    img_size: int | None = None  # default: the model's pretrained cfg
    device: str = 'cpu'
    amp: bool = False
    amp_dtype: str = 'bfloat16'
    channels_last: bool = False
    compile: bool = False
    compile_backend: str = 'inductor'  # tests on a CPU use 'aot_eager' (no C++ compiler run)
    fuse: bool = True  # inference: fold BatchNorms (model.fuse() / timm's reparameterize hook) where offered
    warmup: int = 2
    iterations: int = 5
    repeats: int = 3
    timer: str = 'wall'  # 'wall' or 'cpu' (process CPU time; CPU device only)
    variant: str = 'base'


@dataclass
class SpeedResult:
    """Median step time over ``repeats`` blocks of ``iterations`` steps; throughput is batch / median step.

    ``error`` is set when the measurement failed (out of memory, a compile error); ``skipped`` says why a planned
    measurement was not run (the device check's time budget). Either way the row is kept, so a results file
    shows every planned measurement.
    """

    model: str
    mode: str
    variant: str
    device: str
    batch_size: int
    img_size: int
    images_per_second: float
    step_ms: float
    step_ms_all: list[float] = field(default_factory=list)
    peak_memory_mib: float | None = None
    param_count_m: float = 0.0
    timer: str = 'wall'
    warmup_s: float | None = None  # the untimed warm-up steps, torch.compile's compilation included
    seconds: float | None = None  # the whole measurement: model creation, warm-up and timed steps
    error: str | None = None
    skipped: str | None = None
    ratios: dict[str, float] = field(default_factory=dict)


def _gpu_driver_version() -> str | None:
    """The NVIDIA driver's version (torch reports only the CUDA API version): nvidia-smi, else the kernel module."""
    if shutil.which('nvidia-smi'):
        try:
            done = subprocess.run(['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'],
                                  capture_output=True, text=True, timeout=20)
            if done.returncode == 0 and done.stdout.strip():
                return done.stdout.strip().splitlines()[0].strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        with open('/proc/driver/nvidia/version') as version:
            return version.readline().strip() or None
    except OSError:
        return None


def machine_info(device: str = 'cpu') -> dict[str, Any]:
    """What the numbers were measured on: needed to read any absolute number later."""
    cpu_model = platform.processor() or ''
    try:
        with open('/proc/cpuinfo') as cpuinfo:
            for line in cpuinfo:
                if line.startswith('model name'):
                    cpu_model = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'cpu': cpu_model, 'cpu_count': os.cpu_count(), 'torch_threads': torch.get_num_threads(),
        'torch': torch.__version__, 'python': platform.python_version(), 'platform': platform.platform(),
    }
    try:
        import timm
        info['timm'] = timm.__version__
    except ImportError:  # pragma: no cover - timm is a dependency
        pass
    if device.startswith('cuda') and torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(torch.device(device))
        info.update({
            'gpu': properties.name, 'gpu_memory_gib': round(properties.total_memory / 2 ** 30, 1),
            'gpu_capability': f'{properties.major}.{properties.minor}', 'gpu_count': torch.cuda.device_count(),
            'driver': _gpu_driver_version(), 'cuda': torch.version.cuda, 'cudnn': torch.backends.cudnn.version(),
            # float32 rows ('base') run convolutions in TF32 and matmuls in full float32 unless these say otherwise
            'cudnn_allow_tf32': torch.backends.cudnn.allow_tf32,
            'matmul_allow_tf32': torch.backends.cuda.matmul.allow_tf32,
        })
    return info


def time_steps(step: Callable[[], Any], runtime: Runtime, warmup: int, iterations: int, repeats: int,
               timer: str = 'wall') -> tuple[list[float], float]:
    """Seconds per step of each of ``repeats`` blocks (``iterations`` steps each), and the seconds of the
    ``warmup`` steps run first (not counted: cuDNN autotuning, torch.compile, allocator growth happen there)."""
    if timer not in ('wall', 'cpu'):
        raise ValueError(f"timer must be 'wall' or 'cpu', got {timer!r}")
    if timer == 'cpu' and runtime.kind != 'cpu':
        raise ValueError('timer="cpu" measures CPU seconds and only makes sense on the CPU device')
    clock = time.process_time if timer == 'cpu' else time.perf_counter
    runtime.synchronize()
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    runtime.synchronize()
    warmup_seconds = time.perf_counter() - start
    per_step = []
    for _ in range(repeats):
        runtime.synchronize()
        start = clock()
        for _ in range(iterations):
            step()
        runtime.synchronize()  # queued kernels belong to this block
        per_step.append((clock() - start) / iterations)
    return per_step, warmup_seconds


def _create_model(name: str, img_size: int | None) -> tuple[nn.Module, int]:
    import timm
    import robustcnn  # noqa: F401  (registers the Robust-ResNets with timm)

    model = timm.create_model(name)
    default_size = int(model.pretrained_cfg.get('input_size', (3, 224, 224))[-1])
    if img_size is not None and img_size != default_size:
        # Vision transformers fix their position embeddings at creation, so they are built for the size; convolutional
        # networks take any size, and their constructors have no img_size argument (hence the TypeError)
        try:
            model = timm.create_model(name, img_size=img_size)
        except TypeError:
            pass
    return model, img_size or default_size


def _build_step(settings: SpeedSettings, runtime: Runtime) -> tuple[Callable[[], Any], nn.Module, int]:
    device = runtime.device
    model, img_size = _create_model(settings.model, settings.img_size)
    model.to(device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    num_classes = getattr(model, 'num_classes', 1000) or 1000
    # generated once on the device: no host-to-device copy in the timed loop
    images = torch.randn(settings.batch_size, 3, img_size, img_size, device=device)
    if settings.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, num_classes, (settings.batch_size,), device=device)
    amp_dtype = AMP_DTYPES[settings.amp_dtype] if settings.amp else None

    def compiled(module: nn.Module) -> nn.Module:
        return torch.compile(module, backend=settings.compile_backend) if settings.compile else module

    if settings.mode == 'train':
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        runner = compiled(model)

        def step() -> None:
            with runtime.autocast(amp_dtype):
                loss = F.cross_entropy(runner(images), targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    elif settings.mode == 'infer':
        model.eval()
        if settings.fuse:
            model = fuse_for_inference(model)
        runner = compiled(model)

        def step() -> None:
            with runtime.inference_mode(), runtime.autocast(amp_dtype):
                runner(images)
    else:
        raise ValueError(f"mode must be 'train' or 'infer', got {settings.mode!r}")
    return step, model, img_size


def _release_device_memory(runtime: Runtime, compiled: bool) -> None:
    """Free the previous measurement's tensors, so the next one starts from an empty device (and its peak is its
    own); compiled graphs hold references to their weights until dynamo forgets them."""
    if compiled:
        torch._dynamo.reset()
    gc.collect()
    if runtime.kind == 'cuda':
        torch.cuda.empty_cache()


def measure_model(settings: SpeedSettings) -> SpeedResult:
    """Measure one model in one mode and variant; a failure (out of memory, a compile error) is recorded in the
    result, not raised, so that one variant cannot end a run of many."""
    runtime = init_runtime(settings.device)
    device = runtime.device
    if runtime.kind == 'cuda':
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest convolution kernels once
    started = time.perf_counter()
    img_size = settings.img_size or 0
    error: str | None = None
    try:
        step, model, img_size = _build_step(settings, runtime)
        param_count = sum(parameter.numel() for parameter in model.parameters()) / 1e6
        if runtime.kind == 'cuda':
            torch.cuda.reset_peak_memory_stats(device)
        seconds, warmup_seconds = time_steps(step, runtime, settings.warmup, settings.iterations, settings.repeats,
                                             settings.timer)
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if runtime.kind == 'cuda' else None
    except Exception as failure:  # noqa: BLE001 - recorded in the results; the traceback goes to the log
        out_of_memory = isinstance(failure, torch.OutOfMemoryError)
        _logger.warning('%s %s %s failed: %s', settings.model, settings.mode, settings.variant,
                        'out of memory' if out_of_memory else failure, exc_info=not out_of_memory)
        error = (str(failure).strip().splitlines() or [type(failure).__name__])[0][:300]
        if out_of_memory:
            error = f'out of memory: {error}'
    finally:
        step = model = None  # noqa: F841 - drop the references before freeing the device memory
        _release_device_memory(runtime, settings.compile)
    if error is not None:
        return SpeedResult(settings.model, settings.mode, settings.variant, runtime.kind, settings.batch_size,
                           img_size, float('nan'), float('nan'), timer=settings.timer,
                           seconds=round(time.perf_counter() - started, 2), error=error)
    median = statistics.median(seconds)
    return SpeedResult(
        model=settings.model, mode=settings.mode, variant=settings.variant, device=runtime.kind,
        batch_size=settings.batch_size, img_size=img_size, images_per_second=settings.batch_size / median,
        step_ms=1000 * median, step_ms_all=[round(1000 * value, 3) for value in seconds], peak_memory_mib=peak,
        param_count_m=round(param_count, 3), timer=settings.timer, warmup_s=round(warmup_seconds, 3),
        seconds=round(time.perf_counter() - started, 2))


def skipped_result(settings: SpeedSettings, reason: str) -> SpeedResult:
    """The row of a planned measurement that was not run, and why."""
    return SpeedResult(settings.model, settings.mode, settings.variant, settings.device, settings.batch_size,
                       settings.img_size or 0, float('nan'), float('nan'), timer=settings.timer, skipped=reason)


def measure_models(models: Sequence[str], modes: Sequence[str], variants: Sequence[str], template: SpeedSettings,
                   on_result: Callable[[SpeedResult], None] | None = None) -> list[SpeedResult]:
    """Every model x mode x variant ('unfused' only matters for inference, so it is skipped for training)."""
    results = []
    for mode in modes:
        for variant in variants:
            flags = parse_variant(variant)
            if mode == 'train' and not flags['fuse']:
                continue
            for model in models:
                result = measure_model(replace(template, model=model, mode=mode, variant=variant, **flags))
                results.append(result)
                if on_result is not None:
                    on_result(result)
    return results


def add_reference_ratios(results: Iterable[SpeedResult], references: Sequence[str]) -> None:
    """``ratios[ref]`` = this model's throughput / the reference's, same mode and variant, same run."""
    results = list(results)
    lookup = {(result.model, result.mode, result.variant): result for result in results}
    for result in results:
        for reference in references:
            other = lookup.get((reference, result.mode, result.variant))
            if other is not None and _measured(result) and _measured(other) and other.images_per_second > 0:
                result.ratios[reference] = round(result.images_per_second / other.images_per_second, 3)


def _measured(result: SpeedResult) -> bool:
    return result.error is None and result.skipped is None


def format_table(results: Sequence[SpeedResult], references: Sequence[str] = ()) -> str:
    """A Markdown table (also readable in a terminal); failed and skipped rows say why."""
    header = ['model', 'mode', 'variant', 'batch', 'img/s', 'step ms', 'peak MiB'] + [f'x {ref}' for ref in references]
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for result in results:
        if not _measured(result):
            state = f'error: {result.error}' if result.error is not None else f'skipped: {result.skipped}'
            cells = [result.model, result.mode, result.variant, str(result.batch_size), state.replace('|', '/')]
            lines.append('| ' + ' | '.join(cells + [''] * (len(header) - len(cells))) + ' |')
            continue
        peak = f'{result.peak_memory_mib:.0f}' if result.peak_memory_mib is not None else '-'
        cells = [result.model, result.mode, result.variant, str(result.batch_size), f'{result.images_per_second:.2f}',
                 f'{result.step_ms:.1f}', peak]
        cells += [f'{result.ratios[ref]:.2f}' if ref in result.ratios else '-' for ref in references]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def write_results(results: Sequence[SpeedResult], path: str | os.PathLike,
                  machine: dict[str, Any] | None = None) -> None:
    """``.json`` (machine info + one record per measurement) or ``.csv`` (one row each), written atomically."""
    # a failed or skipped row has no throughput: null in JSON (NaN is not JSON), an empty CSV cell
    records = [{key: None if isinstance(value, float) and value != value else value
                for key, value in asdict(result).items()} for result in results]
    suffix = os.fspath(path).lower().rsplit('.', 1)[-1]
    if suffix == 'json':
        atomic_write_text(json.dumps({'machine': machine or {}, 'results': records}, indent=2) + '\n', path)
    elif suffix == 'csv':
        buffer = io.StringIO()
        references = sorted({name for record in records for name in record['ratios']})
        columns = [name for name in records[0] if name not in ('ratios', 'step_ms_all')] if records else []
        writer = csv.writer(buffer)
        writer.writerow(columns + [f'ratio_{name}' for name in references] + list((machine or {}).keys()))
        for record in records:
            writer.writerow(['' if record[name] is None else record[name] for name in columns]
                            + [record['ratios'].get(name, '') for name in references]
                            + list((machine or {}).values()))
        atomic_write_text(buffer.getvalue(), path)
    else:
        raise ValueError(f'results file must end in .json or .csv, got {os.fspath(path)}')
