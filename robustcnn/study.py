"""The paper's question in one command: train a grid of models and design knobs with one recipe on one benchmark,
evaluate every run on every shift the data has, and tabulate clean vs out-of-distribution accuracy over seeds.

    python scripts/study.py --models resnet_ablation_nano --vary kernel_size=3,7 --seeds 0,1 --epochs 4

The grid is ``--models`` x the product of the ``--vary KWARG=V1,V2`` lists x ``--seeds``. Every run is trained and
evaluated by the library code of ``train.py`` and ``validate.py``: on the built-in synthetic benchmark (the
default, or a ``--data-dir`` holding one) each run *is* a demo run (:func:`robustcnn.synthetic.demo.run_demo`,
the same recipe, shifts and report); on any other ``--data-dir`` (``train/``, ``val/`` and out-of-distribution
folders named as ``validate.py --suite`` finds them) a run trains with the demo's recipe flags and is evaluated by
the suite. The seed varies the training only; the data are the same for every run.

Each run has its own folder ``OUTPUT/runs/NAME/`` whose ``run.json`` (written last, atomically) holds the record:
a killed study started again skips the runs that have one and redoes only the unfinished run. ``study.md``,
``study.json`` and ``study.png`` are rebuilt from those records alone (``--report-only`` does only that).
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import math
import re
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .atomic import atomic_write_bytes, atomic_write_text
from .cli import OneLineErrorParser, UsageError
from .faults import kill_point
from .report import results_to_json

__all__ = ['StudyOptions', 'Cell', 'parse_vary', 'parse_seeds', 'plan_cells', 'run_study', 'build_report',
           'study_markdown', 'write_study_figure', 'build_parser', 'main']

_logger = logging.getLogger(__name__)

RECORD_NAME = 'run.json'
CLEAN_KEY = 'imagenet'
SHAPE_BIAS_KEY = 'shape-bias'
# Model arguments the study sets itself (from the data, or the recipe); varying them would break the comparison.
RESERVED_KWARGS = ('num_classes', 'pretrained', 'drop_rate', 'drop_path_rate', 'in_chans', 'img_size')


@dataclass
class StudyOptions:
    """What the study's command line sets; the recipe fields are the demo's (same defaults)."""

    models: Sequence[str] = ()
    vary: Sequence[tuple[str, Sequence[Any]]] = ()
    seeds: Sequence[int] = (0,)
    data_dir: str | None = None
    epochs: int = 12
    img_size: int | None = None
    batch_size: int = 64
    lr: float = 3e-3
    workers: int | None = None
    output: str = './output/study'
    benchmark_sizes: Mapping[str, int] = field(default_factory=dict)  # synthetic benchmark sizes (default only)
    report_only: bool = False


@dataclass(frozen=True)
class Cell:
    """One configuration of the grid: a model and the varied arguments it takes (seeds are the cell's runs)."""

    model: str
    kwargs: tuple[tuple[str, Any], ...]  # the varied arguments, in --vary order
    model_kwargs: tuple[tuple[str, Any], ...]  # everything passed to the model (64 px defaults + varied)
    params: int
    macs: int

    def run_name(self, seed: int) -> str:
        parts = [self.model] + [f'{key}={_value_text(value)}' for key, value in self.kwargs]
        name = re.sub(r'[^A-Za-z0-9_.=+,-]', '_', '-'.join(parts))
        if len(name) > 180:  # file systems allow 255 bytes a name: keep a readable start and a digest of the rest
            name = f'{name[:160]}-{hashlib.sha256(name.encode()).hexdigest()[:12]}'
        return f'{name}-seed{seed}'


def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(',', ':'))


# ---------------------------------------------------------------------------------------------------- arguments

def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets, so ``depths=[1,1,2,1],[2,2,2,2]`` gives two lists."""
    parts, depth, current = [], 0, ''
    for character in text:
        if character in '[(':
            depth += 1
        elif character in '])':
            depth -= 1
        if character == ',' and depth == 0:
            parts.append(current)
            current = ''
        else:
            current += character
    parts.append(current)
    return parts


def parse_vary(items: Sequence[str]) -> list[tuple[str, list[Any]]]:
    """``['kernel_size=3,7', 'activations=all,one']`` -> ``[('kernel_size', [3, 7]), ('activations', [...])]``.

    Values are YAML scalars as in ``--model-kwargs`` (numbers, booleans, ``[1,2]`` lists, else strings).
    """
    import yaml

    knobs: list[tuple[str, list[Any]]] = []
    for item in items:
        key, equals, text = item.partition('=')
        key = key.strip()
        if not equals or not key.isidentifier():
            raise UsageError(f'--vary {item!r}: expected KWARG=VALUE1,VALUE2 (a model argument name, "=", values)')
        if key in RESERVED_KWARGS:
            raise UsageError(f'--vary {key}: the study sets {key} itself (from the data or the recipe)')
        if any(key == known for known, _ in knobs):
            raise UsageError(f'--vary {key} is given twice; list all its values in one --vary {key}=V1,V2')
        values = []
        for part in _split_top_level(text):
            if not part.strip():
                raise UsageError(f'--vary {item!r}: empty value (values are separated by single commas)')
            try:
                value = yaml.safe_load(part)
            except yaml.YAMLError:
                raise UsageError(f'--vary {item!r}: cannot read the value {part!r}') from None
            values.append(tuple(value) if isinstance(value, list) else value)
        if len(set(map(repr, values))) != len(values):
            raise UsageError(f'--vary {item!r}: a value is listed twice')
        knobs.append((key, values))
    return knobs


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(',')]
    except ValueError:
        raise UsageError(f'--seeds {text!r}: expected integers separated by commas, e.g. 0,1,2') from None
    if any(seed < 0 for seed in seeds) or len(set(seeds)) != len(seeds):
        raise UsageError(f'--seeds {text!r}: seeds must be distinct and 0 or more')
    return seeds


# ---------------------------------------------------------------------------------------------------- the data

@dataclass
class DataPlan:
    """Which data the runs use: the synthetic benchmark (config known) or a train/val folder with OOD folders."""

    data_dir: Path
    image_size: int
    num_classes: int
    synthetic: Any | None  # SyntheticConfig when the data are the synthetic benchmark

    def describe(self) -> dict[str, Any]:
        return {'data_dir': str(self.data_dir.resolve()), 'image_size': self.image_size,
                'num_classes': self.num_classes,
                'synthetic': self.synthetic.as_dict() if self.synthetic is not None else None}


def plan_data(options: StudyOptions) -> DataPlan:
    """The data folder and its kind, checked before anything is trained (generated later if synthetic)."""
    from .synthetic.benchmark import CLASS_NAMES, SyntheticConfig, default_benchmark_dir, read_manifest

    if options.data_dir is None or read_manifest(options.data_dir) is not None:
        if options.data_dir is None:
            sizes = dict(options.benchmark_sizes)
            if options.img_size is not None:
                sizes['image_size'] = options.img_size
            try:
                config = SyntheticConfig(**sizes)
            except ValueError as error:
                raise UsageError(str(error)) from None
            data_dir = default_benchmark_dir(config)
        else:
            manifest = read_manifest(options.data_dir)
            assert manifest is not None
            config = SyntheticConfig(**manifest['config'])
            data_dir = Path(options.data_dir)
            if options.img_size is not None and options.img_size != config.image_size:
                raise UsageError(f'--img-size {options.img_size}: the synthetic benchmark in {data_dir} has '
                                 f'{config.image_size} px images; drop --img-size or generate another benchmark')
        return DataPlan(data_dir, config.image_size, len(CLASS_NAMES), config)
    data_dir = Path(options.data_dir)
    missing = [name for name in ('train', 'val') if not (data_dir / name).is_dir()]
    if missing:
        raise UsageError(f'--data-dir {data_dir}: no {" or ".join(missing)}/ folder; a study needs train/ and val/ '
                         f'(plus out-of-distribution folders as validate.py --suite names them), or leave --data-dir '
                         f'out for the synthetic benchmark')
    classes = [entry for entry in (data_dir / 'train').iterdir() if entry.is_dir() and not entry.name.startswith('.')]
    if len(classes) < 2:
        raise UsageError(f'--data-dir {data_dir}: train/ needs at least two class folders, found {len(classes)}')
    return DataPlan(data_dir, options.img_size or 64, len(classes), None)


# ---------------------------------------------------------------------------------------------------- the grid

def _create(model: str, kwargs: Mapping[str, Any], num_classes: int) -> Any:
    import timm
    import torch

    with torch.device('meta'):  # no memory, no init cost: only the architecture is wanted here
        return timm.create_model(model, num_classes=num_classes, **kwargs)


def _count(model: Any, image_size: int) -> tuple[int, int]:
    """Parameters, and multiply-accumulates of one image (torch's FLOP counter, convs and matmuls, / 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(parameter.numel() for parameter in model.parameters())
    with torch.device('meta'), FlopCounterMode(display=False) as counter:
        model.eval()(torch.empty(1, 3, image_size, image_size))
    return params, counter.get_total_flops() // 2


def _unexpected_keyword(error: TypeError, key: str) -> bool:
    return 'unexpected keyword argument' in str(error) and repr(key) in str(error)


def plan_cells(models: Sequence[str], knobs: Sequence[tuple[str, Sequence[Any]]], image_size: int,
               num_classes: int) -> list[Cell]:
    """Every configuration of the grid, built once on the meta device: an unknown model, a knob no model takes or
    a value a model rejects is a one-line error here, before any training.

    A model that does not take a knob (``resnet18`` has no ``kernel_size``) is run once per combination of the knobs
    it does take, as a reference row; a knob that none of the models takes is an error (a typo, most likely).
    """
    import timm

    import robustcnn  # noqa: F401  (registers the robust_resnet_* and resnet_ablation_* models)
    from .synthetic.demo import default_model_kwargs

    for model in models:
        if not timm.is_model(model):
            close = timm.list_models(f'*{model.split("_")[0]}*')[:5]
            raise UsageError(f'unknown model {model!r} in --models' + (f'; similar: {", ".join(close)}' if close
                                                                      else '; see timm.list_models()'))
    accepted: dict[str, list[str]] = {model: [] for model in models}
    for key, values in knobs:
        for model in models:
            base = default_model_kwargs(model, image_size)
            try:
                _create(model, {**base, key: values[0]}, num_classes)
            except TypeError as error:
                if _unexpected_keyword(error, key):
                    continue
            except Exception:  # noqa: BLE001  (a value problem: reported with the cell below)
                pass
            accepted[model].append(key)
        if not any(key in keys for keys in accepted.values()):
            raise UsageError(f'--vary {key}: none of the models ({", ".join(models)}) takes an argument {key!r}')
    cells: list[Cell] = []
    for model in models:
        base = default_model_kwargs(model, image_size)
        taken = [(key, values) for key, values in knobs if key in accepted[model]]
        skipped = [key for key, _ in knobs if key not in accepted[model]]
        if skipped:
            _logger.info('study: %s takes no %s; it runs once per value of the other knobs', model, ', '.join(skipped))
        for combination in itertools.product(*(values for _, values in taken)):
            varied = tuple((key, value) for (key, _), value in zip(taken, combination))
            full = {**base, **{key: list(value) if isinstance(value, tuple) else value for key, value in varied}}
            try:
                params, macs = _count(_create(model, full, num_classes), image_size)
            except Exception as error:  # noqa: BLE001  (any constructor or shape error: the user's configuration)
                message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise UsageError(f'{model} with {_kwargs_text(varied) or "its defaults"} cannot be built at '
                                 f'{image_size} px: {message}') from None
            cells.append(Cell(model, varied, tuple(full.items()), params, macs))
    return cells


def _kwargs_text(kwargs: Sequence[tuple[str, Any]] | Mapping[str, Any]) -> str:
    items = kwargs.items() if isinstance(kwargs, Mapping) else kwargs
    return ' '.join(f'{key}={_value_text(value)}' for key, value in items)


# ---------------------------------------------------------------------------------------------------- one run

def _recipe(options: StudyOptions, data: DataPlan) -> dict[str, Any]:
    """What every run shares; a study folder holds runs of one recipe only."""
    return {'epochs': options.epochs, 'batch_size': options.batch_size, 'lr': options.lr, **data.describe()}


def _demo_options(options: StudyOptions, data: DataPlan, cell: Cell, seed: int, run_dir: Path) -> Any:
    from .synthetic.benchmark import SyntheticConfig
    from .synthetic.demo import DemoOptions

    # a generic folder borrows the benchmark config only to carry the image size into the demo's recipe flags
    benchmark = data.synthetic if data.synthetic is not None else SyntheticConfig(image_size=data.image_size)
    return DemoOptions(model=cell.model, model_kwargs=dict(cell.model_kwargs), epochs=options.epochs,
                       batch_size=options.batch_size, lr=options.lr, seed=seed, workers=options.workers,
                       output=str(run_dir), data_dir=str(data.data_dir), benchmark=benchmark)


def scores(results: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    """Accuracy per evaluated set, percent: top-1, and for ImageNet-C 100 - mean corruption error."""
    out: dict[str, float | None] = {}
    for name, entry in results.items():
        value = 100.0 - entry['mean_corruption_error'] if name == 'imagenet-c' and entry.get(
            'mean_corruption_error') is not None else entry.get('top1')
        out[name] = float(value) if value is not None and math.isfinite(value) else None
    return out


def _run_synthetic(options: StudyOptions, data: DataPlan, cell: Cell, seed: int, run_dir: Path) -> dict[str, Any]:
    from .synthetic.demo import DATASETS, TEXTURE_KEY, run_demo, shape_bias

    outcome = run_demo(_demo_options(options, data, cell, seed, run_dir))
    results = scores(outcome.payload['results'])
    results[SHAPE_BIAS_KEY] = shape_bias(outcome.payload)
    titles = {key: title for key, _, _, title in DATASETS}
    titles.update({TEXTURE_KEY: 'stylized: texture decisions', SHAPE_BIAS_KEY: 'shape bias'})
    return {'results': results, 'titles': {key: titles.get(key, key) for key in results},
            'report': str(outcome.report_json), 'checkpoint': str(outcome.checkpoint),
            'shifts': [key for key, *_ in DATASETS if key != CLEAN_KEY]}


def _run_folder(options: StudyOptions, data: DataPlan, cell: Cell, seed: int, run_dir: Path) -> dict[str, Any]:
    from .benchmarks.runner import ValidationRequest, run_validation
    from .config import parse_train_args
    from .engine.runtime import init_runtime
    from .engine.trainer import run_training
    from .synthetic.demo import training_flags

    demo_options = _demo_options(options, data, cell, seed, run_dir)
    outcome = run_training(parse_train_args(training_flags(demo_options, data.data_dir, 'train')))
    checkpoint = outcome.run_dir / 'last.pth.tar'
    results_file = run_dir / 'results.json'
    runtime = init_runtime('cpu')
    with runtime.session():
        payload = run_validation(ValidationRequest(
            data_dir=str(data.data_dir), suite=True, dataset_dirs={CLEAN_KEY: str(data.data_dir / 'val')},
            checkpoint=str(checkpoint), batch_size=256, workers=options.workers, log_freq=0,
            results_file=str(results_file)), runtime)
    results = scores(payload['results'])
    titles = {key: 'clean (val)' if key == CLEAN_KEY else key for key in results}
    return {'results': results, 'titles': titles, 'report': str(results_file),
            'checkpoint': str(checkpoint), 'shifts': [key for key in results if key != CLEAN_KEY]}


def _run_one(options: StudyOptions, data: DataPlan, cell: Cell, seed: int, run_dir: Path,
             recipe: Mapping[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    run = _run_synthetic if data.synthetic is not None else _run_folder
    outcome = run(options, data, cell, seed, run_dir)
    record = {
        'name': run_dir.name, 'model': cell.model, 'kwargs': dict(cell.kwargs),
        'model_kwargs': dict(cell.model_kwargs), 'seed': seed, 'params': cell.params, 'macs': cell.macs,
        **outcome, 'seconds': round(time.perf_counter() - started, 1), 'recipe': dict(recipe),
    }
    atomic_write_text(results_to_json(record), run_dir / RECORD_NAME)  # floats to 4 decimals, as results files
    return record


def read_records(output: Path) -> list[dict[str, Any]]:
    """Every finished run's record under ``OUTPUT/runs/`` (the report's only input)."""
    runs = output / 'runs'
    if not runs.is_dir():
        return []
    records = []
    for path in sorted(runs.glob(f'*/{RECORD_NAME}')):
        try:
            records.append(json.loads(path.read_text(encoding='utf-8')))
        except (OSError, ValueError) as error:
            raise UsageError(f'{path} is not a readable run record ({error}); delete its folder to redo the run') \
                from None
    return records


# ---------------------------------------------------------------------------------------------------- the report

def _mean_spread(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _natural_order(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """Runs by model, then kwargs with numbers compared as numbers (kernel 3 before 11), then seed."""
    values = tuple((0, float(value), '') if isinstance(value, (int, float)) else (1, 0.0, _value_text(value))
                   for value in record['kwargs'].values())
    return record['model'], tuple(record['kwargs']), values, record['seed']


def build_report(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The study payload: the runs as recorded, and per cell (model + kwargs) the mean and spread over seeds."""
    records = sorted(records, key=_natural_order)
    columns: list[str] = []
    titles: dict[str, str] = {}
    shifts: list[str] = []
    for record in records:
        for key in record['results']:
            if key not in columns:
                columns.append(key)
        titles.update(record.get('titles', {}))
        shifts += [key for key in record.get('shifts', []) if key not in shifts]
    order = [CLEAN_KEY] + shifts + columns  # clean first, then the shifts, then what is derived from them
    columns.sort(key=order.index)
    cells: dict[str, dict[str, Any]] = {}
    for record in records:
        identity = json.dumps([record['model'], record['kwargs']], sort_keys=True, default=list)
        cell = cells.setdefault(identity, {'model': record['model'], 'kwargs': record['kwargs'],
                                           'params': record['params'], 'macs': record['macs'], 'seeds': [],
                                           'runs': []})
        cell['seeds'].append(record['seed'])
        cell['runs'].append(record['name'])
    for cell in cells.values():
        members = [record for record in records if record['name'] in cell['runs']]
        cell['mean'], cell['std'] = {}, {}
        for key in columns:
            values = [record['results'][key] for record in members if record['results'].get(key) is not None]
            cell['mean'][key], cell['std'][key] = _mean_spread(values)
    knobs: list[str] = []
    for record in records:
        knobs += [key for key in record['kwargs'] if key not in knobs]
    return {'columns': columns, 'titles': {key: titles.get(key, key) for key in columns}, 'shifts': shifts,
            'knobs': knobs, 'cells': list(cells.values()), 'runs': list(records),
            'recipe': records[0]['recipe'] if records else None}


def _number(value: float | None, digits: int = 1) -> str:
    return '–' if value is None else f'{value:.{digits}f}'


def study_markdown(report: Mapping[str, Any]) -> str:
    columns, titles = report['columns'], report['titles']
    recipe = report.get('recipe') or {}
    lines = ['# Study: clean vs out-of-distribution accuracy', '',
             f'Top-1 accuracy in percent (corruptions: 100 - mean corruption error; shape bias: shape / (shape + '
             f'texture) decisions), mean ± standard deviation over the seeds of each configuration; MACs of one image '
             f'(convolutions and matrix products). Recipe: '
             f'{recipe.get("epochs")} epochs, batch {recipe.get("batch_size")}, lr {recipe.get("lr")}, '
             f'{recipe.get("image_size")} px, data `{recipe.get("data_dir")}`.', '']
    header = ['model', 'kwargs', 'params (M)', 'MMACs', 'seeds'] + [titles[key] for key in columns]
    lines += ['| ' + ' | '.join(header) + ' |', '|' + '---|' * 5 + '---:|' * len(columns)]
    for cell in report['cells']:
        values = []
        for key in columns:
            mean, spread = cell['mean'][key], cell['std'][key]
            values.append(_number(mean) + (f' ± {spread:.1f}' if spread is not None else ''))
        lines.append('| ' + ' | '.join([
            f'`{cell["model"]}`', _kwargs_text(cell['kwargs']) or '–', f'{cell["params"] / 1e6:.2f}',
            f'{cell["macs"] / 1e6:.1f}', ','.join(map(str, cell['seeds']))] + values) + ' |')
    lines += ['', '## Runs', '', '| run | seed | ' + ' | '.join(titles[key] for key in columns) + ' | seconds |',
              '|---|---:|' + '---:|' * (len(columns) + 1)]
    for record in report['runs']:
        lines.append(f'| `{record["name"]}` | {record["seed"]} | ' + ' | '.join(
            _number(record['results'].get(key)) for key in columns) + f' | {record["seconds"]:.0f} |')
    return '\n'.join(lines) + '\n'


def _per_seed_marginal(runs: Sequence[Mapping[str, Any]], knob: str, value: Any, key: str) -> list[float]:
    """For each seed, the mean over the runs with ``knob == value`` (the other knobs averaged out)."""
    by_seed: dict[int, list[float]] = {}
    for record in runs:
        if _knob_value(record, knob) == value and record['results'].get(key) is not None:
            by_seed.setdefault(record['seed'], []).append(record['results'][key])
    return [statistics.fmean(values) for values in by_seed.values()]


def _knob_value(record: Mapping[str, Any], knob: str) -> Any:
    if knob == 'model':
        return record['model']
    value = record['kwargs'].get(knob)
    return None if value is None else _value_text(value)


def write_study_figure(path: Path, report: Mapping[str, Any]) -> Path:
    """One panel per knob (accuracy on clean and every shift vs the knob's values, error bars = std over seeds of
    the per-seed means), and a clean-vs-OOD scatter with one point per run."""
    import io

    import matplotlib
    matplotlib.use('Agg', force=True)
    from matplotlib import pyplot as plt

    runs, titles = report['runs'], report['titles']
    metrics = [key for key in report['columns'] if key == CLEAN_KEY or key in report['shifts']]
    # a knob with one value (``--vary stem=patchify`` fixes an argument for every run) has nothing to plot
    knobs = [knob for knob in ['model'] + list(report['knobs'])
             if len({_knob_value(record, knob) for record in runs} - {None}) > 1]
    figure, axes = plt.subplots(1, len(knobs) + 1, figsize=(5.5 * (len(knobs) + 1), 4.8), squeeze=False)
    for axis, knob in zip(axes[0], knobs):
        values = []
        for record in runs:
            value = _knob_value(record, knob)
            if value is not None and value not in values:
                values.append(value)
        for index, key in enumerate(metrics):
            means, spreads = [], []
            for value in values:
                mean, spread = _mean_spread(_per_seed_marginal(runs, knob, value, key))
                means.append(math.nan if mean is None else mean)
                spreads.append(0.0 if spread is None else spread)
            offset = (index - (len(metrics) - 1) / 2) * 0.04  # keep the error bars of the lines apart
            axis.errorbar([position + offset for position in range(len(values))], means, yerr=spreads,
                          marker='o', capsize=3, label=titles.get(key, key))
        axis.set_xticks(range(len(values)), values, rotation=20 if knob == 'model' else 0)
        axis.set_xlabel(knob)
        axis.set_ylabel('top-1 accuracy (%)')
        axis.set_ylim(0, 100)
        axis.set_title(f'{knob}: mean ± std over seeds')
        axis.grid(alpha=0.3)
    if knobs:
        axes[0][0].legend(fontsize=7, loc='best', framealpha=0.8)
    axis = axes[0][-1]
    shifts = [key for key in metrics if key != CLEAN_KEY]
    cell_names: list[str] = []
    colors = plt.get_cmap('tab10')
    for record in runs:
        shifted = [record['results'][key] for key in shifts if record['results'].get(key) is not None]
        clean = record['results'].get(CLEAN_KEY)
        if clean is None or not shifted:
            continue
        label = ' '.join([record['model']] * ('model' in knobs or not knobs) + [
            f'{key}={_value_text(value)}' for key, value in record['kwargs'].items() if key in knobs])
        first = label not in cell_names
        if first:
            cell_names.append(label)
        axis.scatter(clean, statistics.fmean(shifted), color=colors(cell_names.index(label) % 10),
                     label=label if first else None)
    limits = [min(axis.get_xlim()[0], axis.get_ylim()[0]), max(axis.get_xlim()[1], axis.get_ylim()[1])]
    axis.plot(limits, limits, linestyle='--', color='grey', linewidth=1, label='out-of-distribution = clean')
    axis.set_xlim(limits)
    axis.set_ylim(limits)
    axis.set_xlabel(f'{titles.get(CLEAN_KEY, CLEAN_KEY)} top-1 (%)')
    axis.set_ylabel(f'mean top-1 over {len(shifts)} shift{"s" if len(shifts) != 1 else ""} (%)')
    axis.set_title('clean vs out-of-distribution: one point per run')
    axis.grid(alpha=0.3)
    if cell_names:
        axis.legend(fontsize=7, loc='best')
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png', dpi=110)
    plt.close(figure)
    return atomic_write_bytes(buffer.getvalue(), path)


def write_report(output: Path) -> tuple[Path, Path, Path]:
    records = read_records(output)
    if not records:
        raise UsageError(f'{output} holds no finished runs (no runs/*/{RECORD_NAME}); run the study first')
    report = build_report(records)
    markdown = atomic_write_text(study_markdown(report), output / 'study.md')
    payload = atomic_write_text(results_to_json(report), output / 'study.json')
    figure = write_study_figure(output / 'study.png', report)
    return markdown, payload, figure


# ---------------------------------------------------------------------------------------------------- the study

def run_study(options: StudyOptions) -> tuple[Path, Path, Path]:
    """Check everything, run the runs that have no record yet, then write the report from the records."""
    output = Path(options.output)
    try:
        import matplotlib  # noqa: F401  (the figure; checked before hours of training, not after)
    except ImportError:
        raise UsageError('the study draws study.png with matplotlib: pip install -e ".[report]"') from None
    if options.report_only:
        return write_report(output)
    if not options.models:
        raise UsageError('give --models NAME[,NAME...] (or --report-only to rebuild the report)')
    data = plan_data(options)
    cells = plan_cells(options.models, options.vary, data.image_size, data.num_classes)
    recipe = _recipe(options, data)
    for record in read_records(output):
        if record.get('recipe') != recipe:
            raise UsageError(f'{output} holds runs of another recipe or data ({record["name"]}: {record.get("recipe")}'
                             f'); pass another --output to start a new study')
    runs = [(cell, seed) for seed in options.seeds for cell in cells]
    _logger.info('study: %d configurations x %d seeds = %d runs into %s', len(cells), len(options.seeds), len(runs),
                 output)
    if data.synthetic is not None:
        from .synthetic.benchmark import ensure_benchmark
        ensure_benchmark(data.synthetic, data.data_dir, workers=options.workers)
    for index, (cell, seed) in enumerate(runs, 1):
        run_dir = output / 'runs' / cell.run_name(seed)
        if (run_dir / RECORD_NAME).is_file():
            _logger.info('study: run %d/%d %s finished before; kept', index, len(runs), run_dir.name)
            continue
        if run_dir.exists():  # an interrupted run: its partial training is not resumed, the run starts over
            _logger.info('study: run %d/%d %s was interrupted; starting it over', index, len(runs), run_dir.name)
            shutil.rmtree(run_dir)
        _logger.info('study: run %d/%d %s', index, len(runs), run_dir.name)
        _run_one(options, data, cell, seed, run_dir, recipe)
        kill_point('study-run')
    return write_report(output)


def build_parser(prog: str = 'study.py') -> argparse.ArgumentParser:
    from .synthetic.demo import DemoOptions

    defaults = DemoOptions()
    parser = OneLineErrorParser(
        prog=prog, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description='Train a grid of models and model arguments with one recipe on one benchmark (the built-in '
                    'synthetic one by default), evaluate every run on every shift, and tabulate clean vs '
                    'out-of-distribution accuracy with the spread over seeds (study.md, study.json, study.png).')
    parser.add_argument('--models', default='', help='timm model names, comma-separated, e.g. '
                        'resnet_ablation_nano,robust_resnet_dw_nano,resnet18')
    parser.add_argument('--vary', action='append', default=[], metavar='KWARG=V1,V2',
                        help='a model argument and its values (YAML scalars); repeat for more knobs, the grid is '
                             'their product, e.g. --vary kernel_size=3,7 --vary activations=all,one; one value '
                             '(--vary stem=patchify) fixes an argument for every run')
    parser.add_argument('--seeds', default='0', help='training seeds, comma-separated (the data stay the same)')
    parser.add_argument('--data-dir', default=None, help='a synthetic benchmark folder, or train/ + val/ + '
                        'out-of-distribution folders (default: the synthetic benchmark, generated once)')
    parser.add_argument('--epochs', type=int, default=defaults.epochs)
    parser.add_argument('--img-size', type=int, default=None,
                        help='image size (default: the synthetic benchmark\'s, 64)')
    parser.add_argument('--batch-size', type=int, default=defaults.batch_size)
    parser.add_argument('--lr', type=float, default=defaults.lr)
    parser.add_argument('--workers', type=int, default=None, help='processes for generation and data loading')
    parser.add_argument('--output', default='./output/study', help='study folder: runs/NAME/ per run, the report')
    parser.add_argument('--report-only', action='store_true', help='only rebuild the report from OUTPUT/runs/')
    sizes = parser.add_argument_group('synthetic benchmark size (without --data-dir)')
    for name in ('train_per_class', 'val_per_class', 'shift_per_class', 'corruption_per_class'):
        sizes.add_argument(f'--{name.replace("_", "-")}', type=int, default=getattr(defaults.benchmark, name))
    return parser


def options_from_args(args: argparse.Namespace) -> StudyOptions:
    if args.epochs < 1 or args.batch_size < 2:
        raise UsageError(f'--epochs must be >= 1 and --batch-size >= 2, got {args.epochs} and {args.batch_size}')
    models = [name.strip() for name in args.models.split(',') if name.strip()]
    if len(set(models)) != len(models):
        raise UsageError(f'--models {args.models!r}: a model is listed twice')
    sizes = {name: getattr(args, name) for name in
             ('train_per_class', 'val_per_class', 'shift_per_class', 'corruption_per_class')}
    return StudyOptions(models=models, vary=parse_vary(args.vary), seeds=parse_seeds(args.seeds),
                        data_dir=args.data_dir, epochs=args.epochs, img_size=args.img_size,
                        batch_size=args.batch_size, lr=args.lr, workers=args.workers, output=args.output,
                        benchmark_sizes=sizes, report_only=args.report_only)


def main(argv: Sequence[str] | None = None, prog: str = 'study.py') -> int:
    from .cli import setup_logging

    setup_logging(True)
    markdown, payload, figure = run_study(options_from_args(build_parser(prog).parse_args(argv)))
    print(markdown.read_text(encoding='utf-8').split('\n## Runs')[0])
    print(f'Report: {markdown}\n        {payload}\n        {figure}')
    return 0
