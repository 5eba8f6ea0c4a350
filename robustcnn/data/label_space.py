"""The model's label space: which class name each classifier output means.

Evaluation sets name their classes by folder (ImageNet wnids, or ImageNet-V2's integer indices); the labels are
found by looking those names up here, never by enumerating the folders on disk, so a tree holding only some
classes is scored correctly. Sources, in priority order: ``--class-map``, the class list stored in a training
checkpoint's metadata, ImageNet-1k's wnids (timm ships them).
"""
from __future__ import annotations

import functools
import json
import os
import pkgutil
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import LabelSpaceError

__all__ = [
    'LabelSpace', 'LabelSpaceError', 'imagenet_wnids', 'imagenet_r_wnids', 'imagenet_r_indices', 'imagenet_a_wnids',
    'imagenet_a_indices', 'load_class_map', 'resolve_label_space',
]


def _timm_info_lines(file_name: str) -> list[str]:
    data = pkgutil.get_data('timm.data', f'_info/{file_name}')
    if data is None:
        raise FileNotFoundError(f'timm does not ship _info/{file_name}; upgrade timm (>=1.0.31)')
    return [line.strip() for line in data.decode('utf-8').splitlines() if line.strip()]


@functools.cache
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in classifier order (the sorted synsets every ImageNet model uses)."""
    return tuple(_timm_info_lines('imagenet_synsets.txt'))


@functools.cache
def imagenet_r_wnids() -> tuple[str, ...]:
    """ImageNet-R's 200 classes, in the order of :func:`imagenet_r_indices`."""
    return tuple(_timm_info_lines('imagenet_r_synsets.txt'))


@functools.cache
def imagenet_r_indices() -> tuple[int, ...]:
    """ImageNet-1k classifier indices of ImageNet-R's 200 classes."""
    return tuple(int(line) for line in _timm_info_lines('imagenet_r_indices.txt'))


@functools.cache
def imagenet_a_wnids() -> tuple[str, ...]:
    """ImageNet-A's 200 classes (a different set from ImageNet-R's), in the order of :func:`imagenet_a_indices`."""
    return tuple(_timm_info_lines('imagenet_a_synsets.txt'))


@functools.cache
def imagenet_a_indices() -> tuple[int, ...]:
    return tuple(int(line) for line in _timm_info_lines('imagenet_a_indices.txt'))


@dataclass(frozen=True)
class LabelSpace:
    """Class names in classifier order, and where they came from (for messages and results files)."""

    class_names: tuple[str, ...]
    source: str
    class_to_index: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        mapping: dict[str, int] = {}
        for index, name in enumerate(self.class_names):
            if name in mapping:
                raise LabelSpaceError(f'class {name!r} appears twice in the label space from {self.source}')
            mapping[name] = index
        object.__setattr__(self, 'class_to_index', mapping)

    def __len__(self) -> int:
        return len(self.class_names)

    @property
    def is_imagenet_1k(self) -> bool:
        return self.class_names == imagenet_wnids()

    def indices_of(self, names: Sequence[str], purpose: str) -> list[int]:
        """Classifier indices of ``names``; every one must be in this label space."""
        missing = [name for name in names if name not in self.class_to_index]
        if missing:
            raise LabelSpaceError(
                f'{purpose} needs {len(missing)} class(es) the model does not have (e.g. {", ".join(missing[:3])}; '
                f'label space from {self.source}, {len(self)} classes)'
            )
        return [self.class_to_index[name] for name in names]

    @classmethod
    def imagenet_1k(cls) -> 'LabelSpace':
        return cls(imagenet_wnids(), 'ImageNet-1k wnids (timm)')


def load_class_map(path: str | os.PathLike) -> LabelSpace:
    """Read a class map as timm means it: ``.txt`` with one class name per line (line number = index), or ``.json``
    holding a list of names or a ``{name: index}`` object. Also accepts ``name index`` pairs per ``.txt`` line.

    Strict, because a wrong map silently mislabels every image: indices are whole numbers 0..N-1, each once, names
    appear once, and anything else is a :class:`LabelSpaceError` naming the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'--class-map file not found: {path}')
    try:
        text = path.read_text(encoding='utf-8')
    except UnicodeDecodeError as error:
        raise LabelSpaceError(f'--class-map {path} is not UTF-8 text ({error.reason} at byte {error.start})') from None
    if path.suffix.lower() == '.json':
        try:
            data = json.loads(text, object_pairs_hook=lambda pairs: _unique_pairs(pairs, path))
        except LabelSpaceError:
            raise
        except ValueError as error:
            raise LabelSpaceError(f'--class-map {path} is not valid JSON ({error})') from None
        if isinstance(data, list):
            if not all(isinstance(name, (str, int)) and not isinstance(name, bool) for name in data):
                raise LabelSpaceError(f'--class-map {path}: a JSON list must hold class names (text)')
            names = [str(name) for name in data]
        elif isinstance(data, dict):
            names = _names_from_mapping(data, path)
        else:
            raise LabelSpaceError(f'--class-map {path}: expected a JSON list of class names or a {{name: index}} '
                                  f'object, got a {type(data).__name__}')
    else:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        pairs = [line.rsplit(maxsplit=1) for line in lines]
        if lines and all(len(pair) == 2 and re.fullmatch(r'[-+]?\d+', pair[1]) for pair in pairs):
            names = _names_from_mapping(_unique_pairs([(name, int(index)) for name, index in pairs], path), path)
        else:
            names = lines
    if not names:
        raise LabelSpaceError(f'--class-map file {path} lists no classes')
    return LabelSpace(tuple(names), f'class map {path}')


def _unique_pairs(pairs: Sequence[tuple[str, Any]], path: Path) -> dict[str, Any]:
    """A mapping from ``(name, value)`` pairs in which a repeated name is an error, not a silent overwrite."""
    mapping: dict[str, Any] = {}
    for name, value in pairs:
        if name in mapping:
            raise LabelSpaceError(f'--class-map {path}: class {name!r} appears twice')
        mapping[name] = value
    return mapping


def _names_from_mapping(mapping: Mapping[str, Any], path: Path) -> list[str]:
    for name, index in mapping.items():
        if isinstance(index, bool) or not isinstance(index, int):
            raise LabelSpaceError(f'--class-map {path}: the index of class {name!r} is {index!r}, not a whole number')
    indices = sorted(mapping.values())
    if indices != list(range(len(indices))):
        raise LabelSpaceError(f'{path}: class indices must be 0..{len(indices) - 1} without gaps or repeats')
    names = [''] * len(indices)
    for name, index in mapping.items():
        names[index] = name
    return names


def resolve_label_space(
        class_map: str | os.PathLike | None = None,
        checkpoint_classes: Sequence[str] | None = None,
        checkpoint_path: str | None = None,
        default: LabelSpace | None = None,
) -> LabelSpace:
    """Pick the label space: --class-map, else the class list a training checkpoint stores (its metadata's
    ``class_names``: folder names in label order), else ``default`` (ImageNet-1k).

    A class map that contradicts the class list the checkpoint was trained with is an error: one of them mislabels
    every image."""
    source = f'class_names stored in {checkpoint_path or "the checkpoint"}'
    from_checkpoint = LabelSpace(tuple(checkpoint_classes), source) if checkpoint_classes else None
    if class_map:
        given = load_class_map(class_map)
        if from_checkpoint is not None and given.class_names != from_checkpoint.class_names:
            raise LabelSpaceError(
                f'--class-map {class_map} ({len(given)} classes) differs from the {len(from_checkpoint)} classes the '
                f'checkpoint was trained with ({from_checkpoint.source}); drop --class-map or give the same list')
        return given
    if from_checkpoint is not None:
        return from_checkpoint
    return default if default is not None else LabelSpace.imagenet_1k()
