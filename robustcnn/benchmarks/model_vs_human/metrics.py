"""Shape bias, 16-class accuracy and model-vs-human's human-likeness metrics, as pure functions of decisions.

Decisions are category names (one per trial), so every number can be checked by hand. The definitions are
model-vs-human's (``modelvshuman/plotting/analyses.py``, aggregation in ``modelvshuman/plotting/plot.py``):

- shape bias (Geirhos et al., ICLR 2019; ``ShapeBias``): over the cue-conflict images whose shape and texture
  categories differ, shape decisions / (shape + texture decisions). Its ``fraction-correct-shape`` and
  ``-texture`` divide the same counts by *all* trials, conflict-free ones included (1,280 for the full set).
- 16-class accuracy (``SixteenClassAccuracy``): decisions equal to the trial's category (for cue-conflict: the
  shape category, over all trials). A human's ``na`` answer counts as wrong.
- against each human observer, per condition (``SixteenClassAccuracyDifference``, ``ErrorConsistency``, Geirhos,
  Meding & Wichmann, NeurIPS 2020): accuracy difference = (model accuracy - human accuracy) squared; observed
  consistency = share of trials both got right or both got wrong; expected consistency = p1 p2 + (1-p1)(1-p2)
  from the two accuracies; error consistency = Cohen's kappa (observed - expected) / (1 - expected), and 1 when
  observed consistency is 1. Humans are not pooled into one observer: each metric is computed against every
  ``subject-*`` separately, averaged over the set's kept conditions per subject, then over subjects
  (``format_benchmark_df``).

Percentages (shape bias, matches, accuracies) are x100 like every metric in the results files; the human-likeness
numbers stay in model-vs-human's units (fractions, kappa) so they compare directly with its published tables.
"""
from __future__ import annotations

import csv
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ...cli import UsageError
from .categories import CATEGORIES
from .experiments import DEFAULT_SETS, SetSpec
from .filenames import canonical_condition, short_image_name, texture_category

__all__ = ['METRIC_NAMES', 'Trial', 'HumanTrial', 'decide', 'accuracy', 'shape_bias_results',
           'per_condition_accuracy', 'consistency', 'error_consistency', 'read_human_trials', 'human_likeness',
           'human_shape_bias', 'benchmark_means', 'HumanDataError']

# The human-likeness metrics of model-vs-human's benchmark table, in its column order.
METRIC_NAMES = ('accuracy_difference', 'observed_consistency', 'error_consistency')


@dataclass(frozen=True)
class Trial:
    """One stimulus: the id pairing it with human trials, its category (shape for cue-conflict), its condition
    (None for one-condition sets) and, for cue-conflict, its texture category."""

    image_id: str
    category: str
    condition: str | None = None
    texture: str | None = None


@dataclass(frozen=True)
class HumanTrial:
    subject: str
    image_id: str
    category: str
    condition: str | None
    response: str

    @property
    def correct(self) -> bool:
        return self.response == self.category


class HumanDataError(UsageError):
    """The --human-data folder is missing, empty or not model-vs-human's raw-data CSVs (a user error, one line)."""


def decide(probabilities: np.ndarray) -> list[str]:
    """``[N, 16]`` category scores -> the category with the largest score per row.

    Ties (exactly equal means, which a real softmax practically never gives) go to the first category in
    alphabetical order, as texture-vs-shape's ``probabilities_to_decision`` does; model-vs-human's argsort leaves
    their order to numpy's sort implementation.
    """
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(CATEGORIES):
        raise ValueError(f'expected [N, 16] category scores, got shape {probabilities.shape}')
    return [CATEGORIES[index] for index in probabilities.argmax(axis=1)]


def _percent(count: int, total: int) -> float | None:
    return 100.0 * count / total if total else None


def accuracy(decisions: Sequence[str], categories: Sequence[str]) -> float | None:
    """16-class top-1 in percent (None without trials)."""
    if len(decisions) != len(categories):
        raise ValueError(f'{len(decisions)} decisions for {len(categories)} trials')
    return _percent(sum(decision == category for decision, category in zip(decisions, categories)), len(decisions))


def shape_bias_results(decisions: Sequence[str], shapes: Sequence[str], textures: Sequence[str]) -> dict[str, Any]:
    """Cue-conflict numbers from one decision per image (conflict-free images included; they are left out here).

    ``shape_bias``: shape / (shape + texture) decisions x 100 over the conflict images, None if there are neither;
    ``shape_match`` / ``texture_match``: percent of the conflict images; ``*_of_all_trials``: model-vs-human's
    fractions (same counts over all trials) x 100; ``per_category``: shape bias per shape category (None where
    the category has no shape or texture decision); ``ood_accuracy``: decisions equal to the shape category over
    all trials, the cue-conflict term of model-vs-human's OOD accuracy.
    """
    if not len(decisions) == len(shapes) == len(textures):
        raise ValueError(f'{len(decisions)} decisions for {len(shapes)} shapes and {len(textures)} textures')
    shape_count = texture_count = conflict_count = 0
    by_category: dict[str, list[int]] = {category: [0, 0] for category in CATEGORIES}
    for decision, shape, texture in zip(decisions, shapes, textures):
        if shape == texture:
            continue
        conflict_count += 1
        if decision == shape:
            shape_count += 1
            by_category[shape][0] += 1
        elif decision == texture:
            texture_count += 1
            by_category[shape][1] += 1
    num_trials = len(decisions)
    present = set(shapes)
    return {
        'shape_bias': _percent(shape_count, shape_count + texture_count),
        'shape_match': _percent(shape_count, conflict_count),
        'texture_match': _percent(texture_count, conflict_count),
        'num_samples': conflict_count,
        'num_excluded': num_trials - conflict_count,
        'num_trials': num_trials,
        'shape_match_of_all_trials': _percent(shape_count, num_trials),
        'texture_match_of_all_trials': _percent(texture_count, num_trials),
        'per_category': {category: _percent(counts[0], counts[0] + counts[1])
                         for category, counts in by_category.items() if category in present},
        'ood_accuracy': accuracy(decisions, shapes),
    }


def per_condition_accuracy(decisions: Sequence[str], trials: Sequence[Trial],
                           conditions: Sequence[str]) -> dict[str, float | None]:
    """Top-1 per condition, in the experiment's order (None for a condition without trials)."""
    grouped: dict[str | None, list[tuple[str, str]]] = defaultdict(list)
    for decision, trial in zip(decisions, trials, strict=True):
        grouped[trial.condition].append((decision, trial.category))
    return {condition: accuracy([pair[0] for pair in grouped[condition]], [pair[1] for pair in grouped[condition]])
            for condition in conditions}


def error_consistency(observed: float, expected: float) -> float:
    """Cohen's kappa of two observers' right/wrong trials; 1 when they agree on every trial."""
    if observed == 1.0:
        return 1.0
    return (observed - expected) / (1.0 - expected)


def consistency(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict[str, float]:
    """Trial-by-trial agreement of two observers on the same trials (fractions, kappa)."""
    if len(correct_a) != len(correct_b) or not correct_a:
        raise ValueError(f'consistency needs the same non-empty trials, got {len(correct_a)} and {len(correct_b)}')
    accuracy_a = sum(correct_a) / len(correct_a)
    accuracy_b = sum(correct_b) / len(correct_b)
    expected = accuracy_a * accuracy_b + (1 - accuracy_a) * (1 - accuracy_b)
    observed = sum(a == b for a, b in zip(correct_a, correct_b)) / len(correct_a)
    return {'accuracy_difference': (accuracy_a - accuracy_b) ** 2, 'observed_consistency': observed,
            'expected_consistency': expected, 'error_consistency': error_consistency(observed, expected)}


def _set_folder(human_data: Path, spec: SetSpec) -> Path:
    """``raw-data/<set>`` or the set's own folder."""
    if (human_data / spec.name).is_dir():
        return human_data / spec.name
    return human_data


def read_human_trials(human_data: str | os.PathLike, spec: SetSpec) -> list[HumanTrial]:
    """The ``subject-*`` rows of model-vs-human's raw-data CSVs for one set (model rows are ignored).

    Columns (case-insensitive, as ``read_all_csv_files_from_directory`` lower-cases them): ``subj``, ``session``,
    ``trial``, ``rt``, ``object_response``, ``category``, ``condition``, ``imagename``.
    """
    root = Path(human_data)
    if not root.is_dir():
        raise HumanDataError(f'--human-data folder not found: {root} (model-vs-human\'s raw-data/)')
    folder = _set_folder(root, spec)
    files = sorted(path for path in folder.iterdir() if path.suffix == '.csv' and path.is_file())
    trials: list[HumanTrial] = []
    for path in files:
        with open(path, newline='', encoding='utf-8') as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None:
                continue
            columns = {name.lower(): name for name in reader.fieldnames}
            needed = ('subj', 'object_response', 'category', 'condition', 'imagename')
            missing = [name for name in needed if name not in columns]
            if missing:
                raise HumanDataError(f'{path}: no column(s) {", ".join(missing)}; expected model-vs-human\'s '
                                     f'raw-data CSV (subj,session,trial,rt,object_response,category,condition,'
                                     f'imagename)')
            for row in reader:
                subject = row[columns['subj']]
                if not subject.startswith('subject-'):
                    continue
                trials.append(HumanTrial(
                    subject=subject, image_id=short_image_name(row[columns['imagename']]),
                    category=row[columns['category']], condition=_human_condition(row[columns['condition']], spec,
                                                                                  path),
                    response=row[columns['object_response']]))
    if not trials:
        raise HumanDataError(f'no human (subject-*) trials for {spec.name} in {folder}; point --human-data at '
                             f'model-vs-human\'s raw-data/ folder')
    return trials


def _human_condition(raw: str, spec: SetSpec, path: Path) -> str | None:
    if not spec.conditions:
        return None
    condition = canonical_condition(raw, spec.conditions)
    if condition is None:
        raise HumanDataError(f'{path}: condition {raw!r} is not one of {spec.name}\'s ({", ".join(spec.conditions)})')
    return condition


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None



def human_likeness(trials: Sequence[Trial], decisions: Sequence[str], human_trials: Sequence[HumanTrial],
                   spec: SetSpec) -> dict[str, Any]:
    """The model against every human observer, per condition and over the set's kept conditions.

    Trials are paired by image id within a condition; trials missing on either side (a skipped file, a partial
    tree) are left out and counted, summed over subjects, in ``unpaired_trials`` (0 for complete data, where
    model-vs-human asserts that the image ids agree). The set's values average over the kept conditions per
    subject, then over subjects, as model-vs-human's benchmark table does; ``per_condition`` holds every
    condition's mean over subjects (its error-consistency line plots).
    """
    model: dict[str | None, dict[str, bool]] = defaultdict(dict)
    for trial, decision in zip(trials, decisions, strict=True):
        model[trial.condition][trial.image_id] = decision == trial.category
    humans: dict[str, dict[str | None, dict[str, bool]]] = defaultdict(lambda: defaultdict(dict))
    for human in human_trials:
        humans[human.subject][human.condition][human.image_id] = human.correct
    conditions: list[str | None] = list(spec.conditions) if spec.conditions else [None]
    kept = set(spec.kept_conditions) if spec.conditions else {None}

    values: dict[str, dict[str | None, dict[str, float]]] = {}  # subject -> condition -> metric -> value
    unpaired = 0
    for subject in sorted(humans):
        values[subject] = {}
        for condition in conditions:
            theirs, ours = humans[subject].get(condition, {}), model.get(condition, {})
            paired = sorted(set(theirs) & set(ours))
            unpaired += len(set(theirs) ^ set(ours))
            if paired:
                values[subject][condition] = consistency([ours[image] for image in paired],
                                                         [theirs[image] for image in paired])
    result: dict[str, Any] = {'num_subjects': len(values), 'unpaired_trials': unpaired}
    for metric in METRIC_NAMES:
        per_subject = [_mean(by_condition[condition][metric] for condition in by_condition if condition in kept)
                       for by_condition in values.values()]
        result[metric] = _mean(value for value in per_subject if value is not None)
    if spec.conditions:
        result['per_condition'] = {
            condition: {metric: _mean(values[subject][condition][metric] for subject in values
                                      if condition in values[subject]) for metric in METRIC_NAMES}
            for condition in conditions}
        result['kept_conditions'] = list(spec.kept_conditions)
    return result


def human_shape_bias(human_trials: Sequence[HumanTrial]) -> dict[str, Any]:
    """The human observers' cue-conflict numbers, trials pooled over subjects (the "humans" line and points of
    model-vs-human's shape-bias figure, ``plot_shape_bias_matrixplot``); texture categories from the image ids."""
    return shape_bias_results([trial.response for trial in human_trials], [trial.category for trial in human_trials],
                              [texture_category(trial.image_id) for trial in human_trials])


def benchmark_means(entries: Mapping[str, Mapping[str, Any]],
                    sets: Sequence[str] = DEFAULT_SETS) -> dict[str, Any]:
    """model-vs-human's benchmark numbers from per-set results entries keyed by its set names (``edge``, ...).

    As ``modelvshuman/plotting/plot.py`` computes them: "OOD accuracy" (``get_mean_over_datasets``) is the plain
    mean over sets of each set's 16-class accuracy, every set weighing the same whatever its number of images; a
    set's accuracy pools its trials of the kept conditions (``EXCLUDE_CONDITIONS`` removed) and for cue-conflict
    counts decisions equal to the shape category over all trials: the sets' ``ood_accuracy``. The human-likeness
    metrics (``format_benchmark_df``) are the mean over sets of each set's value, itself the mean over its kept
    conditions and then over the observers (the sets' ``human_likeness``). Its tables average the sets it has data
    for, all 17 of ``DEFAULT_SETS`` in the published ones; ``sets`` and ``missing_sets`` say which went into these
    means, so that a mean over fewer sets does not pass for the published number. ``ood_accuracy`` is in percent
    like the sets' (its tables print the fraction: .559 there is 55.9 here); the human-likeness metrics keep its
    units. ``human_likeness`` is present only when some set was scored with human data, with the sets it covers.
    """
    scored = [name for name in sets if name in entries and entries[name].get('ood_accuracy') is not None]
    result: dict[str, Any] = {
        'ood_accuracy': _mean(entries[name]['ood_accuracy'] for name in scored), 'num_sets': len(scored),
        'sets': scored, 'missing_sets': [name for name in sets if name not in scored]}
    with_humans = [name for name in scored if all(
        (entries[name].get('human_likeness') or {}).get(metric) is not None for metric in METRIC_NAMES)]
    if with_humans:
        result['human_likeness'] = {
            **{metric: _mean(entries[name]['human_likeness'][metric] for name in with_humans)
               for metric in METRIC_NAMES},
            'num_sets': len(with_humans), 'sets': with_humans}
    return result
