"""The cue-conflict, edge and silhouette sets and model-vs-human's other 14, as evaluation sets.

Every set here is scored in model-vs-human's 16-class task: the model's 1000 ImageNet logits become 16 category
probabilities on the device (:class:`SixteenClassReduce`), the decision is the largest, and the results come from
the pure functions of :mod:`.metrics`, so :meth:`SixteenClassBenchmark.results` can be checked without a model.
The stimuli are 224x224 already: the default preprocessing is normalization only (model-vs-human's
``PytorchLoader`` with ``image_size=224``: ToTensor + Normalize, no resize, no crop); ``--resize_mode`` overrides.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...data.folder import IMAGE_EXTENSIONS, list_class_folders
from ...data.label_space import LabelSpace
from ..base import Benchmark, DatasetLayoutError, PreparedData
from .categories import CATEGORIES, SixteenClassReduce, category_index, check_imagenet_label_space
from .experiments import MODEL_VS_HUMAN_SETS, PARAMETRIC_SETS, SetSpec
from .filenames import canonical_condition, parse_cue_conflict_name, parse_session_name, short_image_name
from .metrics import (HumanTrial, Trial, accuracy, decide, human_likeness, human_shape_bias, per_condition_accuracy,
                      read_human_trials, shape_bias_results)

__all__ = ['StimulusSet', 'SixteenClassBenchmark', 'CueConflict', 'Edges', 'Silhouettes', 'SessionSet',
           'PARAMETRIC_BENCHMARKS', 'SKETCH', 'STYLIZED']


@dataclass
class StimulusSet(PreparedData):
    """Prepared samples plus what each file name says (``trials[i]`` describes ``samples[i]``)."""

    trials: list[Trial] = field(default_factory=list)
    human_trials: list[HumanTrial] | None = None


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

    def prepare(self, data_dir: str | os.PathLike, label_space: LabelSpace, request: Any = None) -> StimulusSet:
        """Parse every file name and read the human data (``request.human_data``) before the model loads."""
        check_imagenet_label_space(label_space, self.title)
        root = self.image_root(data_dir)
        try:
            scanned = self.scan(root)
        except ValueError as error:  # a file name that is not the scheme: name it, one line
            raise DatasetLayoutError(f'{self.title}: {error}') from None
        if not scanned:
            raise DatasetLayoutError(f'no {self.title} images under {root}; {self.layout_hint}')
        human_data = getattr(request, 'human_data', None)
        return StimulusSet(
            benchmark=self.name, root=root,
            samples=[(str(path), category_index(trial.category)) for path, trial in scanned],
            trials=[trial for _, trial in scanned],
            human_trials=read_human_trials(human_data, self.spec) if human_data else None,
        )

    def score(self, context: Any, prepared: StimulusSet) -> dict[str, Any]:
        preprocessing = context.preprocessing(self)
        predictions = context.predict(prepared, preprocessing, self.name, reduce=SixteenClassReduce())
        entry = self.results(prepared, predictions.outputs.numpy(), predictions.scored.numpy())
        skipped = predictions.skipped_files
        entry['skipped_files'] = skipped if isinstance(skipped, int) else len(skipped)
        entry['preprocessing'] = context.preprocessing_record(preprocessing)
        entry['elapsed_seconds'] = predictions.elapsed_seconds
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

    def summary(self, entry: dict[str, Any]) -> dict[str, float | None]:
        return {'top1': entry.get('top1')}


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

    def summary(self, entry: dict[str, Any]) -> dict[str, float | None]:
        return {name: entry.get(name) for name in ('shape_bias', 'shape_match', 'texture_match')}


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

    def summary(self, entry: dict[str, Any]) -> dict[str, float | None]:
        return {'ood_accuracy': entry.get('ood_accuracy'), 'top1': entry.get('top1')}


PARAMETRIC_BENCHMARKS: tuple[SessionSet, ...] = tuple(SessionSet(spec) for spec in PARAMETRIC_SETS)
# Named apart from ImageNet-Sketch and Stylized-ImageNet, whose suite folder names include 'sketch' and 'stylized'.
SKETCH = SessionSet(MODEL_VS_HUMAN_SETS['sketch'], name='mvh-sketch', title='model-vs-human sketch')
STYLIZED = SessionSet(MODEL_VS_HUMAN_SETS['stylized'], name='mvh-stylized', title='model-vs-human stylized')
