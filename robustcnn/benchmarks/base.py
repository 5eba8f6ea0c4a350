"""What every evaluation set has in common: where its images sit, how folder names become labels, how it is
preprocessed by default, how it is scored and which numbers head its report.

Each set is one module defining a :class:`Benchmark`; ``robustcnn.benchmarks.BENCHMARKS`` lists them by the names
``validate.py --dataset`` accepts. The runner calls, for every set, :meth:`Benchmark.prepare` before the model
loads (cheap; a bad layout fails in a second) and :meth:`Benchmark.score` after; a set with its own metric
overrides ``score`` (and ``summary``) in its module, and nothing else changes.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..data.folder import list_class_folders, scan_class_folders
from ..data.label_space import LabelSpace

if TYPE_CHECKING:
    from .context import EvaluationContext
    from .runner import ValidationRequest

__all__ = ['PreparedData', 'Benchmark', 'ClassFolderBenchmark', 'DatasetLayoutError', 'normalized_name',
           'format_metric']

_logger = logging.getLogger(__name__)


class DatasetLayoutError(FileNotFoundError):
    """The dataset folder is missing or does not look like the dataset asked for (a user error, one line)."""


def normalized_name(name: str) -> str:
    """Folder-name matching that ignores case, dashes, underscores and spaces (ImageNet-R == imagenet_r)."""
    return ''.join(character for character in name.lower() if character.isalnum())


def format_metric(value: Any, digits: int = 2) -> str:
    """A number for a log line: ``n/a`` for missing or non-finite values."""
    return 'n/a' if value is None or (isinstance(value, float) and not math.isfinite(value)) else f'{value:.{digits}f}'


@dataclass
class PreparedData:
    """The samples to evaluate and how to score them; built before the model loads (cheap, catches bad input)."""

    benchmark: str
    root: Path
    samples: list[tuple[str, int]]
    label_subset: list[int] | None = None
    # A set scored by parts (ImageNet-C: ``corruption/severity``): group id per sample, names, files per group.
    sample_groups: list[int] | None = None
    group_names: list[str] = field(default_factory=list)
    group_sizes: list[int] = field(default_factory=list)
    notes: dict = field(default_factory=dict)
    label_space: LabelSpace | None = None

    def without_groups(self, names: Sequence[str]) -> 'PreparedData':
        """The same data minus the samples of the groups ``names`` (finished before a resume); the groups keep
        their ids and get size 0, so per-group counts still line up with ``group_names``."""
        dropped = {position for position, name in enumerate(self.group_names) if name in set(names)}
        if not dropped or self.sample_groups is None:
            return self
        kept = [position for position, group in enumerate(self.sample_groups) if group not in dropped]
        return dataclasses.replace(
            self, samples=[self.samples[position] for position in kept],
            sample_groups=[self.sample_groups[position] for position in kept],
            group_sizes=[0 if group in dropped else size for group, size in enumerate(self.group_sizes)])


class Benchmark:
    """Base class: subclasses set the attributes and override :meth:`prepare` where the layout differs."""

    name: str = ''
    title: str = ''
    description: str = ''
    default_resize_mode: str = 'resize_center_crop'
    # Folder names looked for under a suite root, in order (matched with :func:`normalized_name`).
    suite_folder_names: tuple[str, ...] = ()
    higher_is_better: bool = True
    # The entry's field that stands for the set in one-number tables (README row, figure bars).
    headline_metric: str = 'top1'
    # Sets of one family with numbers over all of them (model-vs-human's 17-set means) share this key: the runner
    # asks one of them for :meth:`suite_summary` after every set is scored; None: the set is in no such family.
    suite_summary_key: str | None = None

    def check_exists(self, data_dir: str | os.PathLike) -> Path:
        """Fail with one line if the folder is missing; cheap, done before anything expensive."""
        path = Path(data_dir)
        if not path.exists():
            raise DatasetLayoutError(f'{self.title} folder not found: {path} (check DATA_DIR)')
        if not path.is_dir():
            raise DatasetLayoutError(f'{self.title} path is not a folder: {path}')
        return path

    def detect(self, root: Path, strong: bool) -> str | None:
        """Why ``root`` looks like this set (None: it does not), for validate.py without --dataset.

        ``strong``: a layout no other set has (checked before folder names); otherwise a hint checked after them.
        """
        return None

    def default_label_space(self, data_dir: str | os.PathLike) -> LabelSpace | None:
        """The label space when neither --class-map nor the checkpoint gives one (None: ImageNet-1k)."""
        return None

    def prepare(self, data_dir: str | os.PathLike, label_space: LabelSpace,
                request: ValidationRequest | None = None) -> PreparedData:
        """Scan the files and check the layout, before the model loads (raise :class:`DatasetLayoutError`).

        ``request``: the run's settings, for sets with their own flags (None: the defaults).
        """
        raise NotImplementedError

    def score(self, context: EvaluationContext, prepared: PreparedData) -> dict[str, Any]:
        """Run the model over ``prepared`` and return this set's results-file entry."""
        raise NotImplementedError

    def summary(self, entry: Mapping[str, Any]) -> dict[str, float | None]:
        """The headline numbers of an entry, for report tables (first: :attr:`headline_metric`)."""
        return {self.headline_metric: entry.get(self.headline_metric)}

    def report_details(self, entry: Mapping[str, Any]) -> list[str]:
        """Markdown lines of a set-specific section of the report (ImageNet-C's corruption table); none here."""
        return []

    def suite_summary(self, results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
        """The family's entry under ``payload['summaries'][suite_summary_key]``, from every set's entry of the run
        (``results`` by dataset name), or None when none of the family's sets has a number in it.

        Called once per key, after the last set: a mean over sets must not be taken from a run half done.
        """
        return None

    def suite_summary_details(self, summary: Mapping[str, Any]) -> list[str]:
        """Markdown lines of the report for that summary (which sets it is over, and its numbers); none here."""
        return []

    def has_figure_panel(self, entry: Mapping[str, Any]) -> bool:
        """Whether the set draws a panel of its own in the report figure (cue-conflict's shape-bias plot)."""
        return False

    def draw_figure_panel(self, axis: Any, entry: Mapping[str, Any], model_name: str) -> None:
        """Draw that panel on a matplotlib ``axis``."""
        raise NotImplementedError


class ClassFolderBenchmark(Benchmark):
    """``root/<class folder>/<images>`` where the folder names are the model's class names (ImageNet wnids)."""

    # Sub-folders that hold the class folders when present (e.g. ImageNet's val/, ImageNet-Sketch's sketch/).
    image_subfolders: tuple[str, ...] = ()
    # The 200-class subsets of ImageNet-R/-A: classes scored, in target order; None scores every output.
    subset_class_names: tuple[str, ...] | None = None

    def image_root(self, data_dir: str | os.PathLike) -> Path:
        root = self.check_exists(data_dir)
        for subfolder in self.image_subfolders:
            if (root / subfolder).is_dir():
                return root / subfolder
        return root

    def folder_to_class(self, folder_names: Sequence[str], label_space: LabelSpace) -> Mapping[str, str]:
        """Class name for each folder name (identity for wnid folders)."""
        return {name: name for name in folder_names}

    def prepare(self, data_dir: str | os.PathLike, label_space: LabelSpace,
                request: ValidationRequest | None = None) -> PreparedData:
        root = self.image_root(data_dir)
        folders = list_class_folders(root)
        if not folders:
            raise DatasetLayoutError(f'no class folders under {root}; expected {self.title} as <class>/<images>')
        folder_classes = self.folder_to_class(folders, label_space)
        label_subset = None
        if self.subset_class_names is not None:
            label_subset = label_space.indices_of(self.subset_class_names, f'{self.title} (200-class subset)')
            positions = {name: position for position, name in enumerate(self.subset_class_names)}
            unknown = [folder for folder in folders if folder_classes[folder] not in positions]
            if unknown:
                raise DatasetLayoutError(
                    f'folder(s) {", ".join(unknown[:5])} under {root} are not {self.title} classes; '
                    f'is this the right dataset for --dataset {self.name}?'
                )
            class_to_index = {folder: positions[folder_classes[folder]] for folder in folders}
        else:
            unknown = [folder for folder in folders if folder_classes[folder] not in label_space.class_to_index]
            if unknown:
                raise DatasetLayoutError(
                    f'class folder(s) {", ".join(unknown[:5])}{" ..." if len(unknown) > 5 else ""} under {root} are '
                    f'not in the label space ({len(label_space)} classes, {label_space.source}); pass --class-map '
                    f'with the model\'s class list')
            class_to_index = {folder: label_space.class_to_index[folder_classes[folder]] for folder in folders}
        try:
            samples = scan_class_folders(root, class_to_index, folders)
        except ValueError as error:
            raise DatasetLayoutError(str(error)) from None
        if not samples:
            raise DatasetLayoutError(f'no image files under {root}/<class folders>')
        return PreparedData(benchmark=self.name, root=root, samples=samples, label_subset=label_subset,
                            label_space=label_space)

    def score(self, context: EvaluationContext, prepared: PreparedData) -> dict[str, Any]:
        """Top-1, top-5 and loss over every image (over the label subset where the set has one)."""
        preprocessing = context.preprocessing(self)
        _logger.info('%s: %d images from %s, preprocessing %s', self.name, len(prepared.samples), prepared.root,
                     preprocessing)
        result = context.evaluate(prepared, preprocessing, self.name)
        entry = result.metrics()
        entry['preprocessing'] = context.preprocessing_record(preprocessing)
        if prepared.label_subset is not None:
            entry['label_subset_size'] = len(prepared.label_subset)
        entry['elapsed_seconds'] = result.elapsed_seconds
        _logger.info('%s: top1 %s top5 %s loss %s over %d images (%d skipped files)', self.name,
                     format_metric(entry['top1']), format_metric(entry['top5']), format_metric(entry['loss'], 4),
                     entry['num_samples'], entry['skipped_files'])
        return entry
