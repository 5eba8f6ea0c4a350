"""Results -> JSON / CSV / Markdown files and PNG figures, every file written atomically.

The JSON layout is the contract other tools read::

    {"model": ..., "checkpoint": ..., "results": {
        "imagenet-r": {"top1": 45.9, "top5": ..., "loss": ..., "num_samples": 30000, "skipped_files": 0},
        "imagenet-c": {"mean_corruption_error": 42.3, "mce": ..., "relative_mce": null, "num_samples": ...,
                       "skipped_files": 0, "errors": {"gaussian_noise": {"1": 31.2, ...}, ...}}}}

Percentages throughout; metric names are exact (``mean_corruption_error`` is never called mCE).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .checkpoint import atomic_write_bytes, atomic_write_text

__all__ = ['RESULT_SUFFIXES', 'README_COLUMNS', 'FigureBar', 'check_results_path', 'write_results', 'results_to_json',
           'results_to_csv', 'results_to_markdown', 'readme_row', 'write_figure', 'round_floats']

RESULT_SUFFIXES = ('.json', '.csv', '.md')
# (dataset, column title, metric): the README table's columns, then the extra sets.
README_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ('imagenet', 'ImageNet↑', 'top1'),
    ('stylized-imagenet', 'Stylized-ImageNet↑', 'top1'),
    ('imagenet-c', 'ImageNet-C↓', 'mean_corruption_error'),
    ('imagenet-r', 'ImageNet-R↑', 'top1'),
    ('imagenet-sketch', 'ImageNet-Sketch↑', 'top1'),
    ('imagenet-a', 'ImageNet-A↑', 'top1'),
    ('imagenet-v2', 'ImageNet-V2↑', 'top1'),
)
_SUMMARY_FIELDS = ('top1', 'top5', 'loss', 'mean_corruption_error', 'mce', 'relative_mce', 'num_samples',
                   'skipped_files')


def check_results_path(path: str | os.PathLike) -> Path:
    """Fail early (before any evaluation) on a results file type we cannot write."""
    path = Path(path)
    if path.suffix.lower() not in RESULT_SUFFIXES:
        raise ValueError(f'--results-file must end in {", ".join(RESULT_SUFFIXES)}, got {path.name}')
    return path


def round_floats(value: Any, digits: int = 4) -> Any:
    """Round floats for readable files; NaN/inf become null (JSON has no NaN)."""
    if isinstance(value, float):
        return round(value, digits) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {key: round_floats(item, digits) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [round_floats(item, digits) for item in value]
    return value


def results_to_json(payload: Mapping[str, Any]) -> str:
    return json.dumps(round_floats(payload), indent=2, ensure_ascii=False) + '\n'


def results_to_csv(payload: Mapping[str, Any]) -> str:
    """One row per dataset with the summary metrics (ImageNet-C's per-folder errors are in JSON/Markdown)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    writer.writerow(('model', 'checkpoint', 'dataset') + _SUMMARY_FIELDS)
    for dataset, metrics in payload.get('results', {}).items():
        row = [payload.get('model'), payload.get('checkpoint'), dataset]
        for name in _SUMMARY_FIELDS:
            value = round_floats(metrics.get(name))
            row.append('' if value is None else value)
        writer.writerow(row)
    return buffer.getvalue()


def _format(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return '–'
    if isinstance(value, float):
        return f'{value:.{digits}f}'
    return str(value)


def readme_row(payload: Mapping[str, Any], columns: Sequence[tuple[str, str, str]] = README_COLUMNS[:5]) -> str:
    """The README table row: ``| model | ImageNet | Stylized | IN-C | IN-R | Sketch |`` (– where not measured)."""
    results = payload.get('results', {})
    cells = [str(payload.get('model'))]
    for dataset, _, metric in columns:
        entry = results.get(dataset)
        value = entry.get(metric) if entry else None
        cell = _format(value, 1)
        if entry and entry.get('partial'):
            cell += ' (partial)'
        cells.append(cell)
    return '| ' + ' | '.join(cells) + ' |'


def _readme_header(columns: Sequence[tuple[str, str, str]]) -> str:
    titles = ['Model'] + [title for _, title, _ in columns]
    return '| ' + ' | '.join(titles) + ' |\n|' + '|'.join([' --- '] + [' :---: '] * len(columns)) + '|'


def results_to_markdown(payload: Mapping[str, Any]) -> str:
    """A readable report: the README row, a summary per dataset, and ImageNet-C's corruption x severity table."""
    results = payload.get('results', {})
    lines = [f'# Evaluation of `{payload.get("model")}`', '']
    if payload.get('checkpoint'):
        lines += [f'Checkpoint: `{payload["checkpoint"]}`', '']
    columns = [column for column in README_COLUMNS if column[0] in results] or list(README_COLUMNS[:5])
    readme_columns = list(README_COLUMNS[:5]) + [column for column in README_COLUMNS[5:] if column in columns]
    lines += ['## Robustness table (README columns; percent)', '', _readme_header(readme_columns),
              readme_row(payload, readme_columns), '']
    lines += ['## Per dataset', '', '| Dataset | top-1 | top-5 | loss | mean corruption error | mCE | relative mCE '
              '| images | skipped files |', '|---|---:|---:|---:|---:|---:|---:|---:|---:|']
    for dataset, metrics in results.items():
        lines.append('| ' + ' | '.join([dataset] + [
            _format(metrics.get(name), 4 if name == 'loss' else 2) for name in _SUMMARY_FIELDS]) + ' |')
    corruption = results.get('imagenet-c')
    if corruption and corruption.get('errors'):
        errors = corruption['errors']
        severities = sorted({severity for by_severity in errors.values() for severity in by_severity}, key=int)
        lines += ['', '## ImageNet-C top-1 error (percent) by corruption and severity', '',
                  '| Corruption | ' + ' | '.join(severities) + ' | mean | CE (AlexNet = 100) |',
                  '|---|' + '---:|' * (len(severities) + 2)]
        normalized = corruption.get('corruption_errors') or {}
        for name, by_severity in errors.items():
            values = [by_severity.get(severity) for severity in severities]
            present = [value for value in values if value is not None]
            mean = sum(present) / len(present) if present else None
            lines.append('| ' + ' | '.join([name] + [_format(value) for value in values]
                                           + [_format(mean), _format(normalized.get(name))]) + ' |')
        if corruption.get('partial'):
            lines += ['', f'Partial: {len(corruption.get("missing", []))} folder(s) missing '
                          f'({", ".join(corruption.get("missing", [])[:10])}); aggregates cover what is present.']
    return '\n'.join(lines) + '\n'


def write_results(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` as JSON, CSV or Markdown by the file's extension, atomically."""
    path = check_results_path(path)
    suffix = path.suffix.lower()
    if suffix == '.json':
        text = results_to_json(payload)
    elif suffix == '.csv':
        text = results_to_csv(payload)
    else:
        text = results_to_markdown(payload)
    return atomic_write_text(text, path)


@dataclass(frozen=True)
class FigureBar:
    """One bar of the figure's bar chart. ``kind`` 'accuracy' bars are read against the chance line; 'ratio' bars
    (e.g. shape bias, a share of decisions) are drawn apart, hatched, and not compared with it."""

    label: str
    value: float
    kind: str = 'accuracy'


def write_figure(path: str | os.PathLike, payload: Mapping[str, Any], *, bars: Sequence[FigureBar] | None = None,
                 chance: float | None = None, chance_label: str = 'chance', bar_title: str | None = None,
                 corruption_title: str = 'ImageNet-C top-1 error (%)') -> Path:
    """PNG: ImageNet-C error as a corruption x severity heat map and top-1 across the other sets as bars.

    ``bars`` replaces the default bars (top-1 of every set but ImageNet-C); ``chance`` draws the top-1 of a guess
    as a line; the titles name what the panels show (the demo's corruptions are synthetic, not ImageNet-C).
    """
    import matplotlib
    matplotlib.use('Agg', force=True)
    from matplotlib import pyplot as plt

    results = payload.get('results', {})
    corruption = results.get('imagenet-c')
    if bars is None:
        bars = [FigureBar(name, entry['top1']) for name, entry in results.items()
                if name != 'imagenet-c' and entry.get('top1') is not None and math.isfinite(entry['top1'])]
    bars = [bar for bar in bars if bar.value is not None and math.isfinite(bar.value)]
    has_heat_map = bool(corruption and corruption.get('errors'))
    panels = int(has_heat_map) + int(bool(bars))
    if panels == 0:
        raise ValueError('nothing to plot: no ImageNet-C errors and no top-1 results')
    figure, axes = plt.subplots(1, panels, figsize=(7 * panels, 6.5), squeeze=False)
    axes = list(axes[0])
    if has_heat_map:
        axis = axes.pop(0)
        errors = corruption['errors']
        names = list(errors)
        severities = sorted({severity for by_severity in errors.values() for severity in by_severity}, key=int)
        grid = [[errors[name].get(severity, math.nan) for severity in severities] for name in names]
        image = axis.imshow(grid, cmap='viridis_r', vmin=0, vmax=100, aspect='auto')
        axis.set_xticks(range(len(severities)), severities)
        axis.set_yticks(range(len(names)), names)
        axis.set_xlabel('severity')
        for row, values in enumerate(grid):
            for column, value in enumerate(values):
                if math.isfinite(value):
                    axis.text(column, row, f'{value:.1f}', ha='center', va='center', fontsize=7,
                              color='white' if value > 50 else 'black')
        title = corruption_title
        if corruption.get('mean_corruption_error') is not None:
            title += f'\nmean {corruption["mean_corruption_error"]:.1f}'
        if corruption.get('mce') is not None:
            title += f', mCE {corruption["mce"]:.1f}'
        axis.set_title(title)
        figure.colorbar(image, ax=axis, label='top-1 error (%)')
    if bars:
        axis = axes.pop(0)
        positions = list(range(len(bars)))
        accuracy = [index for index, bar in enumerate(bars) if bar.kind == 'accuracy']
        drawn = axis.bar(positions, [bar.value for bar in bars],
                         color=['tab:blue' if bar.kind == 'accuracy' else 'white' for bar in bars],
                         edgecolor=['tab:blue' if bar.kind == 'accuracy' else 'tab:orange' for bar in bars],
                         hatch=[None if bar.kind == 'accuracy' else '//' for bar in bars], linewidth=1.5)
        axis.bar_label(drawn, fmt='%.1f')
        ratios = [index for index, bar in enumerate(bars) if bar.kind == 'ratio']
        if chance is not None and accuracy:
            axis.hlines(chance, min(accuracy) - 0.4, max(accuracy) + 0.4, colors='tab:red', linestyles='--',
                        label=f'{chance_label}: {chance:.0f}%')
        if chance is not None and ratios:  # a share of two kinds of decisions: 50% prefers neither
            axis.hlines(50.0, min(ratios) - 0.4, max(ratios) + 0.4, colors='tab:gray', linestyles=':',
                        label='no preference (ratio): 50%')
        if chance is not None:
            axis.legend(loc='upper center', ncols=2, fontsize=8, frameon=False)
        axis.set_xticks(positions, [_wrap(bar.label) for bar in bars], rotation=0, fontsize=8)
        axis.set_ylim(0, 112)
        axis.set_yticks(range(0, 101, 20))
        kinds = {bar.kind for bar in bars}
        axis.set_ylabel('top-1 accuracy (%)' if kinds == {'accuracy'} else
                        'percent (blue: top-1 accuracy; hatched: a ratio, not an accuracy)')
        axis.set_title(bar_title or f'{payload.get("model")}: top-1 across evaluation sets')
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png', dpi=110)
    plt.close(figure)
    return atomic_write_bytes(buffer.getvalue(), check_png_path(path))


def _wrap(label: str, width: int = 16) -> str:
    """A bar label over several short lines, so long labels stay readable without rotating them."""
    import textwrap
    return '\n'.join(textwrap.wrap(label, width)) or label


def check_png_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() != '.png':
        raise ValueError(f'--figure must end in .png, got {path.name}')
    return path
