"""The one-command demo: generate the synthetic benchmark, train a small Robust-ResNet on it with the paper's
recipe scaled down to a CPU, evaluate it on clean validation images and every shift, and write the report.

Nothing here trains or evaluates by itself: training is ``train.py``'s library entry point
(:func:`robustcnn.engine.trainer.run_training` on parsed train.py flags) and evaluation is ``validate.py``'s
(:func:`robustcnn.benchmarks.runner.run_validation`), so the demo exercises exactly the code a real run uses.
The synthetic sets are scored under the ImageNet benchmark whose layout and protocol they copy (clean val as
``imagenet``, the corruption tree as ``imagenet-c``, ...); the report, the figure and the log name them by what they
are.

A demo resumes: its run folder keeps ``demo-state.json`` (the options, and each finished phase), so a rerun after a
kill continues where it stopped (the benchmark generation keeps its finished parts, training continues through
train.py's ``--resume auto``, evaluation reruns only if it had not finished) and a rerun of a finished demo prints
its report again. ``--fresh`` moves the old run folder aside (never deletes it) and starts over.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..cli import DefaultsHelpFormatter, OneLineErrorParser, UsageError
from .benchmark import CLASS_NAMES, CLASS_TEXTURES, SyntheticConfig, default_benchmark_dir, ensure_benchmark

__all__ = ['DemoOptions', 'DemoOutcome', 'DATASETS', 'HEADLINES', 'STATE_NAME', 'run_demo', 'build_parser', 'main',
           'training_flags', 'default_model_kwargs', 'headline_values', 'write_demo_figure']

_logger = logging.getLogger(__name__)

DEFAULT_MODEL = 'robust_resnet_dw_nano'
# (key in the results, benchmark validate.py scores it with, folder in the benchmark, name in the report)
DATASETS: tuple[tuple[str, str, str, str], ...] = (
    ('imagenet', 'imagenet', '.', 'clean (val)'),
    ('stylized-imagenet', 'stylized-imagenet', 'stylized', 'stylized (textures swapped)'),
    ('imagenet-sketch', 'imagenet-sketch', 'sketch', 'sketch (outlines)'),
    ('rendition', 'folder', 'rendition', 'rendition (cartoons)'),
    ('imagenet-c', 'imagenet-c', 'corruption', 'synthetic corruptions (15 x 5)'),
)
TEXTURE_KEY = 'stylized-texture'
NUM_CLASSES = len(CLASS_NAMES)
CHANCE = 100.0 / NUM_CLASSES  # top-1 of a guess: the line every accuracy is read against
# The six headline numbers, labelled alike in README.md, report.md and report.png: (key, label).
HEADLINES: tuple[tuple[str, str], ...] = (
    ('clean', 'clean validation'),
    ('stylized', 'stylized (textures swapped between classes)'),
    ('sketch', 'sketch (outlines only)'),
    ('rendition', 'rendition (flat cartoons)'),
    ('corruptions', 'synthetic corruptions, 15 x 5 (100 - mean corruption error)'),
    ('shape_bias', 'shape bias: shape / (shape + texture) decisions on stylized images'),
)
SKETCH_NOTE = ('Sketch is the hardest shift here by design: a 1-2 px pencil line on blank paper has no filled region, '
               'colour or texture, while every training image is a filled, textured shape; rendition keeps the '
               'filled silhouette (in a flat colour), which is why it is much easier.')
STATE_NAME = 'demo-state.json'


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
    threads: int | None = None  # torch threads; None: the usable cores (see Runtime.configure_threads)
    fresh: bool = False  # move an existing run folder aside and start over
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
    from ..engine.runtime import usable_cpu_count
    return 1 if usable_cpu_count() <= 2 else 2


def training_flags(options: DemoOptions, data_dir: Path, experiment: str) -> list[str]:
    """train.py's flags for the demo: the DeiT recipe with every component on, scaled down to a CPU and 64 px.

    Scaled so that a 2-core CPU trains it in minutes (README: 90.8% clean on 2026-12-01): 12 epochs (1 warm-up
    epoch, stepped per epoch: epoch 0 runs at the warm-up lr; stepping per update instead measured far worse on the
    shifted sets, e.g. stylized 63.8% instead of 87.8%, rendition 46.0% instead of 81.8%), RandAugment
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
        '--resume', 'auto',
    ]
    if options.threads is not None:
        flags += ['--threads', str(options.threads)]
    if kwargs:
        flags += ['--model-kwargs', *(f'{key}={json.dumps(value)}' for key, value in kwargs.items())]
    return flags + list(options.extra_train_flags)


def _train(options: DemoOptions, data_dir: Path, experiment: str) -> tuple[Path, dict[str, Any]]:
    """train.py on the benchmark with ``--resume auto``: a killed training continues from its last checkpoint."""
    from ..config import parse_train_args
    from ..engine.trainer import run_training

    flags = training_flags(options, data_dir, experiment)
    args = parse_train_args(flags)
    outcome = run_training(args)
    # from summary.csv, which holds every epoch of a resumed run too (the outcome counts this session's only)
    with (outcome.run_dir / 'summary.csv').open(newline='') as file:
        rows = list(csv.DictReader(file))
    summary = {
        'epochs': len(rows), 'final_val_top1': float(rows[-1]['eval_top1']) if rows else None,
        'best_val_top1': outcome.best_metric, 'best_epoch': outcome.best_epoch, 'run_dir': str(outcome.run_dir),
        'model_kwargs': dict(args.model_kwargs or {}), 'flags': flags[1:],
    }
    return outcome.run_dir / 'last.pth.tar', summary


class _SyntheticNames(logging.Filter):
    """Log the synthetic sets under their own names, not under the ImageNet benchmark that scores them, and leave
    out validate.py's README row (ImageNet's columns, meaningless here)."""

    def __init__(self) -> None:
        super().__init__()
        self.folder_set = 'folder'  # the name of the plain class-folder set being evaluated

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith('README row'):
            return False
        names = {key: title for key, benchmark, _, title in DATASETS if benchmark != 'folder'}
        names = {benchmark: names[key] for key, benchmark, _, _ in DATASETS if key in names}
        names['folder'] = self.folder_set
        if message.startswith('imagenet-c:'):
            record.msg = names['imagenet-c'] + message[len('imagenet-c'):]
        elif message.startswith('%s:') and record.args and isinstance(record.args, tuple) and record.args[0] in names:
            record.args = (names[record.args[0]],) + record.args[1:]
        return True


def _evaluate(options: DemoOptions, data_dir: Path, checkpoint: Path) -> dict[str, Any]:
    """validate.py's suite on the synthetic sets (model loaded once), then the plain class-folder set.

    The stylized images go through the model once, scored against their shapes (the ``stylized-imagenet`` entry)
    and, from the same predictions, against the textures they wear (:data:`TEXTURE_KEY`): see synthetic/stylized.py.
    """
    from ..benchmarks.runner import ValidationRequest, run_validation
    from ..engine.runtime import init_runtime
    from .stylized import TEXTURE_LABELS_FIELD, SyntheticStylized

    workers = _loader_workers(options)
    common = dict(checkpoint=str(checkpoint), batch_size=256, workers=workers, log_freq=0)
    suite = {key: data_dir / folder for key, benchmark, folder, _ in DATASETS if benchmark != 'folder'}
    runtime = init_runtime('cpu')
    runtime.configure_threads(options.threads)
    names = _SyntheticNames()
    # the runner and the set modules that log per set (each set logs its own lines since the sets score themselves)
    loggers = [logging.getLogger(f'robustcnn.benchmarks.{module}') for module in ('runner', 'base', 'imagenet_c')]
    loggers.append(logging.getLogger('robustcnn.synthetic.stylized'))
    for logger in loggers:
        logger.addFilter(names)
    try:
        with runtime.session():
            payload = run_validation(ValidationRequest(
                data_dir=str(data_dir), suite=True, suite_datasets=list(suite), dataset_dirs={
                    name: str(path) for name, path in suite.items()}, **common), runtime,
                benchmarks={SyntheticStylized.name: SyntheticStylized()})
            by_texture = payload['results'][SyntheticStylized.name].pop(TEXTURE_LABELS_FIELD)
            names.folder_set = next(title for key, _, _, title in DATASETS if key == 'rendition')
            single = run_validation(ValidationRequest(data_dir=str(data_dir / 'rendition'), dataset='folder',
                                                      **common), runtime)
            payload['results']['rendition'] = single['results']['folder']
            payload['results'][TEXTURE_KEY] = by_texture
    finally:
        for logger in loggers:
            logger.removeFilter(names)
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


def headline_values(payload: Mapping[str, Any]) -> dict[str, float | None]:
    """The six headline numbers (keys of :data:`HEADLINES`), percent."""
    results = payload.get('results', {})
    corruption_error = results.get('imagenet-c', {}).get('mean_corruption_error')
    return {
        'clean': results.get('imagenet', {}).get('top1'),
        'stylized': results.get('stylized-imagenet', {}).get('top1'),
        'sketch': results.get('imagenet-sketch', {}).get('top1'),
        'rendition': results.get('rendition', {}).get('top1'),
        'corruptions': None if corruption_error is None else 100.0 - corruption_error,
        'shape_bias': shape_bias(payload),
    }


def summary_rows(payload: Mapping[str, Any]) -> list[tuple[str, float | None]]:
    """(label, value) of the report's headline table, in the order of :data:`HEADLINES`."""
    values = headline_values(payload)
    return [(label, values[key]) for key, label in HEADLINES]


def _format(value: float | None) -> str:
    return '–' if value is None or not math.isfinite(value) else f'{value:.1f}'


def demo_markdown(payload: Mapping[str, Any]) -> str:
    """The report: the headline table, what the sets are, then validate.py's own report of the same numbers."""
    from ..report import results_to_markdown

    demo = payload['demo']
    timing = demo['timing']
    texture = payload.get('results', {}).get(TEXTURE_KEY, {}).get('top1')
    lines = [f'# Synthetic robustness benchmark: `{payload["model"]}`', '',
             f'{NUM_CLASSES} shape classes at {demo["benchmark"]["config"]["image_size"]} px; texture matches '
             f'the class in {100 * demo["benchmark"]["config"]["texture_correlation"]:.0f}% of training images, '
             f'shape in all of them. Percent; higher is better; chance (a guess among {NUM_CLASSES} classes) is '
             f'{CHANCE:.0f}% top-1, and 50% shape bias.', '',
             '| set | top-1 (%) |', '|---|---:|']
    lines += [f'| {label} | {_format(value)} |' for label, value in summary_rows(payload)]
    resumed = (f' This run was resumed {demo["sessions"] - 1} time(s); each phase\'s time is that of the session '
               f'that finished it.' if demo.get('sessions', 1) > 1 else '')
    lines += ['', f'Shape bias is not an accuracy: of the stylized images classified either by their shape or by '
                  f'their texture, the share classified by shape. Texture decisions (stylized images classified as '
                  f'the class whose texture they wear): {_format(texture)}%. {SKETCH_NOTE}', '',
              f'Time: {timing["total_seconds"]:.0f} s in all (generation {timing["generation_seconds"]:.0f} s, '
              f'training {timing["training_seconds"]:.0f} s, evaluation {timing["evaluation_seconds"]:.0f} s) '
              f'on {demo["machine"]}.{resumed} Checkpoint: `{payload["checkpoint"]}`.', '',
              'Sets: clean = `val/`; stylized = val shapes wearing another class\'s texture; sketch = outlines; '
              'rendition = flat cartoons; synthetic corruptions = our 64 px re-creation of ImageNet-C\'s 15 '
              'corruptions x 5 severities, applied to val images (`corruption/`; not ImageNet-C itself). The '
              'stylized images go through the model once; its decisions are scored against their shape (the '
              'label) and against the class whose texture they wear.', '',
              '---', '',
              'The same numbers as `validate.py` reports them. Each synthetic set is scored as the ImageNet set whose '
              'layout and protocol it copies, so its tables use those names: `imagenet` is the clean synthetic '
              'val, `imagenet-c` the synthetic corruptions, `stylized-texture` the stylized decisions scored '
              'against the textures (the same predictions as `stylized-imagenet`). mCE and '
              'relative mCE are left out, since they are relative to AlexNet\'s errors on the *real* ImageNet-C, '
              'which exist for the 1000 ImageNet classes only:', '']
    report = results_to_markdown({key: value for key, value in payload.items() if key != 'demo'})
    lines += [line.replace('# Evaluation of', '## Evaluation of', 1) if line.startswith('# ') else
              line.replace('## ', '### ', 1) if line.startswith('## ') else line for line in report.splitlines()]
    return '\n'.join(lines) + '\n'


def write_demo_figure(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """report.png: the synthetic corruptions' error heat map, and the six headline numbers as bars (the same labels
    as report.md), accuracies against the 10% chance line and shape bias apart from them (it is a ratio)."""
    from ..report import FigureBar, write_figure

    values = headline_values(payload)
    bars = [FigureBar(label, values[key], 'ratio' if key == 'shape_bias' else 'accuracy')
            for key, label in HEADLINES if values[key] is not None]
    corruption = payload.get('results', {}).get('imagenet-c')
    return write_figure(
        path, {'model': payload['model'], 'results': {'imagenet-c': corruption} if corruption else {}},
        bars=bars, chance=CHANCE, chance_label=f'chance ({NUM_CLASSES} classes)',
        bar_title=f'{payload["model"]} on the synthetic benchmark (percent)',
        corruption_title='Synthetic corruptions (ImageNet-C-style, 64 px): top-1 error (%)')


def _machine() -> str:
    import platform
    from ..engine.runtime import usable_cpu_count
    return f'{platform.machine()} CPU, {usable_cpu_count()} usable cores, {time.strftime("%Y-%m-%d")}'


def _options_record(options: DemoOptions) -> dict[str, Any]:
    """What decides a demo's results: a rerun with other values is another demo, not a continuation."""
    return {'model': options.model, 'model_kwargs': None if options.model_kwargs is None else dict(
        options.model_kwargs), 'epochs': options.epochs, 'batch_size': options.batch_size, 'lr': options.lr,
            'seed': options.seed, 'benchmark': options.benchmark.as_dict(),
            'extra_train_flags': list(options.extra_train_flags)}


def _read_state(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / STATE_NAME
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError) as error:
        raise UsageError(f'{path} is unreadable ({error}); pass --fresh to start over (the run folder is moved '
                         f'aside)') from None
    if not isinstance(state, dict) or not isinstance(state.get('options'), dict):
        raise UsageError(f'{path} is not a demo state file; pass --fresh to start over (the run folder is moved '
                         f'aside)')
    return state


def _write_state(run_dir: Path, state: Mapping[str, Any]) -> None:
    from ..atomic import atomic_write_text
    atomic_write_text(json.dumps(state, indent=1, default=str) + '\n', run_dir / STATE_NAME)


def _move_aside(run_dir: Path) -> Path:
    """Rename the run folder to ``NAME.old-YYYYmmdd-HHMMSS[-N]`` beside it: --fresh never deletes results."""
    stamp = time.strftime('%Y%m%d-%H%M%S')
    target = run_dir.with_name(f'{run_dir.name}.old-{stamp}')
    counter = 1
    while target.exists():
        counter += 1
        target = run_dir.with_name(f'{run_dir.name}.old-{stamp}-{counter}')
    os.rename(run_dir, target)
    return target


def _check_run_folder(options: DemoOptions, run_dir: Path) -> dict[str, Any] | None:
    """The state of the demo in ``run_dir`` to continue (None: start one), or a one-line error when the folder
    holds something else. With ``--fresh`` an existing folder is moved aside first."""
    if options.fresh and run_dir.exists():
        moved = _move_aside(run_dir)
        _logger.info('--fresh: moved the previous run %s aside to %s', run_dir, moved)
        return None
    state = _read_state(run_dir)
    if state is None:
        if run_dir.is_dir() and any(run_dir.iterdir()):
            raise UsageError(f'{run_dir} already holds files that are not a demo run (no {STATE_NAME}); pass --fresh '
                             f'to move it aside and start over, or another --output')
        return None
    recorded, wanted = state['options'], _options_record(options)
    if recorded != wanted:
        changed = ', '.join(f'{key} {recorded.get(key)!r} -> {value!r}' for key, value in wanted.items()
                            if recorded.get(key) != value)
        raise UsageError(f'{run_dir} holds a demo run with other options ({changed}); rerun with its options to '
                         f'continue it, --fresh to move it aside and start over, or another --output')
    return state


def _load_outcome(run_dir: Path, state: Mapping[str, Any]) -> DemoOutcome:
    payload = json.loads((run_dir / 'report.json').read_text(encoding='utf-8'))
    return DemoOutcome(run_dir / 'report.md', run_dir / 'report.json', run_dir / 'report.png',
                       Path(payload['checkpoint']), payload)


def run_demo(options: DemoOptions) -> DemoOutcome:
    """Generate (if needed), train, evaluate, report; continue a killed demo, or return a finished one's report."""
    from ..report import results_to_json

    experiment = f'{options.model.replace("/", "_")}-seed{options.seed}'
    run_dir = Path(options.output) / experiment
    state = _check_run_folder(options, run_dir)
    if state is not None and state.get('finished') and (run_dir / 'report.json').is_file():
        _logger.info('%s holds a finished demo; its report again (--fresh to run it anew)', run_dir)
        return _load_outcome(run_dir, state)
    import timm
    import robustcnn  # noqa: F401  (registers the robust_resnet_* models)
    if not timm.is_model(options.model):
        raise UsageError(f'unknown --model {options.model!r}; see timm.list_models()')
    try:
        import matplotlib  # noqa: F401  (the report's figure; checked before minutes of work, not after)
    except ImportError:
        raise UsageError('the demo draws its report with matplotlib: pip install -e ".[report]"') from None

    if state is None:
        state = {'options': _options_record(options), 'timing': {}, 'sessions': 0}
    else:
        _logger.info('continuing the demo in %s (finished so far: %s)', run_dir,
                     ', '.join(state['timing']) or 'nothing')
    state['sessions'] = state.get('sessions', 0) + 1
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_state(run_dir, state)
    timing = state['timing']

    started = time.perf_counter()
    data_dir = Path(options.data_dir) if options.data_dir else default_benchmark_dir(options.benchmark)
    ensure_benchmark(options.benchmark, data_dir, workers=options.workers)
    timing.setdefault('generation_seconds', time.perf_counter() - started)
    _write_state(run_dir, state)

    if options.threads is None:  # chosen after the generation's processes are gone, from the cores left idle
        from ..engine.runtime import cpu_threads
        threads, reason = cpu_threads(adapt_to_load=True)
        _logger.info('demo: %d torch thread(s) for training and evaluation (%s; --threads to choose)', threads, reason)
        options = dataclasses.replace(options, threads=threads)
    if 'training' not in state:
        started = time.perf_counter()
        checkpoint, training = _train(options, data_dir, experiment)
        state['training'], state['checkpoint'] = training, str(checkpoint)
        timing['training_seconds'] = time.perf_counter() - started
        _write_state(run_dir, state)
    checkpoint = Path(state['checkpoint'])

    started = time.perf_counter()
    payload = _evaluate(options, data_dir, checkpoint)
    timing['evaluation_seconds'] = time.perf_counter() - started
    timing['total_seconds'] = sum(timing[f'{phase}_seconds'] for phase in ('generation', 'training', 'evaluation'))
    payload['demo'] = {
        'benchmark': {'dir': str(data_dir), 'config': options.benchmark.as_dict(), 'class_names': list(CLASS_NAMES),
                      'class_textures': dict(CLASS_TEXTURES)},
        'datasets': {key: {'scored_as': benchmark, 'folder': folder, 'title': title}
                     for key, benchmark, folder, title in DATASETS},
        'summary': {label: headline_values(payload)[key] for key, label in HEADLINES},
        'shape_bias': shape_bias(payload),
        'chance_top1': CHANCE,
        'training': state['training'],
        'timing': dict(timing),
        'sessions': state['sessions'],
        'machine': _machine(),
    }
    from ..atomic import atomic_write_text
    markdown = atomic_write_text(demo_markdown(payload), run_dir / 'report.md')
    figure = write_demo_figure(run_dir / 'report.png', payload)
    report_json = atomic_write_text(results_to_json(payload), run_dir / 'report.json')
    state['finished'] = True
    _write_state(run_dir, state)
    return DemoOutcome(markdown, report_json, figure, checkpoint, payload)


def build_parser(prog: str = 'demo.py') -> argparse.ArgumentParser:
    from ..config import KeyValueAction

    defaults = DemoOptions()
    parser = OneLineErrorParser(
        prog=prog, formatter_class=DefaultsHelpFormatter,
        description='Train a small Robust-ResNet on the built-in synthetic shape-vs-texture benchmark (generated '
                    'on first use) and evaluate it on clean images, synthetic ImageNet-C-style corruptions and '
                    'shape-vs-texture shifts, on a CPU in minutes. A rerun continues a killed demo, or prints a '
                    'finished one\'s report again.')
    parser.add_argument('--model', default=defaults.model, help='any timm model, e.g. resnet18 or '
                        'vit_tiny_patch16_224, to compare on the same benchmark')
    parser.add_argument('--model-kwargs', nargs='*', action=KeyValueAction, default=None, metavar='KEY=VALUE',
                        help='model arguments (default: patch_size=8 kernel_size=7 for Robust-ResNets, '
                             'img_size/patch_size for ViTs)')
    parser.add_argument('--epochs', type=int, default=defaults.epochs, help='training epochs')
    parser.add_argument('--batch-size', type=int, default=defaults.batch_size, help='training batch size')
    parser.add_argument('--lr', type=float, default=defaults.lr, help='peak learning rate (AdamW, cosine)')
    parser.add_argument('--seed', type=int, default=defaults.seed, help='training seed and benchmark seed')
    parser.add_argument('--workers', type=int, default=None, metavar='N',
                        help='processes for generation and data loading (default: generation on every usable core, '
                             '1 loader process on up to 2 cores, else 2)')
    parser.add_argument('--threads', type=int, default=None, metavar='N',
                        help='torch threads (default: the usable cores: CPU affinity and cgroup quota)')
    parser.add_argument('--output', default=defaults.output, help='the run folder is OUTPUT/MODEL-seedSEED')
    parser.add_argument('--fresh', action='store_true',
                        help='start over: move an existing run folder aside (to NAME.old-DATE) instead of continuing '
                             'it')
    parser.add_argument('--data-dir', default=None,
                        help='benchmark folder (default: ~/.cache/robustcnn/synthetic-v1-seedSEED, or under '
                             '$ROBUSTCNN_CACHE)')
    sizes = parser.add_argument_group('benchmark size (a different size is a different cached benchmark)')
    for name in ('train_per_class', 'val_per_class', 'shift_per_class', 'corruption_per_class'):
        sizes.add_argument(f'--{name.replace("_", "-")}', type=int, default=getattr(defaults.benchmark, name),
                           help=f'{name.split("_")[0]} images per class')
    sizes.add_argument('--texture-correlation', type=float, default=defaults.benchmark.texture_correlation,
                       help='how often a training shape wears its class\'s texture')
    return parser


def options_from_args(args: argparse.Namespace) -> DemoOptions:
    if args.epochs < 1 or args.batch_size < 2:
        raise UsageError(f'--epochs must be >= 1 and --batch-size >= 2, got {args.epochs} and {args.batch_size}')
    for flag in ('workers', 'threads'):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == 'workers' else 1):
            raise UsageError(f'--{flag} must be at least {0 if flag == "workers" else 1}, got {value}')
    try:
        benchmark = SyntheticConfig(
            seed=args.seed, train_per_class=args.train_per_class, val_per_class=args.val_per_class,
            shift_per_class=args.shift_per_class, corruption_per_class=args.corruption_per_class,
            texture_correlation=args.texture_correlation)
    except ValueError as error:
        raise UsageError(str(error)) from None
    return DemoOptions(model=args.model, model_kwargs=args.model_kwargs, epochs=args.epochs,
                       batch_size=args.batch_size, lr=args.lr, seed=args.seed, workers=args.workers,
                       threads=args.threads, fresh=args.fresh, output=args.output, data_dir=args.data_dir,
                       benchmark=benchmark)


def main(argv: Sequence[str] | None = None, prog: str = 'demo.py') -> int:
    from ..cli import setup_logging

    options = options_from_args(build_parser(prog).parse_args(argv))
    setup_logging(True)
    outcome = run_demo(options)
    sys.stdout.write(demo_markdown(outcome.payload).split('\n---\n')[0])
    sys.stdout.write(f'\nReport: {outcome.report_markdown}\n        {outcome.report_json}\n'
                     f'        {outcome.report_figure}\nModel:  {outcome.checkpoint}\n')
    return 0
