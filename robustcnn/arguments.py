"""Typed argument checkers shared by train.py's and validate.py's parsers, and the names their choices come from.

Each check lives here once. A checker is an argparse ``type``: it turns the text of one value into the value or
raises ``argparse.ArgumentTypeError`` with what was expected, so a bad flag is one line before anything loads
(argparse names the flag: ``argument --crop-pct: must be between ...``). YAML configs run the same checkers
(``config._convert_scalar``), and :func:`require` runs one on a value given in code (a ``ValidationRequest`` built
by a library caller), so the three ways in share one definition. No imports beyond the standard library and
:mod:`robustcnn.limits`: the parsers use these before torch loads.
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from .cli import UsageError
from .limits import CROP_PCT_RANGE

__all__ = [
    'INTERPOLATIONS', 'GEOMETRIC_INTERPOLATIONS', 'RESIZE_MODES', 'AMP_DTYPE_NAMES', 'INT_TYPES', 'FLOAT_TYPES',
    'positive_int', 'non_negative_int', 'non_negative_float', 'finite_float', 'positive_float', 'probability',
    'percent', 'crop_fraction', 'interpolation', 'require', 'check_channel_values', 'check_input_size',
    'RESULT_SUFFIXES', 'check_suffix', 'check_output_file',
]

Value = TypeVar('Value')

# Interpolations timm understands; Pillow's geometric ops (RandAugment's rotate/shear/translate, which timm hands the
# training interpolation) take only the first three, so the others cannot be combined with --aa.
GEOMETRIC_INTERPOLATIONS = ('nearest', 'bilinear', 'bicubic')
INTERPOLATIONS = GEOMETRIC_INTERPOLATIONS + ('lanczos', 'box', 'hamming')
# Evaluation resize modes (validate.py --resize-mode; implemented in robustcnn.data.transforms).
RESIZE_MODES = ('resize_center_crop', 'resize', 'none')
# Results files validate.py writes (robustcnn.report).
RESULT_SUFFIXES = ('.json', '.csv', '.md')
# robustcnn.engine.runtime.AMP_DTYPES' keys, here without torch (a test checks they agree).
AMP_DTYPE_NAMES = ('bfloat16', 'float16')


def _named(name: str) -> Callable[[Callable[[Any], Value]], Callable[[Any], Value]]:
    """argparse and the YAML checks print a type function's ``__name__``: give each a readable one."""
    def rename(function: Callable[[Any], Value]) -> Callable[[Any], Value]:
        function.__name__ = name
        return function
    return rename


def _number(text: Any) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f'must be a finite number, got {text}')
    return value


@_named('positive integer')
def positive_int(text: Any) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be at least 1, got {value}')
    return value


@_named('non-negative integer')
def non_negative_int(text: Any) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f'must be 0 or more, got {value}')
    return value


@_named('non-negative number')
def non_negative_float(text: Any) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f'must be a finite number >= 0, got {text}')
    return value


@_named('finite number')
def finite_float(text: Any) -> float:
    return _number(text)


@_named('positive number')
def positive_float(text: Any) -> float:
    """``--std``: a zero divided by zero at the first batch."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f'must be a positive number, got {text}')
    return value


@_named('probability')
def probability(text: Any) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f'must be between 0 and 1, got {text}')
    return value


@_named('percentage')
def percent(text: Any) -> float:
    """A top-1 error or accuracy in percent (``--clean-error``)."""
    value = float(text)
    if not 0.0 <= value <= 100.0:
        raise argparse.ArgumentTypeError(f'must be a percentage between 0 and 100, got {text}')
    return value


@_named('crop fraction')
def crop_fraction(text: Any) -> float:
    """``--crop-pct``: the resize before the center crop is size / crop_pct, so 0 or 1e-4 cannot be meant."""
    value = float(text)
    low, high = CROP_PCT_RANGE
    if not (math.isfinite(value) and low <= value <= high):
        raise argparse.ArgumentTypeError(f'must be between {low} and {high} (the fraction of the resized image the '
                                         f'center crop keeps), got {text}')
    return value


@_named('interpolation')
def interpolation(text: Any) -> str:
    """A resize interpolation timm knows, or '' for the model's own (the flags' default)."""
    if text and text not in INTERPOLATIONS:
        raise argparse.ArgumentTypeError(f'must be one of {", ".join(INTERPOLATIONS)}, got {text!r}')
    return text


INT_TYPES = (int, positive_int, non_negative_int)
FLOAT_TYPES = (float, non_negative_float, finite_float, positive_float, probability, percent, crop_fraction)


def require(flag: str, checker: Callable[[Any], Value], value: Any) -> Value:
    """Run ``checker`` on a value that did not come through a parser; a bad one is a UsageError naming ``flag``."""
    try:
        return checker(value)
    except (argparse.ArgumentTypeError, ValueError, TypeError) as error:
        raise UsageError(f'{flag}: {error}') from None


def check_channel_values(flag: str, values: Sequence[float] | None, checker: Callable[[Any], float]) -> None:
    """``--mean`` / ``--std``: one value for every channel or one per RGB channel, each passing ``checker`` (the
    parser has run it already; this covers YAML configs and requests built in code)."""
    if values is None:
        return
    if len(values) not in (1, 3):
        raise UsageError(f'{flag} takes 1 or 3 values (one per RGB channel), got {len(values)}')
    for value in values:
        require(flag, checker, value)


def check_input_size(input_size: Sequence[int] | None) -> None:
    """``--input-size C H W``: images are read as RGB, so C is 3; H and W are positive."""
    if input_size is None:
        return
    if len(input_size) != 3:
        raise UsageError(f'--input-size takes 3 values C H W, got {len(input_size)}')
    if input_size[0] != 3:
        raise UsageError(f'--input-size C H W: C must be 3 (images are read as RGB), got {input_size[0]}')
    for value in input_size[1:]:
        require('--input-size', positive_int, value)


def check_suffix(flag: str, path: str | os.PathLike, suffixes: Sequence[str]) -> Path:
    """An output file of a type we can write (``--results-file out.json``, ``--figure plot.png``)."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise UsageError(f'{flag} must end in {", ".join(suffixes)}, got {path.name}')
    return path


def check_output_file(path: str | os.PathLike, flag: str) -> Path:
    """Fail before any evaluation on an output file that cannot be written: a folder, a path under a file, or a
    folder this process may not write in (read-only disk, permissions). Missing parent folders are made later."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f'{flag} {path} is a folder; give a file name (e.g. {path / "results.json"})')
    for ancestor in path.parents:
        if not (ancestor.exists() or ancestor.is_symlink()):
            continue
        if not ancestor.is_dir():
            raise UsageError(f'{flag} {path} is under {ancestor}, which is a file; choose another path')
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise UsageError(f'{flag} {path}: this process cannot write in {ancestor} (read-only or no permission); '
                             f'choose another path')
        break
    return path
