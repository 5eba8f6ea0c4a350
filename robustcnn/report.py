"""Results -> JSON / CSV / Markdown files and PNG figures, every file written atomically.

The JSON layout is the contract other tools read::

    {"model": ..., "checkpoint": ..., "results": {
        "imagenet-r": {"top1": 45.9, "top5": ..., "loss": ..., "num_samples": 30000, "skipped_files": 0},
        "imagenet-c": {"mean_corruption_error": 42.3, "mce": ..., "relative_mce": null, "num_samples": ...,
                       "skipped_files": 0, "errors": {"gaussian_noise": {"1": 31.2, ...}, ...}}},
     "summaries": {"model-vs-human": {"ood_accuracy": 55.9, "num_sets": 17, "sets": [...], ...}}}

``summaries`` (numbers over a family of sets, ``Benchmark.suite_summary``) is there only when such a set ran.

Percentages throughout; metric names are exact (``mean_corruption_error`` is never called mCE). The tables are
built from each set's own ``Benchmark.summary`` / ``headline_metric`` / ``report_details``, so a new set shows up
here without an edit of this file.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .arguments import RESULT_SUFFIXES, check_output_file, check_suffix
from .atomic import atomic_write_bytes
from .cli import UsageError

__all__ = ['RESULT_SUFFIXES', 'README_SETS', 'readme_columns', 'FigureBar', 'check_results_path', 'check_output_file',
           'write_results', 'results_to_json', 'results_to_csv', 'results_to_markdown', 'readme_row', 'write_figure',
           'round_floats', 'format_cell']

# How many of the suite's sets (in suite order) the README's robustness table has; the rest follow in reports.
README_SETS = 5
# Columns of the per-dataset tables every set shares; a set's summary() keys beyond these become extra columns.
_SUMMARY_FIELDS = ('top1', 'top5', 'loss', 'mean_corruption_error', 'mce', 'relative_mce', 'num_samples',
                   'skipped_files')
_SUMMARY_TITLES = ('top-1', 'top-5', 'loss', 'mean corruption error', 'mCE', 'relative mCE', 'images',
                   'skipped files')


def readme_columns() -> tuple[tuple[str, str, str], ...]:
    """``(dataset, column title, metric)`` for every suite set in suite order: the README's first, then the rest."""
    from .benchmarks import BENCHMARKS, SUITE_ORDER
    return tuple((name, BENCHMARKS[name].title + ('↑' if BENCHMARKS[name].higher_is_better else '↓'),
                  BENCHMARKS[name].headline_metric) for name in SUITE_ORDER)


def _summary_fields(results: Mapping[str, Any]) -> list[str]:
    """The shared columns, then the headline numbers of sets that have their own (from ``Benchmark.summary``)."""
    from .benchmarks import BENCHMARKS
    fields = list(_SUMMARY_FIELDS)
    for dataset, entry in results.items():
        if dataset in BENCHMARKS:
            fields += [name for name in BENCHMARKS[dataset].summary(entry) if name not in fields]
    return fields


def _table_values(dataset: str, metrics: Mapping[str, Any]) -> Mapping[str, Any]:
    """An entry's numbers for the tables: its fields, and what its set's ``summary`` derives (nested ones)."""
    from .benchmarks import BENCHMARKS
    return {**metrics, **BENCHMARKS[dataset].summary(metrics)} if dataset in BENCHMARKS else metrics


def check_results_path(path: str | os.PathLike) -> Path:
    """Fail early (before any evaluation) on a results file type we cannot write."""
    return check_suffix('--results-file', path, RESULT_SUFFIXES)


def _write_or_fall_back(data: bytes, path: Path) -> Path:
    """Write ``data`` to ``path``; if that fails at the end of a finished evaluation, keep it in the working folder
    (else the temp folder) and say where, instead of losing hours of work with a traceback."""
    try:
        return atomic_write_bytes(data, path)
    except OSError as error:
        name = f'{path.stem}.unsaved-{time.strftime("%Y%m%d-%H%M%S")}{path.suffix}'
        for folder in (Path.cwd(), Path(tempfile.gettempdir())):
            try:
                fallback = atomic_write_bytes(data, folder / name)
            except OSError:
                continue
            raise UsageError(f'{error}; the results were saved to {fallback.resolve()} instead') from None
        if path.suffix.lower() == '.png':
            raise UsageError(f'{error}; nor in {Path.cwd()} or {tempfile.gettempdir()}') from None
        sys.stdout.write(data.decode('utf-8'))  # the last place left: the terminal
        raise UsageError(f'{error}; nor in {Path.cwd()} or {tempfile.gettempdir()}: the results were printed '
                         f'above') from None


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
    """One row per dataset with the summary metrics (ImageNet-C's per-folder errors and the means over a family of
    sets, ``summaries``, are in JSON/Markdown)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    fields = _summary_fields(payload.get('results', {}))
    if any('robust_top1' in metrics for metrics in payload.get('results', {}).values()) and 'robust_top1' not in fields:
        fields.append('robust_top1')  # --attack: the strongest radius's
    writer.writerow(['model', 'checkpoint', 'dataset'] + fields)
    for dataset, metrics in payload.get('results', {}).items():
        row = [payload.get('model'), payload.get('checkpoint'), dataset]
        metrics = _table_values(dataset, metrics)
        for name in fields:
            value = round_floats(metrics.get(name))
            row.append('' if value is None else value)
        writer.writerow(row)
    return buffer.getvalue()


def format_cell(value: Any, digits: int = 2) -> str:
    """A table cell: ``–`` where nothing was measured."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return '–'
    if isinstance(value, float):
        return f'{value:.{digits}f}'
    return str(value)


def readme_row(payload: Mapping[str, Any], columns: Sequence[tuple[str, str, str]] | None = None) -> str:
    """The README table row: ``| model | ImageNet | Stylized | IN-C | IN-R | Sketch |`` (– where not measured)."""
    columns = readme_columns()[:README_SETS] if columns is None else columns
    results = payload.get('results', {})
    cells = [str(payload.get('model'))]
    for dataset, _, metric in columns:
        entry = results.get(dataset)
        value = entry.get(metric) if entry else None
        cell = format_cell(value, 1)
        if entry and entry.get('partial'):
            cell += ' (partial)'
        cells.append(cell)
    return '| ' + ' | '.join(cells) + ' |'


def _readme_header(columns: Sequence[tuple[str, str, str]]) -> str:
    titles = ['Model'] + [title for _, title, _ in columns]
    return '| ' + ' | '.join(titles) + ' |\n|' + '|'.join([' --- '] + [' :---: '] * len(columns)) + '|'


def results_to_markdown(payload: Mapping[str, Any]) -> str:
    """A readable report: the README row, a summary per dataset, the summaries over families of sets
    (model-vs-human's means), then each set's own details (ImageNet-C's corruption x severity table)."""
    results = payload.get('results', {})
    lines = [f'# Evaluation of `{payload.get("model")}`', '']
    if payload.get('checkpoint'):
        lines += [f'Checkpoint: `{payload["checkpoint"]}`', '']
    all_columns = readme_columns()
    shown = list(all_columns[:README_SETS]) + [column for column in all_columns[README_SETS:] if column[0] in results]
    lines += ['## Robustness table (README columns; percent)', '', _readme_header(shown),
              readme_row(payload, shown), '']
    fields = _summary_fields(results)
    titles = list(_SUMMARY_TITLES) + [name.replace('_', ' ') for name in fields[len(_SUMMARY_FIELDS):]]
    lines += ['## Per dataset', '', '| Dataset | ' + ' | '.join(titles) + ' |', '|---|' + '---:|' * len(titles)]
    for dataset, metrics in results.items():
        values = _table_values(dataset, metrics)
        lines.append('| ' + ' | '.join([dataset] + [
            format_cell(values.get(name), 4 if name == 'loss' else 2) for name in fields]) + ' |')
    from .benchmarks import BENCHMARKS
    for key, summary in (payload.get('summaries') or {}).items():  # a family's numbers over its sets
        owner = next((benchmark for benchmark in BENCHMARKS.values() if benchmark.suite_summary_key == key), None)
        if owner is not None:
            lines += owner.suite_summary_details(summary)
    for dataset, metrics in results.items():
        if dataset in BENCHMARKS:
            lines += BENCHMARKS[dataset].report_details(metrics)
    lines += _attack_markdown(results)
    return '\n'.join(lines) + '\n'


def _attack_markdown(results: Mapping[str, Any]) -> list[str]:
    """validate.py --attack: clean and robust top-1 of the same images, one row per dataset and radius."""
    rows = []
    for dataset, metrics in results.items():
        attack = metrics.get('attack') or {}
        for item in metrics.get('robust_top1_by_eps', []):
            steps = attack.get('steps') if attack.get('steps') is not None else attack.get('version', '')
            rows.append(f'| {dataset} | {attack.get("name")} | {attack.get("norm")} | {item["eps_text"]} | {steps} | '
                        f'{format_cell(metrics.get("top1"))} | {format_cell(item["robust_top1"])} | '
                        f'{metrics.get("num_samples")} |')
    if not rows:
        return []
    return ['', '## Adversarial robustness (top-1 percent; robust = correct clean and attacked)', '',
            '| Dataset | attack | norm | eps | steps | clean top-1 | robust top-1 | images |',
            '|---|---|---|---|---|---:|---:|---:|'] + rows


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
    return _write_or_fall_back(text.encode('utf-8'), path)


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
    """PNG: ImageNet-C error as a corruption x severity heat map, top-1 across the other sets as bars, the panels a
    set draws itself (shape bias), and (--attack with several radii) robust top-1 against eps.

    ``bars`` replaces the default bars (top-1 of every set but ImageNet-C); ``chance`` draws the top-1 of a guess
    as a line; the titles name what the panels show (the demo's corruptions are synthetic, not ImageNet-C).
    """
    import matplotlib
    matplotlib.use('Agg', force=True)
    from matplotlib import pyplot as plt

    from .benchmarks import BENCHMARKS

    results = payload.get('results', {})
    # every corruption suite (ImageNet-C, -C-bar, -3DCC): its {corruption: {severity: error}} table as a heat map
    heat_maps = [(name, entry) for name, entry in results.items()
                 if isinstance(entry.get('errors'), Mapping) and entry['errors']]
    if bars is None:
        bars = [FigureBar(name, entry['top1']) for name, entry in results.items()
                if name not in dict(heat_maps) and entry.get('top1') is not None and math.isfinite(entry['top1'])]
    bars = [bar for bar in bars if bar.value is not None and math.isfinite(bar.value)]
    own_panels = [(name, entry) for name, entry in results.items()
                  if name in BENCHMARKS and BENCHMARKS[name].has_figure_panel(entry)]
    curves = {name: entry for name, entry in results.items() if len(entry.get('robust_top1_by_eps', [])) > 1}
    panels = len(heat_maps) + int(bool(bars)) + len(own_panels) + int(bool(curves))
    if panels == 0:
        raise UsageError('--figure: nothing to plot (no ImageNet-C errors and no top-1 results); leave it out')
    figure, axes = plt.subplots(1, panels, figsize=(7 * panels, 6.5), squeeze=False)
    axes = list(axes[0])
    if curves:  # --attack with several radii: robust top-1 against eps, clean top-1 at eps 0
        axis = axes.pop()
        for name, entry in curves.items():
            points = sorted((item['eps'], item['robust_top1'], item['eps_text'])
                            for item in entry['robust_top1_by_eps'])
            axis.plot([0.0] + [point[0] for point in points], [entry['top1']] + [point[1] for point in points],
                      marker='o', label=name)
        axis.set_xticks([0.0] + [point[0] for point in points], ['0'] + [point[2] for point in points])
        attack = next(iter(curves.values())).get('attack', {})
        axis.set_xlabel(f'{attack.get("norm", "")} radius eps (pixels in [0, 1])')
        axis.set_ylabel('robust top-1 accuracy (%)')
        axis.set_ylim(0, 100)
        axis.set_title(f'{payload.get("model")}: {attack.get("name", "attack")} robust accuracy')
        axis.legend()
    for name, corruption in heat_maps:
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
        title = corruption_title if name == 'imagenet-c' else \
            f'{BENCHMARKS[name].title if name in BENCHMARKS else name} top-1 error (%)'
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
    for name, entry in own_panels:  # panels a set draws itself (Benchmark.draw_figure_panel)
        BENCHMARKS[name].draw_figure_panel(axes.pop(0), entry, str(payload.get('model')))
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png', dpi=110)
    plt.close(figure)
    return _write_or_fall_back(buffer.getvalue(), check_png_path(path))


def _wrap(label: str, width: int = 16) -> str:
    """A bar label over several short lines, so long labels stay readable without rotating them."""
    import textwrap
    return '\n'.join(textwrap.wrap(label, width)) or label


def check_png_path(path: str | os.PathLike) -> Path:
    return check_suffix('--figure', path, ('.png',))
