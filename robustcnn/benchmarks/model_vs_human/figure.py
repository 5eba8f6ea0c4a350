"""The shape-bias plot of Geirhos et al. (2019) / model-vs-human (``plot_shape_bias_matrixplot``): the 16
categories down, the fraction of shape decisions across (texture decisions along the top, reversed), one point per
category and a vertical line at the overall shape bias, for the model and, with --human-data, the humans."""
from __future__ import annotations

import math
from typing import Any, Mapping

from .categories import CATEGORIES

__all__ = ['draw_shape_bias']

# model-vs-human draws humans as red diamonds; the model gets a colour and marker of its own.
_HUMAN_STYLE = {'color': '#d62728', 'marker': 'D'}
_MODEL_STYLE = {'color': '#1f77b4', 'marker': 'o'}


def _fractions(per_category: Mapping[str, float | None]) -> list[tuple[int, float]]:
    """(row, shape fraction) for the categories with a decision; categories without one are not drawn."""
    return [(row, per_category[name] / 100.0) for row, name in enumerate(CATEGORIES)
            if per_category.get(name) is not None and math.isfinite(per_category[name])]


def _draw_observer(axis: Any, per_category: Mapping[str, float | None], overall: float | None, label: str,
                   style: Mapping[str, str]) -> None:
    points = _fractions(per_category)
    if points:
        rows, values = zip(*points)
        axis.scatter(values, rows, s=45, zorder=3, clip_on=False, label=label, **style)
    if overall is not None and math.isfinite(overall):
        axis.axvline(overall / 100.0, color=style['color'], linestyle='--', linewidth=1.5,
                     label=f'{label} mean: {overall:.1f}%')


def draw_shape_bias(axis: Any, entry: Mapping[str, Any], model_name: str) -> None:
    """One cue-conflict results entry on a matplotlib ``axis`` (its humans too, when the entry has them)."""
    axis.set_ylim(len(CATEGORIES) - 0.5, -0.5)  # first category at the top
    axis.set_yticks(range(len(CATEGORIES)), CATEGORIES)
    axis.set_xlim(0.0, 1.0)
    axis.set_xlabel("Fraction of 'shape' decisions")
    axis.grid(axis='y', color='0.9', linewidth=0.8)
    top = axis.secondary_xaxis('top', functions=(lambda value: 1.0 - value, lambda value: 1.0 - value))
    top.set_xlabel("Fraction of 'texture' decisions")
    humans = entry.get('humans') or {}
    if humans.get('per_category'):
        _draw_observer(axis, humans['per_category'], humans.get('shape_bias'), 'humans', _HUMAN_STYLE)
    _draw_observer(axis, entry.get('per_category') or {}, entry.get('shape_bias'), model_name, _MODEL_STYLE)
    axis.set_title('Shape vs. texture decisions on cue-conflict images', pad=28)
    axis.legend(loc='upper center', bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8, frameon=False)
