"""The cue-conflict, edge and silhouette sets and model-vs-human's other 14, as evaluation sets.

Every set here is scored in model-vs-human's 16-class task: the model's 1000 ImageNet logits become 16 category
probabilities on the device (:class:`SixteenClassReduce`), the decision is the largest, and the results come from
the pure functions of :mod:`.metrics`, so :meth:`SixteenClassBenchmark.results` can be checked without a model.
The stimuli are 224x224 already: the default preprocessing is normalization only (model-vs-human's
``PytorchLoader`` with ``image_size=224``: ToTensor + Normalize, no resize, no crop); ``--resize_mode`` overrides.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ...data.folder import IMAGE_EXTENSIONS, list_class_folders
from ...data.label_space import LabelSpace
from ..base import Benchmark, DatasetLayoutError, PreparedData, format_metric, normalized_name
from .categories import CATEGORIES, SixteenClassReduce, category_index, check_imagenet_label_space
from .experiments import DEFAULT_SETS, MODEL_VS_HUMAN_SETS, PARAMETRIC_SETS, SetSpec
from .filenames import canonical_condition, parse_cue_conflict_name, parse_session_name, short_image_name
from .metrics import (METRIC_NAMES, HumanTrial, Trial, accuracy, benchmark_means, decide, human_likeness,
                      human_shape_bias, per_condition_accuracy, read_human_trials, shape_bias_results)

if TYPE_CHECKING:
    from ..context import EvaluationContext
    from ..runner import ValidationRequest

__all__ = ['StimulusSet', 'SixteenClassBenchmark', 'CueConflict', 'Edges', 'Silhouettes', 'SessionSet',
           'PARAMETRIC_BENCHMARKS', 'SKETCH', 'STYLIZED', 'SHAPE_AND_HUMAN_BENCHMARKS', 'human_summary']

_logger = logging.getLogger(__name__)


@dataclass
class StimulusSet(PreparedData):
    """Prepared samples plus what each file name says (``trials[i]`` describes ``samples[i]``)."""

    trials: list[Trial] = field(default_factory=list)
    human_trials: list[HumanTrial] | None = None


def human_summary(entry: Mapping[str, Any]) -> dict[str, float | None]:
    """The human-likeness numbers of an entry scored with --human-data, for the report tables (none without)."""
    likeness = entry.get('human_likeness')
    return {name: likeness.get(name) for name in METRIC_NAMES} if likeness else {}


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, hidden ones ignored), sorted by path like ImageFolder."""
    found = []
    for directory, subfolders, files in os.walk(folder, followlinks=True):
        subfolders[:] = [name for name in subfolders if not name.startswith('.')]
        found += [Path(directory) / name for name in files
                  if not name.startswith('.') and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS]
    return sorted(found)


class SixteenClassBenchmark(Benchmark):
    """A set scored by the 16-class decision; subclasses say how to find and name the stimuli."""

    default_resize_mode = 'none'
    spec: SetSpec
    suite_summary_key = 'model-vs-human'
    # Sub-folders of the given folder that hold the stimuli when present (the repositories' folder names).
    image_subfolders: tuple[str, ...] = ()
    # The layout in one phrase, for the error when no image is found.
    layout_hint = ''

    def image_root(self, data_dir: str | os.PathLike) -> Path:
        root = self.check_exists(data_dir)
        for subfolder in self.image_subfolders:
            if (root / subfolder).is_dir():
                return root / subfolder
        return root

    def scan(self, root: Path) -> list[tuple[Path, Trial]]:
        raise NotImplementedError

    def prepare(self, data_dir: str | os.PathLike, label_space: LabelSpace,
                request: ValidationRequest | None = None) -> StimulusSet:
        """Parse every file name and read the human data (``request.human_data``) before the model loads."""
        check_imagenet_label_space(label_space, self.title)
        root = self.image_root(data_dir)
        try:
            scanned = self.scan(root)
        except ValueError as error:  # a file name that is not the scheme: name it, one line
            raise DatasetLayoutError(f'{self.title}: {error}') from None
        if not scanned:
            raise DatasetLayoutError(f'no {self.title} images under {root}; {self.layout_hint}')
        human_data = request.human_data if request is not None else None
        return StimulusSet(
            benchmark=self.name, root=root,
            samples=[(str(path), category_index(trial.category)) for path, trial in scanned],
            trials=[trial for _, trial in scanned], label_space=label_space,
            human_trials=read_human_trials(human_data, self.spec) if human_data else None,
        )

    def score(self, context: EvaluationContext, prepared: StimulusSet) -> dict[str, Any]:
        """Every image's 16 category probabilities (reduced on the device), then the set's metrics."""
        preprocessing = context.preprocessing(self)
        _logger.info('%s: %d images from %s, preprocessing %s, 16-class decision by mean probability', self.name,
                     len(prepared.samples), prepared.root, preprocessing)
        predictions = context.predict(prepared, preprocessing, self.name, reduce=SixteenClassReduce())
        entry = self.results(prepared, predictions.outputs.numpy(), predictions.scored.numpy())
        skipped = predictions.skipped_files
        entry['skipped_files'] = skipped if isinstance(skipped, int) else len(skipped)
        entry['preprocessing'] = context.preprocessing_record(preprocessing)
        entry['elapsed_seconds'] = predictions.elapsed_seconds
        _logger.info('%s: %s over %d images (%d skipped files)', self.name,
                     ', '.join(f'{name} {format_metric(value, 3 if name in METRIC_NAMES else 2)}'
                               for name, value in self.summary(entry).items()),
                     entry['num_samples'], entry['skipped_files'])
        return entry

    def results(self, prepared: StimulusSet, probabilities: np.ndarray,
                scored: np.ndarray | None = None) -> dict[str, Any]:
        """The results-file entry from every sample's 16 category probabilities (unscored rows left out)."""
        probabilities = np.asarray(probabilities)
        if len(probabilities) != len(prepared.trials):
            raise ValueError(f'{len(probabilities)} outputs for {len(prepared.trials)} {self.title} images')
        keep = np.ones(len(probabilities), dtype=bool) if scored is None else np.asarray(scored, dtype=bool)
        trials = [trial for trial, kept in zip(prepared.trials, keep) if kept]
        decisions = decide(probabilities[keep]) if keep.any() else []
        entry = self.metrics(trials, decisions)
        if prepared.human_trials is not None:
            entry['human_likeness'] = human_likeness(trials, decisions, prepared.human_trials, self.spec)
        return entry

    def metrics(self, trials: Sequence[Trial], decisions: Sequence[str]) -> dict[str, Any]:
        top1 = accuracy(decisions, [trial.category for trial in trials])
        return {'top1': top1, 'ood_accuracy': top1, 'num_samples': len(trials)}

    def summary(self, entry: Mapping[str, Any]) -> dict[str, float | None]:
        return {'top1': entry.get('top1'), **human_summary(entry)}

    def suite_summary(self, results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
        """model-vs-human's benchmark means (:func:`.metrics.benchmark_means`) over this family's sets in the run,
        one hook for all 17 (every set of this module inherits it); None when none of them has a score."""
        spec_names = {benchmark.name: benchmark.spec.name for benchmark in SHAPE_AND_HUMAN_BENCHMARKS}
        means = benchmark_means({spec_names[name]: entry for name, entry in results.items() if name in spec_names})
        if not means['num_sets']:
            return None
        text = (f'OOD accuracy {format_metric(means["ood_accuracy"])} over {means["num_sets"]} of its '
                f'{len(DEFAULT_SETS)} sets')
        likeness = means.get('human_likeness')
        if likeness:
            text += '; ' + ', '.join(f'{name} {format_metric(likeness[name], 3)}' for name in METRIC_NAMES)
            text += f' over {likeness["num_sets"]}'
        _logger.info('model-vs-human: %s', text)
        return means

    def suite_summary_details(self, summary: Mapping[str, Any]) -> list[str]:
        """The means as model-vs-human's two benchmark tables give them, and which sets they are over."""
        from ...report import format_cell
        likeness = summary.get('human_likeness') or {}
        total = len(DEFAULT_SETS)
        notes = [f'OOD accuracy: the mean of the sets\' `ood_accuracy`, each set weighing the same, over '
                 f'{", ".join(summary.get("sets") or [])}.']
        if likeness:
            notes.append(f'Human-likeness (model-vs-human\'s units): the mean of the sets\' values, over the '
                         f'{likeness.get("num_sets")} set(s) scored with --human-data: '
                         f'{", ".join(likeness.get("sets") or [])}.')
        missing = summary.get('missing_sets') or []
        if missing:
            notes.append(f'Not in this run: {", ".join(missing)}. model-vs-human\'s published tables average all '
                         f'{total} sets: these means are over fewer and not comparable with them.')
        else:
            notes.append(f'All {total} sets: comparable with model-vs-human\'s published tables.')
        return ['', f'## model-vs-human benchmark means (over {summary.get("num_sets")} of its {total} sets)', '',
                '| OOD accuracy (%) | accuracy difference | observed consistency | error consistency |',
                '|---:|---:|---:|---:|',
                f'| {format_cell(summary.get("ood_accuracy"))} | '
                + ' | '.join(format_cell(likeness.get(name), 3) for name in METRIC_NAMES) + ' |',
                '', ' '.join(notes)]


class _CategoryFolderSet(SixteenClassBenchmark):
    """``<category>/<images>`` with the category as folder name (model-vs-human's ``ImageNetInfoMapping``)."""

    layout_hint = 'expected <category>/<images> folders named by the 16 categories'

    def category_folders(self, root: Path) -> list[str]:
        folders = list_class_folders(root)
        if any(folder.startswith('session-') for folder in folders) or (root / 'dnn').is_dir():
            raise ValueError(f'{root} holds model-vs-human session folders (dnn/session-N), not <category>/ '
                             f'folders; is this the right set for --dataset {self.name}?')
        unknown = [folder for folder in folders if folder not in CATEGORIES]
        if unknown:
            raise ValueError(f'folder(s) {", ".join(unknown[:5])} under {root} are not among the 16 categories '
                             f'({", ".join(CATEGORIES)}); is this the right set for --dataset {self.name}?')
        return folders

    def trial(self, folder: str, path: Path) -> Trial:
        return Trial(image_id=short_image_name(path.name), category=folder)

    def scan(self, root: Path) -> list[tuple[Path, Trial]]:
        return [(path, self.trial(folder, path)) for folder in self.category_folders(root)
                for path in _image_files(root / folder)]


class CueConflict(_CategoryFolderSet):
    """Geirhos et al. 2019's 1,280 style-transfer images: shape of one category, texture of another."""

    name = 'cue-conflict'
    title = 'Cue-conflict'
    description = ('texture-vs-shape style-transfer stimuli; shape bias (% shape among shape+texture decisions), '
                   'higher is more shape-biased')
    suite_folder_names = ('cue-conflict', 'cue_conflict', 'cueconflict', 'style-transfer-preprocessed-512')
    image_subfolders = ('style-transfer-preprocessed-512', 'cue-conflict')
    layout_hint = 'expected <shape category>/<shape><n>-<texture><m>.png (style-transfer-preprocessed-512)'
    spec = MODEL_VS_HUMAN_SETS['cue-conflict']
    headline_metric = 'shape_bias'

    def detect(self, root: Path, strong: bool) -> str | None:
        """Category folders whose first file is named ``<shape><n>-<texture><m>.png``: a layout of its own."""
        if not strong:
            return None
        folder = next((root / name for name in self.image_subfolders if (root / name).is_dir()), root)
        for category in CATEGORIES:
            files = sorted(path.name for path in _image_files(folder / category))[:1] \
                if (folder / category).is_dir() else []
            if files:
                try:
                    parse_cue_conflict_name(category, files[0])
                except ValueError:
                    return None
                return 'cue-conflict file names (<shape><n>-<texture><m>.png)'
        return None

    def trial(self, folder: str, path: Path) -> Trial:
        name = parse_cue_conflict_name(folder, path.name)
        return Trial(image_id=short_image_name(path.name), category=name.shape, texture=name.texture)

    def metrics(self, trials: Sequence[Trial], decisions: Sequence[str]) -> dict[str, Any]:
        return shape_bias_results(decisions, [trial.category for trial in trials],
                                  [trial.texture or '' for trial in trials])

    def results(self, prepared: StimulusSet, probabilities: np.ndarray,
                scored: np.ndarray | None = None) -> dict[str, Any]:
        entry = super().results(prepared, probabilities, scored)
        if prepared.human_trials is not None:  # the reference the shape-bias figure draws beside the model
            humans = human_shape_bias(prepared.human_trials)
            entry['humans'] = {name: humans[name] for name in ('shape_bias', 'per_category', 'num_trials')}
        return entry

    def report_details(self, entry: Mapping[str, Any]) -> list[str]:
        """Shape bias per shape category (the figure's points), the model's beside the humans' when given."""
        from ...report import format_cell
        per_category = entry.get('per_category')
        if not per_category:
            return []
        humans = (entry.get('humans') or {}).get('per_category') or {}
        lines = ['', '## Cue-conflict shape bias by category (percent shape among shape + texture decisions)', '',
                 '| Category | model |' + (' humans |' if humans else ''), '|---|---:|' + ('---:|' if humans else '')]
        for category, value in per_category.items():
            lines.append(f'| {category} | {format_cell(value)} |' + (f' {format_cell(humans.get(category))} |'
                                                                   if humans else ''))
        lines += ['', f'{entry.get("num_samples")} conflict images scored, {entry.get("num_excluded")} without a '
                      f'conflict (shape = texture) left out; over all {entry.get("num_trials")} trials, shape '
                      f'decisions {format_cell(entry.get("shape_match_of_all_trials"))}%, texture decisions '
                      f'{format_cell(entry.get("texture_match_of_all_trials"))}% (model-vs-human\'s fractions).']
        return lines

    def has_figure_panel(self, entry: Mapping[str, Any]) -> bool:
        return bool(entry.get('per_category'))

    def draw_figure_panel(self, axis: Any, entry: Mapping[str, Any], model_name: str) -> None:
        from .figure import draw_shape_bias
        draw_shape_bias(axis, entry, model_name)

    def summary(self, entry: Mapping[str, Any]) -> dict[str, float | None]:
        numbers = {name: entry.get(name) for name in ('shape_bias', 'shape_match', 'texture_match')}
        if entry.get('humans'):
            numbers['human_shape_bias'] = entry['humans'].get('shape_bias')
        return {**numbers, **human_summary(entry)}


class Edges(_CategoryFolderSet):
    name = 'edges'
    title = 'Edges'
    description = '160 edge maps of the 16 categories (texture-vs-shape); 16-class top-1, higher is better'
    suite_folder_names = ('edges', 'edge')
    image_subfolders = ('edges', 'edge')
    spec = MODEL_VS_HUMAN_SETS['edge']


class Silhouettes(_CategoryFolderSet):
    name = 'silhouettes'
    title = 'Silhouettes'
    description = '160 filled silhouettes of the 16 categories (texture-vs-shape); 16-class top-1, higher is better'
    suite_folder_names = ('silhouettes', 'filled-silhouettes', 'silhouette')
    image_subfolders = ('filled-silhouettes', 'silhouettes', 'silhouette')
    spec = MODEL_VS_HUMAN_SETS['silhouette']


class SessionSet(SixteenClassBenchmark):
    """A model-vs-human download with sessions: ``<set>/dnn/session-<k>/<trial>_<abbr>_dnn_<condition>_<category>_...``.

    One class for the twelve parametric sets and sketch/stylized; the spec says the conditions. Per-condition
    accuracy, and ``ood_accuracy``: the accuracy over the conditions model-vs-human's benchmark keeps (pooled
    trials, as its ``get_mean_over_datasets`` computes it), the number its "OOD accuracy" averages over sets.
    """

    layout_hint = 'expected dnn/session-1/<trial>_<set>_dnn_<condition>_<category>_<xx>_<image> (model-vs-human)'
    headline_metric = 'ood_accuracy'

    def __init__(self, spec: SetSpec, name: str | None = None, title: str | None = None) -> None:
        self.spec = spec
        self.name = name or spec.name
        self.title = title or f'model-vs-human {spec.name}'
        kind = f'{len(spec.conditions)} conditions' if spec.conditions else 'one condition'
        self.description = f'model-vs-human {spec.name} ({kind}); 16-class top-1, higher is better'
        self.suite_folder_names = (self.name, spec.name) if self.name != spec.name else (spec.name,)

    def image_root(self, data_dir: str | os.PathLike) -> Path:
        root = self.check_exists(data_dir)
        return root / 'dnn' if (root / 'dnn').is_dir() else root

    def detect(self, root: Path, strong: bool) -> str | None:
        """``<set>/dnn/session-N/`` under this set's folder name: model-vs-human's own layout, and the only way to
        tell its ``sketch/`` and ``stylized/`` from ImageNet-Sketch's and Stylized-ImageNet's folders."""
        if not strong:
            return None
        folder = root if root.name == 'dnn' else root / 'dnn'
        if normalized_name(folder.parent.name) not in {normalized_name(name) for name in self.suite_folder_names}:
            return None
        if folder.is_dir() and any(entry.is_dir() and entry.name.startswith('session-') for entry in folder.iterdir()):
            return f'model-vs-human {self.spec.name}/dnn/session-N folders'
        return None

    def scan(self, root: Path) -> list[tuple[Path, Trial]]:
        sessions = list_class_folders(root)
        if not sessions or not all(folder.startswith('session-') for folder in sessions):
            raise ValueError(f'{root} is not model-vs-human\'s dnn/ folder (only session-N sub-folders); '
                             f'{self.layout_hint}')
        scanned = []
        for session in sessions:
            for path in _image_files(root / session):
                parsed = parse_session_name(path.name)
                condition = None
                if self.spec.conditions:
                    condition = canonical_condition(parsed.condition, self.spec.conditions)
                    if condition is None:
                        raise ValueError(f'{path.name}: condition {parsed.condition!r} is not one of '
                                         f'{self.spec.name}\'s ({", ".join(self.spec.conditions)})')
                scanned.append((path, Trial(image_id=short_image_name(path.name), category=parsed.category,
                                            condition=condition)))
        return scanned

    def metrics(self, trials: Sequence[Trial], decisions: Sequence[str]) -> dict[str, Any]:
        entry = super().metrics(trials, decisions)
        if self.spec.conditions:
            kept = set(self.spec.kept_conditions)
            pairs = [(decision, trial.category) for decision, trial in zip(decisions, trials)
                     if trial.condition in kept]
            entry['ood_accuracy'] = accuracy([pair[0] for pair in pairs], [pair[1] for pair in pairs])
            entry['per_condition'] = per_condition_accuracy(decisions, trials, self.spec.conditions)
            entry['excluded_conditions'] = list(self.spec.excluded_conditions)
        return entry

    def summary(self, entry: Mapping[str, Any]) -> dict[str, float | None]:
        return {'ood_accuracy': entry.get('ood_accuracy'), 'top1': entry.get('top1'), **human_summary(entry)}

    def report_details(self, entry: Mapping[str, Any]) -> list[str]:
        """Accuracy per condition (model-vs-human's accuracy plots), with the human-likeness numbers when given."""
        from ...report import format_cell
        per_condition = entry.get('per_condition')
        if not per_condition:
            return []
        likeness = (entry.get('human_likeness') or {}).get('per_condition') or {}
        labels = dict(zip(self.spec.conditions, self.spec.condition_labels))
        header = f'| {self.spec.condition_axis} | condition | 16-class top-1 | in OOD accuracy |'
        rule = '|---|---|---:|---|'
        if likeness:
            header += ' accuracy difference | observed consistency | error consistency |'
            rule += '---:|---:|---:|'
        lines = ['', f'## {self.title}: accuracy by condition (percent)', '', header, rule]
        excluded = set(entry.get('excluded_conditions') or ())
        for condition, value in per_condition.items():
            cells = [labels.get(condition, condition), condition, format_cell(value),
                     'no' if condition in excluded else 'yes']
            if likeness:
                cells += [format_cell((likeness.get(condition) or {}).get(name), 3) for name in METRIC_NAMES]
            lines.append('| ' + ' | '.join(cells) + ' |')
        return lines


PARAMETRIC_BENCHMARKS: tuple[SessionSet, ...] = tuple(SessionSet(spec) for spec in PARAMETRIC_SETS)
# Named apart from ImageNet-Sketch and Stylized-ImageNet, which also own the folder names 'sketch' and 'stylized'
# (the suite gives such a folder to the set whose layout it has: dnn/session-N is model-vs-human's).
SKETCH = SessionSet(MODEL_VS_HUMAN_SETS['sketch'], name='mvh-sketch', title='model-vs-human sketch')
STYLIZED = SessionSet(MODEL_VS_HUMAN_SETS['stylized'], name='mvh-stylized', title='model-vs-human stylized')
# Every set of this package, in the order the suite scores them (model-vs-human's table order).
SHAPE_AND_HUMAN_BENCHMARKS: tuple[SixteenClassBenchmark, ...] = (
    Edges(), Silhouettes(), CueConflict(), *PARAMETRIC_BENCHMARKS, SKETCH, STYLIZED)
