"""ImageNet-C (Hendrycks & Dietterich, ICLR 2019): the 50,000 validation images under 15 corruptions x 5 severities.

Layout: ``<root>/<corruption>/<severity 1..5>/<wnid>/<image>.JPEG`` (224x224 already), or with the download's
category level ``<root>/<noise|blur|weather|digital|extra>/<corruption>/...``. All 75 folders stream through one
data pipeline; each sample carries its (corruption, severity) group. A finished folder's counts are saved as
soon as every process is past it (a resume store beside the results file), so a killed run resumes there.

Metrics (errors are top-1 errors in percent):
- ``mean_corruption_error``: plain mean of the 75 errors (what the Robust-ResNet paper reports as "IN-C").
- ``mce``: mean Corruption Error; per corruption, sum over severities of our error / AlexNet's, averaged, x100.
- ``relative_mce``: per corruption, sum_s (E_s - E_clean) / sum_s (AlexNet_s - AlexNet_clean), averaged, x100.

Other corruption suites in this layout (ImageNet-C-bar, ImageNet-3DCC) subclass :class:`ImageNetC` with their own
corruption list; without AlexNet baselines they report the plain mean only (``alexnet_normalized = False``).
"""
from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..data.folder import list_class_folders, scan_class_folders
from ..data.label_space import LabelSpace
from ..engine.evaluate import GroupCounts, SampleGroups
from .base import Benchmark, DatasetLayoutError, PreparedData, format_metric

if TYPE_CHECKING:
    from .context import EvaluationContext
    from .runner import ValidationRequest

__all__ = [
    'CORRUPTION_CATEGORIES', 'CORRUPTIONS', 'EXTRA_CORRUPTIONS', 'SEVERITIES', 'ALEXNET_ERRORS',
    'ALEXNET_CLEAN_ERROR', 'ImageNetC', 'group_name', 'aggregate_corruption_errors', 'plain_corruption_aggregates',
]

_logger = logging.getLogger(__name__)

CORRUPTION_CATEGORIES: dict[str, tuple[str, ...]] = {
    'noise': ('gaussian_noise', 'shot_noise', 'impulse_noise'),
    'blur': ('defocus_blur', 'glass_blur', 'motion_blur', 'zoom_blur'),
    'weather': ('snow', 'frost', 'fog', 'brightness'),
    'digital': ('contrast', 'elastic_transform', 'pixelate', 'jpeg_compression'),
}
# The 15 corruptions every ImageNet-C number in the literature averages over.
CORRUPTIONS: tuple[str, ...] = tuple(name for names in CORRUPTION_CATEGORIES.values() for name in names)
# Held-out corruptions shipped as "extra"; evaluated only on request and never part of the aggregates.
EXTRA_CORRUPTIONS: tuple[str, ...] = ('speckle_noise', 'gaussian_blur', 'spatter', 'saturate')
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

# AlexNet's top-1 error (fraction) per corruption and severity 1..5 (Hendrycks & Dietterich 2019), the mCE baseline.
ALEXNET_ERRORS: dict[str, tuple[float, float, float, float, float]] = {
    'gaussian_noise': (0.69528, 0.82542, 0.93554, 0.98138, 0.99452),
    'shot_noise': (0.71224, 0.85108, 0.93574, 0.98182, 0.99146),
    'impulse_noise': (0.78374, 0.89808, 0.94870, 0.98720, 0.99548),
    'defocus_blur': (0.65624, 0.73202, 0.85036, 0.91364, 0.94714),
    'glass_blur': (0.64308, 0.75054, 0.88806, 0.91622, 0.93344),
    'motion_blur': (0.58430, 0.70048, 0.82108, 0.89750, 0.92638),
    'zoom_blur': (0.70008, 0.76992, 0.80784, 0.84198, 0.87198),
    'snow': (0.71726, 0.88392, 0.86468, 0.91870, 0.94952),
    'frost': (0.61390, 0.79734, 0.88790, 0.89942, 0.93430),
    'fog': (0.67474, 0.76050, 0.84378, 0.87260, 0.94500),
    'brightness': (0.45140, 0.48502, 0.54048, 0.62166, 0.72440),
    'contrast': (0.64548, 0.76150, 0.88874, 0.97760, 0.99270),
    'elastic_transform': (0.52596, 0.70116, 0.55686, 0.64076, 0.80554),
    'pixelate': (0.52218, 0.54620, 0.73728, 0.87092, 0.91262),
    'jpeg_compression': (0.51002, 0.54718, 0.57294, 0.65458, 0.74778),
}
# AlexNet's clean ImageNet top-1 error (fraction), Table 1 of the ImageNet-C paper; the relative mCE baseline.
ALEXNET_CLEAN_ERROR = 0.435


def group_name(corruption: str, severity: int) -> str:
    return f'{corruption}/{severity}'


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def aggregate_corruption_errors(
        errors: Mapping[str, Mapping[int, float]],
        clean_error: float | None = None,
) -> dict[str, Any]:
    """ImageNet-C aggregates from top-1 errors in percent, ``errors[corruption][severity]``.

    Only the 15 standard corruptions enter the aggregates. With severities or corruptions missing, each
    corruption's ratio uses the severities present (ours and AlexNet's over the same ones) and the result is
    marked ``partial``; ``clean_error`` (percent) enables ``relative_mce``.
    """
    present = [error for corruption in CORRUPTIONS for error in errors.get(corruption, {}).values()]
    normalized: dict[str, float] = {}
    relative: dict[str, float] = {}
    missing: list[str] = []
    for corruption in CORRUPTIONS:
        by_severity = errors.get(corruption, {})
        missing += [group_name(corruption, severity) for severity in SEVERITIES if severity not in by_severity]
        severities = [severity for severity in SEVERITIES if severity in by_severity]
        if not severities:
            continue
        ours = [by_severity[severity] / 100.0 for severity in severities]
        alexnet = [ALEXNET_ERRORS[corruption][severity - 1] for severity in severities]
        normalized[corruption] = 100.0 * sum(ours) / sum(alexnet)
        if clean_error is not None:
            clean = clean_error / 100.0
            relative[corruption] = 100.0 * (sum(ours) - clean * len(ours)) / (
                sum(alexnet) - ALEXNET_CLEAN_ERROR * len(alexnet))
    return {
        'mean_corruption_error': _mean(present),
        'mce': _mean(list(normalized.values())),
        'relative_mce': _mean(list(relative.values())) if clean_error is not None else None,
        'clean_error': clean_error,
        'corruption_errors': normalized,  # per corruption CE_c (AlexNet-normalized, percent)
        'partial': bool(missing),
        'missing': missing,
    }


def plain_corruption_aggregates(errors: Mapping[str, Mapping[int, float]],
                                corruptions: Sequence[str]) -> dict[str, Any]:
    """The plain mean of the top-1 errors (percent) of ``corruptions`` x 1..5, for suites without a baseline to
    normalize by; ``partial`` with the missing folders when some are absent."""
    present = [error for corruption in corruptions for error in errors.get(corruption, {}).values()]
    missing = [group_name(corruption, severity) for corruption in corruptions for severity in SEVERITIES
               if severity not in errors.get(corruption, {})]
    return {'mean_corruption_error': _mean(present), 'partial': bool(missing), 'missing': missing}


class ImageNetC(Benchmark):
    name = 'imagenet-c'
    title = 'ImageNet-C'
    description = ('15 corruptions x 5 severities of the validation images; mean top-1 error (and mCE), '
                   'lower is better')
    default_resize_mode = 'none'
    higher_is_better = False
    suite_folder_names = ('imagenet-c', 'imagenet_c', 'imagenetc')
    headline_metric = 'mean_corruption_error'
    # The set whose top-1 gives the clean error of relative mCE when --clean-error is not given (scored first).
    clean_set = 'imagenet'
    # What a corruption suite in this layout differs by (ImageNet-C-bar, ImageNet-3DCC override these): the
    # corruptions its aggregates average over, the held-out ones --extra-corruptions adds, the category folders of
    # the download, and whether AlexNet's errors normalize it (mCE, relative mCE).
    corruptions: tuple[str, ...] = CORRUPTIONS
    extra_corruptions: tuple[str, ...] = EXTRA_CORRUPTIONS
    corruption_categories: Mapping[str, tuple[str, ...]] = CORRUPTION_CATEGORIES
    alexnet_normalized = True

    def corruption_folder(self, root: Path, corruption: str) -> Path | None:
        """``root/<corruption>`` or ``root/<category>/<corruption>`` (the download's tar layout)."""
        if (root / corruption).is_dir():
            return root / corruption
        for category in (*self.corruption_categories, *(('extra',) if self.corruption_categories else ())):
            if (root / category / corruption).is_dir():
                return root / category / corruption
        return None

    def severity_folder(self, corruption_folder: Path, corruption: str, severity: int) -> Path | None:
        """``<corruption>/<severity>`` (a suite whose generator names the folders otherwise overrides this)."""
        folder = corruption_folder / str(severity)
        return folder if folder.is_dir() else None

    def detect(self, root: Path, strong: bool) -> str | None:
        if strong and any(self.corruption_folder(root, name) is not None for name in self.corruptions):
            return f'{self.title} corruption folders found'
        return None

    def find_groups(
            self, data_dir: str | os.PathLike, corruptions: Sequence[str], severities: Sequence[int] = SEVERITIES,
    ) -> tuple[dict[str, Path], list[str]]:
        """Folders of the requested groups that exist, and the names of those that do not."""
        root = self.check_exists(data_dir)
        found: dict[str, Path] = {}
        missing: list[str] = []
        for corruption in corruptions:
            folder = self.corruption_folder(root, corruption)
            for severity in severities:
                name = group_name(corruption, severity)
                severity_folder = self.severity_folder(folder, corruption, severity) if folder is not None else None
                if severity_folder is not None:
                    found[name] = severity_folder
                else:
                    missing.append(name)
        if not found:
            raise DatasetLayoutError(
                f'no {self.title} folders under {root}: expected <corruption>/<severity>/<wnid>/ images '
                f'(e.g. {root / corruptions[0] / "1"})'
            )
        return found, missing

    def prepare(self, data_dir: str | os.PathLike, label_space: LabelSpace,
                request: ValidationRequest | None = None) -> PreparedData:
        """Scan every requested folder (in parallel) into one sample list grouped by (corruption, severity).

        ``request.extra_corruptions`` adds the 4 held-out corruptions; ``request.allow_partial`` scores a tree
        with folders missing or empty (aggregates then marked partial).
        """
        extra_corruptions = bool(request and request.extra_corruptions)
        allow_partial = bool(request and request.allow_partial)
        corruptions = self.corruptions + (self.extra_corruptions if extra_corruptions else ())
        found, missing = self.find_groups(data_dir, corruptions)
        if missing and not allow_partial:
            raise DatasetLayoutError(
                f'{self.title} under {data_dir} is missing {len(missing)} of {len(missing) + len(found)} '
                f'corruption/severity folders: {", ".join(missing[:12])}{" ..." if len(missing) > 12 else ""}; '
                f'add --allow-partial to score what is there (aggregates marked partial)'
            )
        group_names = list(found)

        def scan(name: str) -> list[tuple[str, int]]:
            folder = found[name]
            try:
                return scan_class_folders(folder, label_space.class_to_index, list_class_folders(folder))
            except ValueError as error:
                raise DatasetLayoutError(str(error)) from None

        with ThreadPoolExecutor(max_workers=min(8, max(1, len(group_names)))) as pool:
            scanned = dict(zip(group_names, pool.map(scan, group_names)))
        samples: list[tuple[str, int]] = []
        sample_groups: list[int] = []
        group_sizes = []
        for group, name in enumerate(group_names):
            group_samples = scanned[name]
            samples += group_samples
            sample_groups += [group] * len(group_samples)
            group_sizes.append(len(group_samples))
        empty = [name for name in group_names if not scanned[name]]
        if empty and not allow_partial:
            raise DatasetLayoutError(f'{self.title} folder(s) without images: {", ".join(empty[:8])}')
        return PreparedData(
            benchmark=self.name, root=Path(data_dir), samples=samples, sample_groups=sample_groups,
            group_names=group_names, group_sizes=group_sizes,
            notes={'missing_groups': missing, 'corruptions': list(corruptions)}, label_space=label_space,
        )

    def score(self, context: EvaluationContext, prepared: PreparedData) -> dict[str, Any]:
        """Top-1 error of every folder in one pipeline, resumed from the folders an interrupted run finished."""
        runtime = context.runtime
        preprocessing = context.preprocessing(self)
        store = context.resume_store(self.name, prepared, preprocessing, fields=('correct', 'scored', 'skipped'))
        resumed = store.load_shared(prepared.group_names)  # the same names everywhere; counts on the main process
        if resumed:
            _logger.info('%s: resuming; %d of %d folders already finished (%s)', self.name, len(resumed),
                         len(prepared.group_names), store.path)
        remaining = prepared.without_groups(list(resumed))
        finished = {name: counts for name, counts in resumed.items() if counts}

        def record(counts: GroupCounts) -> None:
            if not runtime.is_main or store.path is None:
                return
            new = False
            for group in counts.finished(remaining.group_sizes):
                name = remaining.group_names[group]
                if remaining.group_sizes[group] and name not in finished:
                    finished[name] = {'correct': counts.correct[group], 'scored': counts.scored[group],
                                      'skipped': counts.skipped[group]}
                    new = True
            if new:
                store.save(finished)

        _logger.info('%s: %d images in %d folders to evaluate in one pipeline, preprocessing %s', self.name,
                     len(remaining.samples), len(prepared.group_names) - len(resumed), preprocessing)
        result = context.evaluate(remaining, preprocessing, self.name, sample_groups=SampleGroups(
            remaining.sample_groups or [], num_groups=len(remaining.group_names), on_update=record,
            sync_every=context.request.group_sync_every))
        counts = dict(finished)
        assert result.groups is not None
        for group, name in enumerate(remaining.group_names):
            if name not in counts and remaining.group_sizes[group]:
                counts[name] = {'correct': result.groups.correct[group], 'scored': result.groups.scored[group],
                                'skipped': result.groups.skipped[group]}
        entry = self.entry(counts, prepared, self.clean_error(context))
        entry['resumed_folders'] = len(resumed)
        entry['preprocessing'] = context.preprocessing_record(preprocessing)
        entry['elapsed_seconds'] = result.elapsed_seconds
        store.discard()  # complete: the results file now holds everything
        _logger.info('%s: mean_corruption_error %s, mce %s, relative_mce %s%s', self.name,
                     format_metric(entry['mean_corruption_error']), format_metric(entry.get('mce')),
                     format_metric(entry.get('relative_mce')), ' (PARTIAL)' if entry['partial'] else '')
        return entry

    def clean_error(self, context: EvaluationContext) -> float | None:
        """--clean-error, else the top-1 error of the clean set scored earlier in this run (None: neither)."""
        if not self.alexnet_normalized:
            return None
        if context.request.clean_error is not None:
            return context.request.clean_error
        clean = context.results.get(self.clean_set, {}).get('top1')
        return 100.0 - clean if isinstance(clean, float) and math.isfinite(clean) else None

    def entry(self, counts: Mapping[str, Mapping[str, int]], prepared: PreparedData,
              clean_error: float | None) -> dict[str, Any]:
        """The results entry from per-folder counts (``{'corruption/severity': {correct, scored, skipped}}``)."""
        errors: dict[str, dict[int, float]] = {}
        for name, folder_counts in counts.items():
            corruption, severity = name.split('/')
            if folder_counts['scored']:
                errors.setdefault(corruption, {})[int(severity)] = 100.0 * (
                    1.0 - folder_counts['correct'] / folder_counts['scored'])
        ordered = {corruption: {str(severity): errors[corruption][severity] for severity in SEVERITIES
                                if severity in errors[corruption]}
                   for corruption in prepared.notes['corruptions'] if corruption in errors}
        if not self.alexnet_normalized:
            plain = plain_corruption_aggregates(errors, self.corruptions)
            return {
                'mean_corruption_error': plain['mean_corruption_error'],
                'num_samples': sum(folder['scored'] for folder in counts.values()),
                'skipped_files': sum(folder['skipped'] for folder in counts.values()),
                'errors': ordered, 'partial': plain['partial'], 'missing': plain['missing'],
            }
        aggregates = aggregate_corruption_errors(errors, clean_error=clean_error)
        if prepared.label_space is not None and not prepared.label_space.is_imagenet_1k:
            # AlexNet's ImageNet-C errors are not a baseline for another label space: a number there would mislead
            _logger.info('imagenet-c: mce and relative_mce left out (null): they are normalized by AlexNet\'s '
                         'ImageNet-C errors, which exist for the 1000 ImageNet classes only')
            aggregates.update(mce=None, relative_mce=None, corruption_errors={})
        return {
            'mean_corruption_error': aggregates['mean_corruption_error'],
            'mce': aggregates['mce'],
            'relative_mce': aggregates['relative_mce'],
            'num_samples': sum(folder['scored'] for folder in counts.values()),
            'skipped_files': sum(folder['skipped'] for folder in counts.values()),
            'errors': ordered,
            'corruption_errors': aggregates['corruption_errors'],
            'clean_error': clean_error,
            'partial': aggregates['partial'],
            'missing': aggregates['missing'],
        }

    def summary(self, entry: Mapping[str, Any]) -> dict[str, float | None]:
        names = ('mean_corruption_error', 'mce', 'relative_mce') if self.alexnet_normalized else (
            'mean_corruption_error',)
        return {name: entry.get(name) for name in names}

    def report_details(self, entry: Mapping[str, Any]) -> list[str]:
        """The corruption x severity table of top-1 errors, with each corruption's AlexNet-normalized CE."""
        from ..report import format_cell
        errors = entry.get('errors')
        if not errors:
            return []
        severities = sorted({severity for by_severity in errors.values() for severity in by_severity}, key=int)
        normalized_column = ['CE (AlexNet = 100)'] if self.alexnet_normalized else []
        lines = ['', f'## {self.title} top-1 error (percent) by corruption and severity', '',
                 '| Corruption | ' + ' | '.join([*severities, 'mean', *normalized_column]) + ' |',
                 '|---|' + '---:|' * (len(severities) + 1 + len(normalized_column))]
        normalized = entry.get('corruption_errors') or {}
        for name, by_severity in errors.items():
            values = [by_severity.get(severity) for severity in severities]
            present = [value for value in values if value is not None]
            mean = sum(present) / len(present) if present else None
            cells = [name] + [format_cell(value) for value in values] + [format_cell(mean)]
            if self.alexnet_normalized:
                cells.append(format_cell(normalized.get(name)))
            lines.append('| ' + ' | '.join(cells) + ' |')
        if entry.get('partial'):
            lines += ['', f'Partial: {len(entry.get("missing", []))} folder(s) missing '
                          f'({", ".join(entry.get("missing", [])[:10])}); aggregates cover what is present.']
        return lines
