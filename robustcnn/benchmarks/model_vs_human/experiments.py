"""model-vs-human's 17 sets: their conditions, and which conditions its benchmark tables leave out.

Conditions (``data_conditions``, the spelling in file names and results) and their axis labels are those of
``modelvshuman/datasets/experiments.py``; the excluded conditions are ``EXCLUDE_CONDITIONS`` of
``modelvshuman/plotting/plot.py``: the undistorted control condition (not out-of-distribution) and conditions where
mean human accuracy is below 0.2 (consistency not meaningful). Its "OOD accuracy" and human-likeness tables average
over the remaining conditions, then over the 17 sets (``constants.DEFAULT_DATASETS``).
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ['SetSpec', 'MODEL_VS_HUMAN_SETS', 'PARAMETRIC_SETS', 'NONPARAMETRIC_SETS', 'DEFAULT_SETS']


@dataclass(frozen=True)
class SetSpec:
    """One model-vs-human set; ``conditions`` empty for the sets with one condition (written ``0`` in its CSVs)."""

    name: str
    conditions: tuple[str, ...] = ()
    condition_labels: tuple[str, ...] = ()
    excluded_conditions: tuple[str, ...] = ()
    condition_axis: str = ''

    @property
    def kept_conditions(self) -> tuple[str, ...]:
        return tuple(condition for condition in self.conditions if condition not in self.excluded_conditions)


_EIDOLON_LABELS = ('0', '1', '2', '3', '4', '5', '6', '7')
_EIDOLON_AXIS = "log2 of 'reach' parameter"

PARAMETRIC_SETS: tuple[SetSpec, ...] = (
    SetSpec('colour', ('cr', 'bw'), ('colour', 'greyscale'), ('cr',), 'Colour'),
    SetSpec('contrast', ('c100', 'c50', 'c30', 'c15', 'c10', 'c05', 'c03', 'c01'),
            ('100', '50', '30', '15', '10', '5', '3', '1'), ('c100', 'c03', 'c01'), 'Contrast in percent'),
    SetSpec('high-pass', ('inf', '3.0', '1.5', '1.0', '0.7', '0.55', '0.45', '0.4'),
            ('inf', '3.0', '1.5', '1.0', '.7', '.55', '.45', '.4'), ('inf', '0.55', '0.45', '0.4'),
            'Filter standard deviation'),
    SetSpec('low-pass', ('0', '1', '3', '5', '7', '10', '15', '40'), ('0', '1', '3', '5', '7', '10', '15', '40'),
            ('0', '15', '40'), 'Filter standard deviation'),
    SetSpec('phase-scrambling', ('0', '30', '60', '90', '120', '150', '180'),
            ('0', '30', '60', '90', '120', '150', '180'), ('0', '150', '180'), 'Phase noise width [degrees]'),
    SetSpec('power-equalisation', ('0', 'pow'), ('original', 'equalised'), ('0',), 'Power spectrum'),
    SetSpec('false-colour', ('True', 'False'), ('true', 'opponent'), ('True',), 'Colour'),
    SetSpec('rotation', ('0', '90', '180', '270'), ('0', '90', '180', '270'), ('0',), 'Rotation angle [degrees]'),
    SetSpec('eidolonI', ('1-10-10', '2-10-10', '4-10-10', '8-10-10', '16-10-10', '32-10-10', '64-10-10', '128-10-10'),
            _EIDOLON_LABELS, ('1-10-10', '64-10-10', '128-10-10'), _EIDOLON_AXIS),
    SetSpec('eidolonII', ('1-3-10', '2-3-10', '4-3-10', '8-3-10', '16-3-10', '32-3-10', '64-3-10', '128-3-10'),
            _EIDOLON_LABELS, ('1-3-10', '32-3-10', '64-3-10', '128-3-10'), _EIDOLON_AXIS),
    SetSpec('eidolonIII', ('1-0-10', '2-0-10', '4-0-10', '8-0-10', '16-0-10', '32-0-10', '64-0-10', '128-0-10'),
            _EIDOLON_LABELS, ('1-0-10', '16-0-10', '32-0-10', '64-0-10', '128-0-10'), _EIDOLON_AXIS),
    SetSpec('uniform-noise', ('0.0', '0.03', '0.05', '0.1', '0.2', '0.35', '0.6', '0.9'),
            ('0.0', '.03', '.05', '.1', '.2', '.35', '.6', '.9'), ('0.0', '0.6', '0.9'), 'Uniform noise width'),
)
NONPARAMETRIC_SETS: tuple[SetSpec, ...] = (
    SetSpec('edge'), SetSpec('silhouette'), SetSpec('cue-conflict'), SetSpec('sketch'), SetSpec('stylized'),
)
MODEL_VS_HUMAN_SETS: dict[str, SetSpec] = {spec.name: spec for spec in (*PARAMETRIC_SETS, *NONPARAMETRIC_SETS)}
# The 17 sets of model-vs-human's benchmark tables, in its order.
DEFAULT_SETS: tuple[str, ...] = ('edge', 'silhouette', 'cue-conflict', *(spec.name for spec in PARAMETRIC_SETS),
                                 'sketch', 'stylized')
