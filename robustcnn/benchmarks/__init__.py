"""Evaluation sets, one module each; ``BENCHMARKS`` maps the ``--dataset`` names to them, in suite order.

The set modules load torch (through the data loaders), so they are imported on first use of ``BENCHMARKS`` (or of
any class exported here), not by ``import robustcnn.benchmarks``: validate.py takes its ``--dataset`` choices from
:data:`BENCHMARK_NAMES` and answers ``--help`` before torch is loaded.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..cli import UsageError

if TYPE_CHECKING:
    from .base import Benchmark, ClassFolderBenchmark, DatasetLayoutError, PreparedData

__all__ = ['BENCHMARKS', 'BENCHMARK_NAMES', 'SUITE_ORDER', 'DEFAULT_DATASET', 'get_benchmark', 'Benchmark',
           'ClassFolderBenchmark', 'DatasetLayoutError', 'PreparedData']

# --dataset name -> (module, class); each class's ``name`` is its key (a test checks it).
_SET_CLASSES: dict[str, tuple[str, str]] = {
    'imagenet': ('imagenet', 'ImageNet'),
    'stylized-imagenet': ('stylized_imagenet', 'StylizedImageNet'),
    'imagenet-c': ('imagenet_c', 'ImageNetC'),
    'imagenet-r': ('imagenet_r', 'ImageNetR'),
    'imagenet-sketch': ('imagenet_sketch', 'ImageNetSketch'),
    'imagenet-a': ('imagenet_a', 'ImageNetA'),
    'imagenet-v2': ('imagenet_v2', 'ImageNetV2'),
    'folder': ('folder', 'ClassFolder'),
    # more distribution shifts (issue 15): corruption suites in ImageNet-C's layout, relabelled val, OOD detection
    'imagenet-c-bar': ('imagenet_c_bar', 'ImageNetCBar'),
    'imagenet-3dcc': ('imagenet_3dcc', 'ImageNet3DCC'),
    'imagenet-real': ('imagenet_real', 'ImageNetReaL'),
    'imagenet-o': ('imagenet_o', 'ImageNetO'),
    'objectnet': ('objectnet', 'ObjectNet'),
}
# Shape bias and model-vs-human's human-comparison sets: instances of a few classes, listed in
# model_vs_human.sets.SHAPE_AND_HUMAN_BENCHMARKS (a test checks that these names are theirs, in that order).
SHAPE_AND_HUMAN_NAMES: tuple[str, ...] = (
    'edges', 'silhouettes', 'cue-conflict', 'colour', 'contrast', 'high-pass', 'low-pass', 'phase-scrambling',
    'power-equalisation', 'false-colour', 'rotation', 'eidolonI', 'eidolonII', 'eidolonIII', 'uniform-noise',
    'mvh-sketch', 'mvh-stylized')
BENCHMARK_NAMES: tuple[str, ...] = tuple(_SET_CLASSES) + SHAPE_AND_HUMAN_NAMES
# Clean ImageNet first: its error feeds ImageNet-C's relative mCE in the same run.
SUITE_ORDER: tuple[str, ...] = ('imagenet', 'stylized-imagenet', 'imagenet-c', 'imagenet-r', 'imagenet-sketch',
                                'imagenet-a', 'imagenet-v2')
SUITE_ORDER += ('imagenet-c-bar', 'imagenet-3dcc', 'imagenet-real', 'objectnet', 'imagenet-o')
SUITE_ORDER += SHAPE_AND_HUMAN_NAMES
# What validate.py evaluates when neither --dataset nor the folder's layout or name says otherwise.
DEFAULT_DATASET = 'imagenet'
_BASE_NAMES = ('Benchmark', 'ClassFolderBenchmark', 'DatasetLayoutError', 'PreparedData')


def __getattr__(name: str) -> Any:
    if name == 'BENCHMARKS':
        benchmarks = {key: getattr(importlib.import_module(f'.{module}', __name__), cls)()
                      for key, (module, cls) in _SET_CLASSES.items()}
        shape_and_human = importlib.import_module('.model_vs_human.sets', __name__).SHAPE_AND_HUMAN_BENCHMARKS
        benchmarks.update({benchmark.name: benchmark for benchmark in shape_and_human})
        globals()['BENCHMARKS'] = benchmarks  # built once
        return benchmarks
    if name in _BASE_NAMES:
        return getattr(importlib.import_module('.base', __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def get_benchmark(name: str) -> Benchmark:
    try:
        return (globals().get('BENCHMARKS') or __getattr__('BENCHMARKS'))[name]
    except KeyError:
        raise UsageError(f'unknown dataset {name!r}; expected one of {", ".join(BENCHMARK_NAMES)}') from None
