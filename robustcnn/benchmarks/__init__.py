"""Evaluation sets, one module each; ``BENCHMARKS`` maps the ``--dataset`` names to them, in suite order."""
from __future__ import annotations

from .base import Benchmark, ClassFolderBenchmark, DatasetLayoutError, PreparedData
from .folder import ClassFolder
from .imagenet import ImageNet
from .imagenet_a import ImageNetA
from .imagenet_c import ImageNetC
from .imagenet_r import ImageNetR
from .imagenet_sketch import ImageNetSketch
from .imagenet_v2 import ImageNetV2
from .stylized_imagenet import StylizedImageNet
# More distribution shifts (issue 15): corruption suites in ImageNet-C's layout, relabelled val, OOD detection.
from .imagenet_3dcc import ImageNet3DCC
from .imagenet_c_bar import ImageNetCBar
from .imagenet_o import ImageNetO
from .imagenet_real import ImageNetReaL
from .objectnet import ObjectNet
from .model_vs_human.sets import SHAPE_AND_HUMAN_BENCHMARKS

__all__ = ['BENCHMARKS', 'SUITE_ORDER', 'get_benchmark', 'Benchmark', 'ClassFolderBenchmark', 'DatasetLayoutError',
           'PreparedData', 'DEFAULT_DATASET']

BENCHMARKS: dict[str, Benchmark] = {benchmark.name: benchmark for benchmark in (
    ImageNet(), StylizedImageNet(), ImageNetC(), ImageNetR(), ImageNetSketch(), ImageNetA(), ImageNetV2(),
    ClassFolder(),
)}
BENCHMARKS.update({benchmark.name: benchmark for benchmark in (
    ImageNetCBar(), ImageNet3DCC(), ImageNetReaL(), ImageNetO(), ObjectNet())})
# Shape bias and model-vs-human's human-comparison sets (cue-conflict, edges, silhouettes and 14 more), after the rest.
BENCHMARKS.update({benchmark.name: benchmark for benchmark in SHAPE_AND_HUMAN_BENCHMARKS})
# Clean ImageNet first: its error feeds ImageNet-C's relative mCE in the same run.
SUITE_ORDER: tuple[str, ...] = ('imagenet', 'stylized-imagenet', 'imagenet-c', 'imagenet-r', 'imagenet-sketch',
                                'imagenet-a', 'imagenet-v2')
SUITE_ORDER += ('imagenet-c-bar', 'imagenet-3dcc', 'imagenet-real', 'objectnet', 'imagenet-o')
SUITE_ORDER += tuple(benchmark.name for benchmark in SHAPE_AND_HUMAN_BENCHMARKS)

# What validate.py evaluates when neither --dataset nor the folder's layout or name says otherwise.
DEFAULT_DATASET = 'imagenet'


def get_benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ValueError(f'unknown dataset {name!r}; expected one of {", ".join(BENCHMARKS)}') from None
