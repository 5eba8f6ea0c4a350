"""A built-in, generated robustness benchmark: shapes over textures, with ImageNet-C-style corruptions and
shape-vs-texture shifts, in the real datasets' folder layouts. See :mod:`robustcnn.synthetic.benchmark`."""
from __future__ import annotations

from .benchmark import (CLASS_NAMES, CLASS_TEXTURES, FORMAT_VERSION, SHIFTS, SampleSpec, SyntheticBenchmarkError,
                        SyntheticConfig, default_benchmark_dir, default_cache_root, ensure_benchmark,
                        generate_benchmark, read_manifest, render_sample, sample_spec)

__all__ = ['CLASS_NAMES', 'CLASS_TEXTURES', 'FORMAT_VERSION', 'SHIFTS', 'SampleSpec', 'SyntheticBenchmarkError',
           'SyntheticConfig', 'default_benchmark_dir', 'default_cache_root', 'ensure_benchmark',
           'generate_benchmark', 'read_manifest', 'render_sample', 'sample_spec']
