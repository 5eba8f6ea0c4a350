"""What each stimulus file name says: shape/texture category, condition, category, and the trial's image id.

The file-name schemes, as model-vs-human reads them (``modelvshuman/datasets/info_mappings.py``,
``modelvshuman/plotting/analyses.py``, ``modelvshuman/helper/plotting_helper.py``):

- cue-conflict (texture-vs-shape ``stimuli/style-transfer-preprocessed-512``, model-vs-human ``cue-conflict``):
  ``<shape category>/<shape><n>-<texture><m>.png``; the shape category is the folder (``ImageNetInfoMapping``),
  the texture category is the last ``-`` part of the name without its digits (``ShapeBias.get_texture_category``).
- edges / silhouettes (``stimuli/edges``, ``stimuli/filled-silhouettes``; model-vs-human ``edge``,
  ``silhouette``): ``<category>/<category><n>.png``, category = folder.
- the twelve parametric sets, sketch and stylized (model-vs-human's download, ``contains_sessions=True``):
  ``<set>/dnn/session-<k>/<trial>_<set abbreviation>_dnn_<condition>_<category>_<xx>_<source image>``; the
  condition is the 4th and the category the 5th ``_`` field (``InfoMappingWithSessions``).
- image id (how a model trial is paired with a human trial of the same picture, ``get_short_imagename``): the last
  ``_`` field of the name, or the last two joined by ``_`` when the second-to-last starts with ``n0`` (an ImageNet
  file name such as ``n02504458_7209.png``); a name without ``_`` is its own id.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from .categories import CATEGORIES

__all__ = ['CueConflictName', 'SessionName', 'parse_cue_conflict_name', 'texture_category', 'parse_session_name',
           'short_image_name', 'canonical_condition', 'check_category']


def check_category(name: str, where: str) -> str:
    if name not in CATEGORIES:
        raise ValueError(f'{where}: {name!r} is not one of the 16 categories ({", ".join(CATEGORIES)})')
    return name


def short_image_name(file_name: str) -> str:
    """The image id model-vs-human pairs trials by (``get_short_imagename``)."""
    parts = file_name.split('_')
    if len(parts) == 1:
        return parts[0]
    if parts[-2].startswith('n0'):
        return f'{parts[-2]}_{parts[-1]}'
    return parts[-1]


def texture_category(file_name: str) -> str:
    """``XXX_dog10-bird2.png`` -> ``bird``: last ``_`` field, extension off, last ``-`` part, digits dropped."""
    stem = file_name.split('_')[-1].split('.')[0]
    return ''.join(character for character in stem.split('-')[-1] if not character.isdigit())


@dataclass(frozen=True)
class CueConflictName:
    shape: str
    texture: str

    @property
    def has_conflict(self) -> bool:
        """False for the 80 images whose texture comes from their own category (model-vs-human drops them)."""
        return self.shape != self.texture


def parse_cue_conflict_name(folder: str, file_name: str) -> CueConflictName:
    """Shape from the folder, texture from the name; the name's own shape part must agree with the folder.

    model-vs-human takes the shape from the folder only; a name whose leading category differs from its folder
    means a tree that is not the released one (e.g. files moved), which is reported rather than scored.
    """
    where = f'{folder}/{file_name}'
    shape = check_category(folder, where)
    stem = file_name.split('_')[-1].split('.')[0]
    pieces = stem.split('-')
    if len(pieces) != 2:
        raise ValueError(f'{where}: expected a cue-conflict name <shape><n>-<texture><m>.png')
    named_shape = ''.join(character for character in pieces[0] if not character.isdigit())
    if named_shape != shape:
        raise ValueError(f'{where}: the name says shape {named_shape!r} but the file is in folder {shape!r}')
    return CueConflictName(shape=shape, texture=check_category(texture_category(file_name), where))


@dataclass(frozen=True)
class SessionName:
    condition: str
    category: str


def parse_session_name(file_name: str) -> SessionName:
    """``0001_cop_dnn_c30_knife_10_n03041632_7380.png`` -> condition ``c30``, category ``knife``."""
    parts = file_name.split('_')
    if len(parts) < 6:
        raise ValueError(f'{file_name}: expected model-vs-human\'s <trial>_<set>_<subject>_<condition>_<category>_'
                         f'<xx>_<image> file name')
    return SessionName(condition=parts[3], category=check_category(parts[4], file_name))


def _as_number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return None if math.isnan(value) else value


def canonical_condition(raw: str, data_conditions: Sequence[str]) -> str | None:
    """The experiment's spelling of a condition read from a file name or a CSV cell, or None if it is not one.

    model-vs-human reads its CSVs with pandas, which turns ``0.90`` into ``0.9``, ``1`` into ``1.0`` (in a float
    column) and ``true`` into ``True`` before comparing with the experiment's ``data_conditions``; the same
    values compare equal here (numbers by value, words without case).
    """
    if raw in data_conditions:
        return raw
    number = _as_number(raw)
    for condition in data_conditions:
        other = _as_number(condition)
        if number is not None and other is not None and number == other:
            return condition
        if raw.lower() == condition.lower():
            return condition
    return None
