"""Experiment tracking: TensorBoard event files and Weights & Biases runs behind one small interface.

The training loop and validate.py call one :class:`Tracker` (``log_scalars`` / ``log_table`` / ``close``) and never
ask which backends are on: processes other than the main one get a :class:`NullTracker`, so only the main process
writes. Neither backend is a hard dependency (extras ``[tensorboard]`` and ``[wandb]``); a missing one is a
one-line error at argument time that names the extra, before any data is read.

Steps are optimizer updates (``num_updates``), the number a checkpoint records, so a resumed run continues the same
curves: TensorBoard's ``purge_step`` drops the points a crashed run logged after the checkpoint it resumes from, and
a W&B run is resumed under the id stored in the run folder, skipping steps that run already logged.
This module imports neither torch nor the backends at import time (``--help`` stays fast).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

from .cli import UsageError

__all__ = ['Tracker', 'NullTracker', 'TensorBoardTracker', 'WandbTracker', 'MultiTracker', 'add_tracking_arguments',
           'check_tracking_args', 'tracking_requested', 'build_tracker', 'log_validation_results',
           'track_validation_run', 'TENSORBOARD_DIR', 'WANDB_STATE_FILE', 'DEFAULT_WANDB_PROJECT']

TENSORBOARD_DIR = 'tensorboard'  # default event-file folder inside a run folder
WANDB_STATE_FILE = 'robustcnn-wandb-run.json'  # in <folder>/wandb/: the W&B run id and the last step it logged
DEFAULT_WANDB_PROJECT = 'robustcnn'

# flag -> (module that must be importable, extra that installs it)
_BACKENDS = {'--log-tensorboard': ('tensorboard', 'tensorboard'), '--log-wandb': ('wandb', 'wandb')}


class Tracker(Protocol):
    """What the loops call; implementations decide where the numbers go."""

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None: ...

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int) -> None: ...

    def close(self) -> None: ...


class NullTracker:
    """Tracking off, or not the main process."""

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        pass

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int) -> None:
        pass

    def close(self) -> None:
        pass


def _plain_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-safe values (tuples -> lists, paths -> text), as both backends store them."""
    return json.loads(json.dumps(dict(config), default=str))


def _finite(scalars: Mapping[str, Any]) -> dict[str, float]:
    """Numbers only: a metric that was not measured (None, NaN) is left out rather than drawn as a spike."""
    return {name: float(value) for name, value in scalars.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}


def _markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return f'{value:.2f}' if isinstance(value, float) else ('–' if value is None else str(value))
    lines = ['| ' + ' | '.join(map(str, columns)) + ' |', '|' + '---|' * len(columns)]
    lines += ['| ' + ' | '.join(cell(value) for value in row) + ' |' for row in rows]
    return '\n'.join(lines)


class TensorBoardTracker:
    """Event files via ``torch.utils.tensorboard``; tables become Markdown text (TensorBoard has no table type)."""

    def __init__(self, log_dir: str | os.PathLike, purge_step: int | None = None,
                 config: Mapping[str, Any] | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter
        self.log_dir = Path(log_dir)
        # purge_step: on reading, TensorBoard drops the points earlier files logged at steps >= purge_step
        self.writer = SummaryWriter(str(self.log_dir), purge_step=purge_step)
        if config is not None:
            text = json.dumps(_plain_config(config), indent=2, sort_keys=True)
            self.writer.add_text('config', '    ' + text.replace('\n', '\n    '), global_step=0)

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        for name, value in _finite(scalars).items():
            self.writer.add_scalar(name, value, global_step=step)
        self.writer.flush()

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int) -> None:
        self.writer.add_text(name, _markdown_table(columns, rows), global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A W&B run whose files live in ``<directory>/wandb``; ``WANDB_MODE=offline`` and the other W&B variables
    apply as usual.

    With ``resume``, the run id stored in ``<directory>/wandb/`` by the previous session is reused (W&B appends to
    that run) and steps up to the last one that session logged are skipped: W&B keeps one value per step, and a
    resumed run redoes the updates after its checkpoint.
    """

    def __init__(self, directory: str | os.PathLike, project: str, name: str | None,
                 config: Mapping[str, Any] | None = None, resume: bool = False) -> None:
        import wandb
        self.state_path = Path(directory) / 'wandb' / WANDB_STATE_FILE
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        state = self._read_state() if resume else {}
        run_id = state.get('id')  # None: W&B makes a new one
        self.first_step = int(state['last_step']) + 1 if state.get('last_step') is not None else 0
        self.last_step: int | None = state.get('last_step')
        try:
            self.run = wandb.init(project=project, name=name, id=run_id, resume='allow' if run_id else None,
                                  dir=str(directory),
                                  config=_plain_config(config) if config is not None else None)
        except Exception as error:  # wandb raises its own error types (no login, no network, bad project)
            reason = ' '.join(str(error).split()) or type(error).__name__
            raise UsageError(f'--log-wandb: W&B could not start ({reason}); run `wandb login`, or set '
                             f'WANDB_MODE=offline to write the run locally') from None
        self._write_state()

    def _read_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self.state_path.read_text(encoding='utf-8'))
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _write_state(self) -> None:
        from .atomic import atomic_write_text
        state = {'id': self.run.id, 'last_step': self.last_step}
        atomic_write_text(json.dumps(state) + '\n', self.state_path)

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        if step < self.first_step:
            return
        self.run.log(_finite(scalars), step=step)
        if self.last_step is None or step > self.last_step:
            self.last_step = step
            self._write_state()

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int) -> None:
        import wandb
        if step < self.first_step:
            return
        self.run.log({name: wandb.Table(columns=list(columns), data=[list(row) for row in rows])}, step=step)

    def close(self) -> None:
        self.run.finish()


class MultiTracker:
    """Both backends at once."""

    def __init__(self, trackers: Sequence[Tracker]) -> None:
        self.trackers = list(trackers)

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        for tracker in self.trackers:
            tracker.log_scalars(scalars, step)

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int) -> None:
        for tracker in self.trackers:
            tracker.log_table(name, columns, rows, step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


def add_tracking_arguments(parser: argparse.ArgumentParser, default_place: str) -> None:
    """The tracking flags, shared by train.py and validate.py; ``default_place`` says where files go by default."""
    group = parser.add_argument_group('experiment tracking (optional extras: pip install "robustcnn[tensorboard]" / '
                                      '"robustcnn[wandb]")')
    group.add_argument('--log-tensorboard', nargs='?', const='', default=None, metavar='DIR',
                       help=f'write TensorBoard event files to DIR (default: {TENSORBOARD_DIR}/ {default_place})')
    group.add_argument('--log-wandb', action=argparse.BooleanOptionalAction, default=False,
                       help=f'log to Weights & Biases (files in wandb/ {default_place}; WANDB_MODE=offline '
                            f'writes the run locally for a later `wandb sync`)')
    group.add_argument('--wandb-project', default=DEFAULT_WANDB_PROJECT, metavar='NAME', help='W&B project')
    group.add_argument('--wandb-name', default='', metavar='NAME',
                       help='W&B run name (default: the run folder\'s name)')


def tracking_requested(args: argparse.Namespace) -> bool:
    return getattr(args, 'log_tensorboard', None) is not None or bool(getattr(args, 'log_wandb', False))


def _installed(module: str) -> bool:
    if module in sys.modules:  # None there means "blocked" (as tests and some environments do)
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def check_tracking_args(args: argparse.Namespace) -> None:
    """A backend asked for but not installed: say which extra installs it, before any work."""
    for flag, (module, extra) in _BACKENDS.items():
        wanted = args.log_tensorboard is not None if flag == '--log-tensorboard' else args.log_wandb
        if wanted and not _installed(module):
            raise UsageError(f'{flag} needs the {module} package, which is not installed: '
                             f'pip install "robustcnn[{extra}]" (or pip install -e ".[{extra}]" in a checkout)')


def build_tracker(args: argparse.Namespace, directory: str | os.PathLike, *, is_main: bool = True,
                  config: Mapping[str, Any] | None = None, purge_step: int | None = None,
                  resume: bool = False, default_name: str | None = None) -> Tracker:
    """The tracker the flags ask for, writing under ``directory`` unless ``--log-tensorboard DIR`` says where.

    ``purge_step``: TensorBoard drops earlier points at steps >= it (a fresh run passes 0, a resumed one the first
    step it will log); ``resume``: continue the W&B run recorded in ``directory``. ``config`` is logged once.
    """
    if not is_main or not tracking_requested(args):
        return NullTracker()
    trackers: list[Tracker] = []
    if args.log_tensorboard is not None:
        log_dir = Path(args.log_tensorboard) if args.log_tensorboard else Path(directory) / TENSORBOARD_DIR
        trackers.append(TensorBoardTracker(log_dir, purge_step=purge_step, config=None if resume else config))
    if args.log_wandb:
        trackers.append(WandbTracker(directory, project=args.wandb_project or DEFAULT_WANDB_PROJECT,
                                     name=args.wandb_name or default_name, config=config, resume=resume))
    return trackers[0] if len(trackers) == 1 else MultiTracker(trackers)


def track_validation_run(args: argparse.Namespace, payload: Mapping[str, Any]) -> None:
    """validate.py's hook (main process, after the results are complete): log them once, the files beside
    ``--results-file`` (or in the current folder)."""
    if not tracking_requested(args):
        return
    results_file = getattr(args, 'results_file', '')
    directory = Path(results_file).resolve().parent if results_file else Path.cwd()
    config = {**vars(args), 'model': payload.get('model'), 'checkpoint': payload.get('checkpoint')}
    tracker = build_tracker(args, directory, config=config, default_name=f'validate-{payload.get("model")}')
    try:
        log_validation_results(tracker, payload)
    finally:
        tracker.close()


_RESULT_METRICS = ('top1', 'top5', 'loss', 'mean_corruption_error', 'mce', 'relative_mce', 'num_samples')


def log_validation_results(tracker: Tracker, payload: Mapping[str, Any], step: int = 0) -> None:
    """validate.py's results: ``<dataset>/<metric>`` scalars per dataset, and ImageNet-C's corruption x severity
    top-1 errors as a table (plus ``imagenet-c/corruption_error/<corruption>``, each corruption's mean error)."""
    for dataset, entry in payload.get('results', {}).items():
        tracker.log_scalars({f'{dataset}/{metric}': entry.get(metric) for metric in _RESULT_METRICS}, step=step)
        errors = entry.get('errors') if dataset == 'imagenet-c' else None
        if not errors:
            continue
        severities = sorted({severity for by_severity in errors.values() for severity in by_severity}, key=int)
        rows, means = [], {}
        for corruption, by_severity in errors.items():
            values = [by_severity.get(severity) for severity in severities]
            present = [value for value in values if value is not None]
            mean = sum(present) / len(present) if present else None
            means[f'imagenet-c/corruption_error/{corruption}'] = mean
            rows.append([corruption, *values, mean])
        tracker.log_scalars(means, step=step)
        tracker.log_table('imagenet-c/top1_error', ['corruption', *[f'severity {s}' for s in severities], 'mean'],
                          rows, step=step)
