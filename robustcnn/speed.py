"""Throughput benchmarks: training steps and inference of timm models (ours and references) in one run.

Absolute numbers depend on the machine (and, on a shared CPU, on what else runs), so every run measures the
reference models too and reports ratios against them; results carry the machine and software they came from.
On a CPU, ``timer='cpu'`` counts the process's CPU seconds instead of wall time, which is far less disturbed by
other processes on the same cores (images per CPU-second; equal to wall-time throughput on an idle machine with
one thread).
"""
from __future__ import annotations

import csv
import datetime
import io
import json
import logging
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import atomic_write_text

__all__ = [
    'ROBUST_MODELS', 'REFERENCE_MODELS', 'BenchmarkSettings', 'BenchmarkResult', 'benchmark_model',
    'run_benchmarks', 'add_reference_ratios', 'format_table', 'write_results', 'machine_info', 'time_steps',
    'parse_variant', 'VARIANT_FLAGS',
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
class BenchmarkSettings:
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
    fuse: bool = True  # inference: fold BatchNorms (model.fuse() / timm's reparameterize hook) where offered
    warmup: int = 2
    iterations: int = 5
    repeats: int = 3
    timer: str = 'wall'  # 'wall' or 'cpu' (process CPU time; CPU device only)
    variant: str = 'base'


@dataclass
class BenchmarkResult:
    """Median step time over ``repeats`` blocks of ``iterations`` steps; throughput is batch / median step."""

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
    error: str | None = None
    ratios: dict[str, float] = field(default_factory=dict)


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
        info['gpu'] = torch.cuda.get_device_name(torch.device(device))
        info['cuda'] = torch.version.cuda
    return info


def _synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], Any], device: torch.device, warmup: int, iterations: int, repeats: int,
               timer: str = 'wall') -> list[float]:
    """Seconds per step of each of ``repeats`` blocks (``iterations`` steps each), after ``warmup`` steps."""
    if timer not in ('wall', 'cpu'):
        raise ValueError(f"timer must be 'wall' or 'cpu', got {timer!r}")
    if timer == 'cpu' and device.type != 'cpu':
        raise ValueError('timer="cpu" measures CPU seconds and only makes sense on the CPU device')
    clock = time.process_time if timer == 'cpu' else time.perf_counter
    for _ in range(warmup):
        step()
    _synchronize(device)
    per_step = []
    for _ in range(repeats):
        start = clock()
        for _ in range(iterations):
            step()
        _synchronize(device)
        per_step.append((clock() - start) / iterations)
    return per_step


def _fuse_for_inference(model: nn.Module) -> nn.Module:
    if callable(getattr(model, 'fuse', None)):
        fused = model.fuse()
        return fused if isinstance(fused, nn.Module) else model
    from timm.utils.model import reparameterize_model
    return reparameterize_model(model, inplace=True)


def _build_step(settings: BenchmarkSettings, device: torch.device) -> tuple[Callable[[], Any], nn.Module, int]:
    import timm
    import robustcnn  # noqa: F401  (registers the Robust-ResNets with timm)

    model = timm.create_model(settings.model)
    img_size = settings.img_size or int(model.pretrained_cfg.get('input_size', (3, 224, 224))[-1])
    model.to(device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    num_classes = getattr(model, 'num_classes', 1000) or 1000
    images = torch.randn(settings.batch_size, 3, img_size, img_size, device=device)
    if settings.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, num_classes, (settings.batch_size,), device=device)
    amp_dtype = {'bfloat16': torch.bfloat16, 'float16': torch.float16}[settings.amp_dtype]

    def autocast() -> Any:
        return torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=settings.amp)

    if settings.mode == 'train':
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        runner: nn.Module = torch.compile(model) if settings.compile else model

        def step() -> None:
            with autocast():
                loss = F.cross_entropy(runner(images), targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    elif settings.mode == 'infer':
        model.eval()
        if settings.fuse:
            model = _fuse_for_inference(model)
        runner = torch.compile(model) if settings.compile else model

        def step() -> None:
            with torch.inference_mode(), autocast():
                runner(images)
    else:
        raise ValueError(f"mode must be 'train' or 'infer', got {settings.mode!r}")
    return step, model, img_size


def benchmark_model(settings: BenchmarkSettings) -> BenchmarkResult:
    """Measure one model in one mode and variant; an error (e.g. out of memory) is recorded, not raised."""
    device = torch.device(settings.device)
    img_size = settings.img_size or 0
    try:
        step, model, img_size = _build_step(settings, device)
        param_count = sum(parameter.numel() for parameter in model.parameters()) / 1e6
        if device.type == 'cuda':
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        seconds = time_steps(step, device, settings.warmup, settings.iterations, settings.repeats, settings.timer)
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == 'cuda' else None
    except (RuntimeError, ValueError, torch.OutOfMemoryError) as error:
        _logger.warning('%s %s %s failed: %s', settings.model, settings.mode, settings.variant, error)
        return BenchmarkResult(settings.model, settings.mode, settings.variant, device.type, settings.batch_size,
                               img_size, float('nan'), float('nan'), timer=settings.timer,
                               error=str(error).splitlines()[0][:300] if str(error) else type(error).__name__)
    finally:
        if device.type == 'cuda':
            torch.cuda.empty_cache()
    median = statistics.median(seconds)
    return BenchmarkResult(
        model=settings.model, mode=settings.mode, variant=settings.variant, device=device.type,
        batch_size=settings.batch_size, img_size=img_size, images_per_second=settings.batch_size / median,
        step_ms=1000 * median, step_ms_all=[round(1000 * value, 3) for value in seconds], peak_memory_mib=peak,
        param_count_m=round(param_count, 3), timer=settings.timer)


def run_benchmarks(models: Sequence[str], modes: Sequence[str], variants: Sequence[str],
                   template: BenchmarkSettings,
                   on_result: Callable[[BenchmarkResult], None] | None = None) -> list[BenchmarkResult]:
    """Every model x mode x variant ('unfused' only matters for inference, so it is skipped for training)."""
    results = []
    for mode in modes:
        for variant in variants:
            flags = parse_variant(variant)
            if mode == 'train' and not flags['fuse']:
                continue
            for model in models:
                settings = replace(template, model=model, mode=mode, variant=variant, **flags)
                result = benchmark_model(settings)
                results.append(result)
                if on_result is not None:
                    on_result(result)
    return results


def add_reference_ratios(results: Iterable[BenchmarkResult], references: Sequence[str]) -> None:
    """``ratios[ref]`` = this model's throughput / the reference's, same mode and variant, same run."""
    results = list(results)
    lookup = {(result.model, result.mode, result.variant): result for result in results}
    for result in results:
        for reference in references:
            other = lookup.get((reference, result.mode, result.variant))
            if other is not None and other.images_per_second > 0 and result.error is None and other.error is None:
                result.ratios[reference] = round(result.images_per_second / other.images_per_second, 3)


def format_table(results: Sequence[BenchmarkResult], references: Sequence[str] = ()) -> str:
    """A plain-text table for the terminal (Markdown-compatible)."""
    header = ['model', 'mode', 'variant', 'batch', 'img/s', 'step ms', 'peak MiB'] + [f'x {ref}' for ref in references]
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for result in results:
        if result.error is not None:
            cells = [result.model, result.mode, result.variant, str(result.batch_size), 'error: ' + result.error]
            lines.append('| ' + ' | '.join(cells) + ' |')
            continue
        peak = f'{result.peak_memory_mib:.0f}' if result.peak_memory_mib is not None else '-'
        cells = [result.model, result.mode, result.variant, str(result.batch_size), f'{result.images_per_second:.2f}',
                 f'{result.step_ms:.1f}', peak]
        cells += [f'{result.ratios[ref]:.2f}' if ref in result.ratios else '-' for ref in references]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def write_results(results: Sequence[BenchmarkResult], path: str | os.PathLike,
                  machine: dict[str, Any] | None = None) -> None:
    """``.json`` (machine info + one record per measurement) or ``.csv`` (one row each), written atomically."""
    records = [asdict(result) for result in results]
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
            writer.writerow([record[name] for name in columns]
                            + [record['ratios'].get(name, '') for name in references]
                            + list((machine or {}).values()))
        atomic_write_text(buffer.getvalue(), path)
    else:
        raise ValueError(f'results file must end in .json or .csv, got {os.fspath(path)}')
