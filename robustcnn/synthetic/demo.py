"""The one-command demo: generate the synthetic benchmark, train a small Robust-ResNet on it with the paper's
recipe scaled down to a CPU, evaluate it on clean validation images and every shift, and write the report.

Nothing here trains or evaluates by itself: training is ``train.py``'s library entry point
(:func:`robustcnn.engine.trainer.run_training` on parsed train.py flags) and evaluation is ``validate.py``'s
(:func:`robustcnn.benchmarks.runner.run_validation`), so the demo exercises exactly the code a real run uses.
The synthetic sets are scored under the ImageNet benchmark whose layout and protocol they copy (clean val as
``imagenet``, the corruption tree as ``imagenet-c``, ...); the report names them by what they are.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..checkpoint import atomic_write_text
from ..cli import UsageError
from .benchmark import (CLASS_NAMES, CLASS_TEXTURES, TEXTURE_LABELLED, SyntheticConfig, default_benchmark_dir,
                        ensure_benchmark)

__all__ = ['DemoOptions', 'DemoOutcome', 'DATASETS', 'run_demo', 'build_parser', 'main', 'training_flags',
           'default_model_kwargs']

_logger = logging.getLogger(__name__)

DEFAULT_MODEL = 'robust_resnet_dw_nano'
# (key in the results, benchmark validate.py scores it with, folder in the benchmark, name in the report)
DATASETS: tuple[tuple[str, str, str, str], ...] = (
    ('imagenet', 'imagenet', '.', 'clean (val)'),
    ('stylized-imagenet', 'stylized-imagenet', 'stylized', 'stylized (textures swapped)'),
    ('imagenet-sketch', 'imagenet-sketch', 'sketch', 'sketch (outlines)'),
    ('rendition', 'folder', 'rendition', 'rendition (cartoons)'),
    ('imagenet-c', 'imagenet-c', 'corruption', 'corruptions (15 x 5)'),
)
TEXTURE_KEY = 'stylized-texture'


@dataclass
class DemoOptions:
    """What the demo's command line sets; the defaults are the README's measured run."""

    model: str = DEFAULT_MODEL
    model_kwargs: Mapping[str, Any] | None = None  # None: a 64 px-friendly default for the model family
    epochs: int = 12
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0
    workers: int | None = None
    output: str = './output/demo'
    data_dir: str | None = None  # benchmark folder; default: the cache folder of the config
    benchmark: SyntheticConfig = field(default_factory=SyntheticConfig)
    extra_train_flags: Sequence[str] = ()


@dataclass
class DemoOutcome:
    report_markdown: Path
    report_json: Path
    report_figure: Path
    checkpoint: Path
    payload: dict[str, Any]


def default_model_kwargs(model: str, image_size: int) -> dict[str, Any]:
    """Arguments that suit 64 px images: Robust-ResNets patchify by 8 (not 16) with 7x7 depthwise kernels (an 11x11
    kernel on an 8x8 map is mostly padding and trains 1.4x slower on a CPU), ViTs take the small size."""
    if model.startswith('robust_resnet'):
        return {'patch_size': 8, 'kernel_size': 7}
    if model.startswith(('vit_', 'deit_', 'deit3_')):
        return {'img_size': image_size, 'patch_size': 8}
    return {}


def _loader_workers(options: DemoOptions) -> int:
    """One loader process on a 2-core machine: the model's threads need the cores more than 64 px decoding does."""
    if options.workers is not None:
        return options.workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
    return 1 if cores <= 2 else 2


def training_flags(options: DemoOptions, data_dir: Path, experiment: str) -> list[str]:
    """train.py's flags for the demo: the DeiT recipe with every component on, scaled down to a CPU and 64 px.

    Scaled so that a 2-core CPU reaches >= 90% clean accuracy in minutes: 12 epochs (1 warm-up), RandAugment
    magnitude 5 instead of 9, mixup 0.1 / cutmix 0.1 instead of 0.8 / 1.0, random erasing 0.1 instead of 0.25,
    repeated augmentation x2 instead of x3, drop path 0.05, crops covering at least half the image (a smaller crop
    can cut the shape out). Validation sees the whole 64 px image (crop 1.0), as the shifted sets do.
    """
    image_size = options.benchmark.image_size
    kwargs = default_model_kwargs(options.model, image_size) if options.model_kwargs is None \
        else dict(options.model_kwargs)
    workers = _loader_workers(options)
    flags = [
        str(data_dir), '--model', options.model, '--img-size', str(image_size), '--crop-pct', '1.0',
        '--device', 'cpu', '--batch-size', str(options.batch_size), '--workers', str(workers),
        '--opt', 'adamw', '--lr', str(options.lr), '--weight-decay', '0.05', '--sched', 'cosine',
        '--epochs', str(options.epochs), '--warmup-epochs', '1', '--warmup-lr', '1e-5', '--min-lr', '1e-5',
        '--aa', 'rand-m5-mstd0.5-inc1', '--aug-repeats', '2', '--reprob', '0.1', '--scale', '0.5', '1.0',
        '--mixup', '0.1', '--cutmix', '0.1', '--smoothing', '0.1', '--train-interpolation', 'bicubic',
        '--drop-path', '0.05', '--seed', str(options.seed), '--output', str(options.output),
        '--experiment', experiment, '--checkpoint-interval', str(max(options.epochs, 1)), '--log-interval', '20',
    ]
    if kwargs:
        flags += ['--model-kwargs', *(f'{key}={json.dumps(value)}' for key, value in kwargs.items())]
    return flags + list(options.extra_train_flags)


def _train(options: DemoOptions, data_dir: Path, experiment: str) -> tuple[Path, dict[str, Any]]:
    from ..config import parse_train_args
    from ..engine.trainer import run_training

    args = parse_train_args(training_flags(options, data_dir, experiment))
    outcome = run_training(args)
    checkpoint = outcome.run_dir / 'last.pth.tar'
    summary = {
        'epochs': outcome.epochs_run, 'final_val_top1': outcome.last_eval.get('top1'),
        'best_val_top1': outcome.best_metric, 'best_epoch': outcome.best_epoch, 'run_dir': str(outcome.run_dir),
        'model_kwargs': dict(args.model_kwargs or {}), 'flags': training_flags(options, data_dir, experiment)[1:],
    }
    return checkpoint, summary


def _evaluate(options: DemoOptions, data_dir: Path, checkpoint: Path) -> dict[str, Any]:
    """validate.py's suite on the synthetic sets (model loaded once), then the two plain class-folder sets."""
    from ..benchmarks.runner import ValidationRequest, run_validation
    from ..engine.runtime import init_runtime

    workers = _loader_workers(options)
    common = dict(checkpoint=str(checkpoint), batch_size=256, workers=workers, log_freq=0)
    suite = {key: data_dir / folder for key, benchmark, folder, _ in DATASETS if benchmark != 'folder'}
    runtime = init_runtime('cpu')
    with runtime.session():
        payload = run_validation(ValidationRequest(
            data_dir=str(data_dir), suite=True, suite_datasets=list(suite), dataset_dirs={
                name: str(path) for name, path in suite.items()}, **common), runtime)
        for key, folder in (('rendition', 'rendition'), (TEXTURE_KEY, TEXTURE_LABELLED)):
            single = run_validation(ValidationRequest(data_dir=str(data_dir / folder), dataset='folder', **common),
                                    runtime)
            payload['results'][key] = single['results']['folder']
    payload.pop('readme_row', None)
    return payload


def shape_bias(payload: Mapping[str, Any]) -> float | None:
    """Geirhos et al.'s shape bias on the stylized set: shape decisions / (shape + texture decisions), percent."""
    results = payload.get('results', {})
    shape = results.get('stylized-imagenet', {}).get('top1')
    texture = results.get(TEXTURE_KEY, {}).get('top1')
    if shape is None or texture is None or shape + texture == 0:
        return None
    return 100.0 * shape / (shape + texture)


def summary_rows(payload: Mapping[str, Any]) -> list[tuple[str, str, float | None]]:
    """(set, metric, value) for the report's main table, in the order of :data:`DATASETS`."""
    results = payload.get('results', {})
    rows: list[tuple[str, str, float | None]] = []
    for key, _, _, title in DATASETS:
        entry = results.get(key, {})
        if key == 'imagenet-c':
            error = entry.get('mean_corruption_error')
            rows.append((title, 'top-1 accuracy (100 - mean corruption error)',
                         None if error is None else 100.0 - error))
        else:
            rows.append((title, 'top-1 accuracy', entry.get('top1')))
    rows.append(('stylized: texture decisions', 'top-1 as the texture\'s class', results.get(TEXTURE_KEY, {}).get(
        'top1')))
    rows.append(('shape bias', 'shape / (shape + texture) decisions', shape_bias(payload)))
    return rows


def _format(value: float | None) -> str:
    return '–' if value is None or not math.isfinite(value) else f'{value:.1f}'


def demo_markdown(payload: Mapping[str, Any]) -> str:
    """The report: the headline table, what the sets are, then validate.py's own report of the same numbers."""
    from ..report import results_to_markdown

    demo = payload['demo']
    timing = demo['timing']
    lines = [f'# Synthetic robustness benchmark: `{payload["model"]}`', '',
             f'{len(CLASS_NAMES)} shape classes at {demo["benchmark"]["config"]["image_size"]} px; texture matches '
             f'the class in {100 * demo["benchmark"]["config"]["texture_correlation"]:.0f}% of training images, '
             f'shape in all of them. Percent; higher is better.', '',
             '| set | metric | value |', '|---|---|---:|']
    lines += [f'| {name} | {metric} | {_format(value)} |' for name, metric, value in summary_rows(payload)]
    lines += ['', f'Time: {timing["total_seconds"]:.0f} s in all (generation {timing["generation_seconds"]:.0f} s, '
                  f'training {timing["training_seconds"]:.0f} s, evaluation {timing["evaluation_seconds"]:.0f} s) '
                  f'on {demo["machine"]}. Checkpoint: `{payload["checkpoint"]}`.', '',
              'Sets: clean = `val/`; stylized = val shapes wearing another class\'s texture; sketch = outlines; '
              'rendition = flat cartoons; corruptions = ImageNet-C\'s 15 corruptions x 5 severities of val images '
              '(`corruption/`). The stylized images are scored twice: against their shape (the label) and against '
              'the class whose texture they wear.', '',
              '---', '',
              'The same numbers as `validate.py` reports them (each synthetic set scored as the ImageNet set whose '
              'layout and protocol it copies; mCE and relative mCE are left out, since they are relative to '
              'AlexNet\'s errors on the *real* ImageNet-C, which exist for the 1000 ImageNet classes only):', '']
    report = results_to_markdown({key: value for key, value in payload.items() if key != 'demo'})
    lines += [line.replace('# Evaluation of', '## Evaluation of', 1) if line.startswith('# ') else
              line.replace('## ', '### ', 1) if line.startswith('## ') else line for line in report.splitlines()]
    return '\n'.join(lines) + '\n'


def figure_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The results with the class-folder sets under their synthetic names, for the PNG's bar chart."""
    names = {key: title.split(' (')[0] for key, _, _, title in DATASETS if key != 'imagenet-c'}
    names[TEXTURE_KEY] = 'stylized: texture'
    results = {names.get(key, key): value for key, value in payload['results'].items()}
    return {'model': f'{payload["model"]} (synthetic)', 'results': results}


def _machine() -> str:
    import platform
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    return f'{platform.machine()} CPU, {cores} cores, {time.strftime("%Y-%m-%d")}'


def run_demo(options: DemoOptions) -> DemoOutcome:
    """Generate (if needed), train, evaluate, report. Returns where the report files are."""
    from ..report import results_to_json, write_figure

    started = time.perf_counter()
    experiment = f'{options.model.replace("/", "_")}-seed{options.seed}'
    run_dir = Path(options.output) / experiment
    if (run_dir / 'last.pth.tar').exists() or (run_dir / 'args.yaml').exists():
        raise UsageError(f'{run_dir} already holds a run; remove it or pass another --output')
    import timm
    import robustcnn  # noqa: F401  (registers the robust_resnet_* models)
    if not timm.is_model(options.model):
        raise UsageError(f'unknown --model {options.model!r}; see timm.list_models()')
    try:
        import matplotlib  # noqa: F401  (the report's figure; checked before minutes of work, not after)
    except ImportError:
        raise UsageError('the demo draws its report with matplotlib: pip install -e ".[report]"') from None

    data_dir = Path(options.data_dir) if options.data_dir else default_benchmark_dir(options.benchmark)
    ensure_benchmark(options.benchmark, data_dir, workers=options.workers)
    generated = time.perf_counter()

    checkpoint, training = _train(options, data_dir, experiment)
    trained = time.perf_counter()

    payload = _evaluate(options, data_dir, checkpoint)
    evaluated = time.perf_counter()
    payload['demo'] = {
        'benchmark': {'dir': str(data_dir), 'config': options.benchmark.as_dict(), 'class_names': list(CLASS_NAMES),
                      'class_textures': dict(CLASS_TEXTURES)},
        'datasets': {key: {'scored_as': benchmark, 'folder': folder, 'title': title}
                     for key, benchmark, folder, title in DATASETS},
        'summary': {name: value for name, _, value in summary_rows(payload)},
        'shape_bias': shape_bias(payload),
        'training': training,
        'timing': {'generation_seconds': generated - started, 'training_seconds': trained - generated,
                   'evaluation_seconds': evaluated - trained, 'total_seconds': evaluated - started},
        'machine': _machine(),
    }
    report_dir = run_dir
    markdown = atomic_write_text(demo_markdown(payload), report_dir / 'report.md')
    report_json = atomic_write_text(results_to_json(payload), report_dir / 'report.json')
    figure = write_figure(report_dir / 'report.png', figure_payload(payload))
    return DemoOutcome(markdown, report_json, figure, checkpoint, payload)


def build_parser() -> argparse.ArgumentParser:
    from ..config import KeyValueAction

    defaults = DemoOptions()
    parser = argparse.ArgumentParser(
        prog='demo.py', formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description='Train a small Robust-ResNet on the built-in synthetic shape-vs-texture benchmark (generated '
                    'on first use) and evaluate it on clean images, ImageNet-C-style corruptions and '
                    'shape-vs-texture shifts, on a CPU in minutes.')
    parser.add_argument('--model', default=defaults.model, help='any timm model, e.g. resnet18 or '
                        'vit_tiny_patch16_224, to compare on the same benchmark')
    parser.add_argument('--model-kwargs', nargs='*', action=KeyValueAction, default=None, metavar='KEY=VALUE',
                        help='model arguments (default: patch_size=8 kernel_size=7 for Robust-ResNets, img_size/patch_size for ViTs)')
    parser.add_argument('--epochs', type=int, default=defaults.epochs)
    parser.add_argument('--batch-size', type=int, default=defaults.batch_size)
    parser.add_argument('--lr', type=float, default=defaults.lr)
    parser.add_argument('--seed', type=int, default=defaults.seed, help='training seed and benchmark seed')
    parser.add_argument('--workers', type=int, default=None, help='processes for generation and data loading')
    parser.add_argument('--output', default=defaults.output, help='the run folder is OUTPUT/MODEL-seedSEED')
    parser.add_argument('--data-dir', default=None,
                        help='benchmark folder (default: ~/.cache/robustcnn/synthetic-v1-seedSEED, or under '
                             '$ROBUSTCNN_CACHE)')
    sizes = parser.add_argument_group('benchmark size (a different size is a different cached benchmark)')
    for name in ('train_per_class', 'val_per_class', 'shift_per_class', 'corruption_per_class'):
        sizes.add_argument(f'--{name.replace("_", "-")}', type=int, default=getattr(defaults.benchmark, name))
    sizes.add_argument('--texture-correlation', type=float, default=defaults.benchmark.texture_correlation,
                       help='how often a training shape wears its class\'s texture')
    return parser


def options_from_args(args: argparse.Namespace) -> DemoOptions:
    if args.epochs < 1 or args.batch_size < 2:
        raise UsageError(f'--epochs must be >= 1 and --batch-size >= 2, got {args.epochs} and {args.batch_size}')
    try:
        benchmark = SyntheticConfig(
            seed=args.seed, train_per_class=args.train_per_class, val_per_class=args.val_per_class,
            shift_per_class=args.shift_per_class, corruption_per_class=args.corruption_per_class,
            texture_correlation=args.texture_correlation)
    except ValueError as error:
        raise UsageError(str(error)) from None
    return DemoOptions(model=args.model, model_kwargs=args.model_kwargs, epochs=args.epochs,
                       batch_size=args.batch_size, lr=args.lr, seed=args.seed, workers=args.workers,
                       output=args.output, data_dir=args.data_dir, benchmark=benchmark)


def main(argv: Sequence[str] | None = None) -> int:
    from ..cli import setup_logging

    setup_logging(True)
    outcome = run_demo(options_from_args(build_parser().parse_args(argv)))
    sys.stdout.write(demo_markdown(outcome.payload).split('\n---\n')[0])
    sys.stdout.write(f'\nReport: {outcome.report_markdown}\n        {outcome.report_json}\n'
                     f'        {outcome.report_figure}\nModel:  {outcome.checkpoint}\n')
    return 0
