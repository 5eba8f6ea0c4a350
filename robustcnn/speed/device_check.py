"""The GPU numbers in one command: a device check sized for a short loan of a GPU machine.

``bash scripts/device_check.sh [--device cuda|cpu] [--quick] OUT_DIR`` runs, within a wall-time budget (8 minutes,
3 with ``--quick``), in this order of value:

1. the headline: Robust-ResNet-DW-S's training throughput over DeiT-S's (train.py's CUDA defaults: bf16 autocast
   and channels-last), so that even a cut-short loan answers the project's speed question;
2. ``python -m pytest -m cuda``: the CUDA-path tests, which say whether the numbers can be trusted;
3. training and inference throughput and peak memory of the four Robust-ResNet-S models next to DeiT-S,
   ResNet-50 and ConvNeXt-T at batch 128, variants base / amp / amp+channels_last;
4. validate.py's ImageNet-C pipeline on a generated tree, with and without ``--decode-on-device`` (nvJPEG);
5. the same throughput with torch.compile, as far as the time left allows (compilation is the slow part).

Each part has a budget; a measurement that would not fit in what is left is not started, and appears in every
output as skipped with the reason (never silently missing). A timer 30 s after the budget stops a measurement
that overran anyway (the part is reported cut short). OUT_DIR receives ``device_check.json`` (everything),
``device_check.csv`` (one row per measurement) and ``device_check.md`` (the tables to paste into BENCHMARKS.md),
rewritten after every part so that an interrupted run still leaves what it measured. The exit status is 1 when
any CUDA test failed or did not finish, else 0; a failed measurement (say, out of memory) is a row, not an exit.

``--device cpu --quick`` runs the same plan with tiny stand-ins (``robust_resnet_dw_pico`` next to timm's
``test_vit``/``test_resnet``, 32-pixel images, batch 2) in seconds: that is how the tests check this module.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..atomic import atomic_write_text
from ..cli import OneLineErrorParser, UsageError, setup_logging

__all__ = ['CheckPlan', 'plan_for', 'run_device_check', 'run_cuda_tests', 'headline_ratio', 'format_markdown',
           'build_parser', 'main', 'OUTPUT_FILES']

_logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
OUTPUT_FILES = ('device_check.json', 'device_check.csv', 'device_check.md')
CSV_COLUMNS = ('part', 'model', 'mode', 'variant', 'device', 'batch_size', 'img_size', 'images_per_second',
               'step_ms', 'peak_memory_mib', 'ratio_to_headline_reference', 'warmup_s', 'seconds', 'eval_seconds',
               'workers', 'num_images', 'mean_corruption_error', 'status', 'note')


@dataclass(frozen=True)
class CheckPlan:
    """What one device check measures and how long each part may take (seconds of wall time)."""

    device: str
    quick: bool
    budget_s: float
    robust_models: tuple[str, ...]
    reference_models: tuple[str, ...]
    batch_size: int
    img_size: int
    warmup: int
    iterations: int
    repeats: int
    variants: tuple[str, ...]  # in order of value: the headline variant first
    compile_variant: str | None  # None: compiled rows are planned but reported as skipped
    compile_backend: str
    headline_budget_s: float
    tests_budget_s: float | None  # None: tests not run unless asked for
    throughput_budget_s: float
    pipeline_budget_s: float
    pipeline_model: str
    pipeline_classes: int
    pipeline_images_per_class: int
    pipeline_image_size: int
    pipeline_batch_size: int
    pipeline_workers: int | None  # None: validate.py's default
    pipeline_runs: int  # per decode mode; the first is a warm-up (worker start-up, nvJPEG and cuDNN set-up)
    first_measurement_guess_s: float  # the time estimate of a measurement before any has been timed
    first_compile_guess_s: float

    @property
    def headline_pair(self) -> tuple[str, str]:
        return self.robust_models[0], self.reference_models[0]

    @property
    def headline_variant(self) -> str:
        return self.variants[0]


def plan_for(device: str, quick: bool, budget_s: float | None = None) -> CheckPlan:
    """The GPU plan (the real models, batch 128, 224 px) or its tiny CPU stand-in; ``budget_s`` overrides the
    total (8 minutes, or 3 with ``quick``: a short loan of a GPU machine)."""
    total = budget_s if budget_s is not None else (170.0 if quick else 480.0)
    if device == 'cuda':
        from .throughput import REFERENCE_MODELS, ROBUST_MODELS
        return CheckPlan(
            device='cuda', quick=quick, budget_s=total, robust_models=ROBUST_MODELS, reference_models=REFERENCE_MODELS,
            batch_size=128, img_size=224, warmup=5, iterations=10 if not quick else 6, repeats=3,
            variants=('amp+channels_last',) if quick else ('amp+channels_last', 'base', 'amp'),
            compile_variant=None if quick else 'amp+channels_last+compile', compile_backend='inductor',
            headline_budget_s=40.0, tests_budget_s=None if quick else 150.0,
            throughput_budget_s=70.0 if quick else 150.0, pipeline_budget_s=35.0 if quick else 55.0,
            pipeline_model='robust_resnet_dw_small', pipeline_classes=4 if quick else 10, pipeline_images_per_class=4,
            pipeline_image_size=224, pipeline_batch_size=128, pipeline_workers=None, pipeline_runs=2 if quick else 3,
            first_measurement_guess_s=8.0, first_compile_guess_s=75.0)
    return CheckPlan(
        device='cpu', quick=quick, budget_s=total, robust_models=('robust_resnet_dw_pico',),
        reference_models=('test_vit', 'test_resnet'), batch_size=2, img_size=32, warmup=1, iterations=1, repeats=2,
        variants=('base', 'amp+channels_last'), compile_variant=None if quick else 'compile',
        compile_backend='inductor', headline_budget_s=30.0, tests_budget_s=None if quick else 600.0,
        throughput_budget_s=60.0, pipeline_budget_s=40.0, pipeline_model='robust_resnet_dw_pico', pipeline_classes=1,
        pipeline_images_per_class=1, pipeline_image_size=32, pipeline_batch_size=16, pipeline_workers=0,
        pipeline_runs=2, first_measurement_guess_s=2.0, first_compile_guess_s=60.0)


class _Clock:
    """The run's deadline and the deadline of the part now running (whichever comes first)."""

    def __init__(self, budget_s: float) -> None:
        self.start = time.perf_counter()
        self.deadline = self.start + budget_s
        self.part_deadline = self.deadline

    def begin_part(self, budget_s: float) -> None:
        self.part_deadline = min(time.perf_counter() + budget_s, self.deadline)

    def left(self) -> float:
        return self.part_deadline - time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def fits(self, estimate_s: float) -> str | None:
        """None when ``estimate_s`` fits in the part's time left, else the reason for skipping."""
        left = self.left()
        if estimate_s <= left:
            return None
        return f'did not fit the time budget (needs about {estimate_s:.0f} s, {max(left, 0.0):.0f} s left)'


@dataclass
class CheckReport:
    """Everything the check found; ``parts`` say for each part whether it ran, was cut short, or was skipped."""

    plan: dict[str, Any]
    machine: dict[str, Any] = field(default_factory=dict)
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)
    throughput: list[Any] = field(default_factory=list)  # SpeedResult rows, in the order measured
    pipeline: list[dict[str, Any]] = field(default_factory=list)
    tests: dict[str, Any] = field(default_factory=dict)
    headline: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------------- CUDA tests

def run_cuda_tests(device: str, timeout_s: float, out_dir: Path, extra_args: Sequence[str] = ()) -> dict[str, Any]:
    """``python -m pytest -m cuda`` in a child process (its own CUDA context and compile caches), with a timeout;
    counts from its JUnit XML, output kept in ``cuda_tests.log``. On a CPU the tests run on the CPU
    (``ROBUSTCNN_TEST_DEVICE=cpu``), which checks the tests themselves."""
    junit = out_dir / 'cuda_tests.xml'
    junit.unlink(missing_ok=True)
    command = [sys.executable, '-m', 'pytest', '-m', 'cuda', '-p', 'no:cacheprovider', '-q', '-rfE',
               f'--junitxml={junit}', *extra_args]
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get('PYTHONPATH')])))
    if device == 'cpu':
        environment['ROBUSTCNN_TEST_DEVICE'] = 'cpu'
    record: dict[str, Any] = {'command': 'python ' + ' '.join(shlex.quote(part) for part in command[1:]),
                              'log': 'cuda_tests.log'}
    started = time.perf_counter()
    with open(out_dir / 'cuda_tests.log', 'w') as log:
        try:
            done = subprocess.run(command, cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=max(timeout_s, 1.0))
            record['returncode'] = done.returncode
        except subprocess.TimeoutExpired:
            record['returncode'] = None
    record['seconds'] = round(time.perf_counter() - started, 1)
    counts = _junit_counts(junit)
    record.update(counts)
    if record['returncode'] is None:
        record['status'] = 'timed out'
        record['note'] = f'stopped after {timeout_s:.0f} s, the part\'s budget; see cuda_tests.log'
    elif counts.get('failed', 0) or counts.get('errors', 0) or record['returncode'] not in (0,):
        record['status'] = 'failed'
    elif not counts.get('passed', 0):
        record['status'] = 'failed'
        record['note'] = 'no CUDA test ran (all skipped or none collected)'
    else:
        record['status'] = 'passed'
    return record


def _test_module(classname: str) -> str:
    """JUnit's classname from the test module on (``test_cuda_paths`` or ``test_x.TestCase``): pytest writes it as a
    dotted path relative to its rootdir, which depends on where the checkout and the temp folder happen to lie."""
    parts = classname.split('.')
    modules = [index for index, part in enumerate(parts) if part.startswith('test')]
    return '.'.join(parts[modules[-1]:]) if modules else classname


def _junit_counts(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError:
        return {}
    suites = [root] if root.tag == 'testsuite' else list(root.iter('testsuite'))
    total = {name: sum(int(suite.get(name, 0)) for suite in suites) for name in ('tests', 'failures', 'errors',
                                                                                   'skipped')}
    failed_names = [f"{_test_module(case.get('classname', ''))}::{case.get('name', '')}"
                    for case in root.iter('testcase')
                    if case.find('failure') is not None or case.find('error') is not None]
    passed = total['tests'] - total['failures'] - total['errors'] - total['skipped']
    return {'passed': passed, 'failed': total['failures'], 'errors': total['errors'], 'skipped': total['skipped'],
            'failed_tests': failed_names}


# ------------------------------------------------------------------------------------------------- throughput

def _settings(plan: CheckPlan, model: str, mode: str, variant: str) -> Any:
    from .throughput import SpeedSettings, parse_variant
    return SpeedSettings(model=model, mode=mode, variant=variant, device=plan.device, batch_size=plan.batch_size,
                         img_size=plan.img_size, warmup=plan.warmup, iterations=plan.iterations, repeats=plan.repeats,
                         compile_backend=plan.compile_backend, **parse_variant(variant))


def _throughput_plan(plan: CheckPlan) -> list[tuple[str, str, str]]:
    """(model, mode, variant) in order of value: the headline pair's training, then the headline variant for all
    models (training, then inference), then the other variants, compiled last."""
    robust, reference = plan.headline_pair
    models = list(plan.robust_models) + list(plan.reference_models)
    order = [(robust, 'train', plan.headline_variant), (reference, 'train', plan.headline_variant)]
    variants = list(plan.variants) + ([plan.compile_variant] if plan.compile_variant else [])
    for variant in variants:
        for mode in ('train', 'infer'):
            compiled_pair_first = [robust, reference] + [name for name in models if name not in (robust, reference)]
            for model in (compiled_pair_first if 'compile' in variant else models):
                if (model, mode, variant) not in order:
                    order.append((model, mode, variant))
    return order


class _Estimates:
    """How long the next measurement will take: the last time of the same model and mode (compiled rows apart:
    compilation dominates them), else the mean so far, else the plan's first guess."""

    def __init__(self, plan: CheckPlan) -> None:
        self.plan = plan
        self.seconds: dict[tuple[str, str, bool], float] = {}

    def record(self, model: str, mode: str, compiled: bool, seconds: float | None) -> None:
        if seconds is not None:
            self.seconds[model, mode, compiled] = seconds

    def estimate(self, model: str, mode: str, compiled: bool) -> float:
        if (model, mode, compiled) in self.seconds:
            return self.seconds[model, mode, compiled]
        same_kind = [value for (_, _, kind), value in self.seconds.items() if kind == compiled]
        if same_kind:
            return statistics.fmean(same_kind)
        return self.plan.first_compile_guess_s if compiled else self.plan.first_measurement_guess_s


def _measure_rows(plan: CheckPlan, rows: Sequence[tuple[str, str, str]], clock: _Clock, estimates: _Estimates,
                  report: CheckReport, on_row: Callable[[Any], None]) -> dict[str, int]:
    from .throughput import measure_model, skipped_result
    counts = {'measured': 0, 'failed': 0, 'skipped': 0}
    for model, mode, variant in rows:
        compiled = 'compile' in variant
        settings = _settings(plan, model, mode, variant)
        reason = clock.fits(estimates.estimate(model, mode, compiled))
        result = skipped_result(settings, reason) if reason else measure_model(settings)
        if reason is None:
            estimates.record(model, mode, compiled, result.seconds)
        counts['skipped' if result.skipped else 'failed' if result.error else 'measured'] += 1
        report.throughput.append(result)
        on_row(result)
    return counts


def headline_ratio(results: Sequence[Any], robust: str, reference: str, variant: str) -> dict[str, Any]:
    """Training throughput of ``robust`` over ``reference`` in every variant both have, ``variant``'s first."""
    def measured(model: str, row_variant: str) -> Any:
        return next((result for result in results if result.model == model and result.mode == 'train'
                     and result.variant == row_variant and result.error is None and result.skipped is None), None)

    per_variant = {}
    for row_variant in dict.fromkeys([variant] + [result.variant for result in results]):
        ours, theirs = measured(robust, row_variant), measured(reference, row_variant)
        if ours is not None and theirs is not None and theirs.images_per_second > 0:
            per_variant[row_variant] = round(ours.images_per_second / theirs.images_per_second, 3)
    return {'model': robust, 'reference': reference, 'mode': 'train', 'variant': variant,
            'ratio': per_variant.get(variant), 'per_variant': per_variant}


# --------------------------------------------------------------------------------------------------- pipeline

def _run_pipeline(plan: CheckPlan, clock: _Clock, report: CheckReport) -> dict[str, Any]:
    """validate.py's ImageNet-C path on a generated tree, decoding in the workers (PIL) and on the device."""
    from ..data.loader import default_workers
    from .pipelines import build_imagenet_c_tree, save_random_checkpoint, time_one_pipeline

    workers = default_workers() if plan.pipeline_workers is None else plan.pipeline_workers
    on_cuda = plan.device == 'cuda'
    amp_dtype, channels_last = ('bfloat16', True) if on_cuda else (None, False)  # validate.py's device defaults
    with tempfile.TemporaryDirectory(prefix='robustcnn-device-check-') as scratch:
        started = time.perf_counter()
        root = build_imagenet_c_tree(Path(scratch) / 'imagenet-c', plan.pipeline_classes,
                                     plan.pipeline_images_per_class, plan.pipeline_image_size)
        checkpoint = save_random_checkpoint(plan.pipeline_model, Path(scratch) / 'weights.pth')
        generated_s = time.perf_counter() - started
        estimate = plan.first_measurement_guess_s
        for decode_on_device in (False, True):
            label = 'decode-on-device' if decode_on_device else 'workers-decode'
            runs: list[float] = []
            eval_runs: list[float] = []  # the evaluation loop alone (what images/s is computed from)
            entry: dict[str, Any] = {'model': plan.pipeline_model, 'decode': label, 'device': plan.device,
                                     'workers': workers, 'batch_size': plan.pipeline_batch_size,
                                     'img_size': plan.pipeline_image_size, 'amp_dtype': amp_dtype,
                                     'channels_last': channels_last}
            try:
                for _ in range(plan.pipeline_runs):
                    reason = clock.fits(estimate)
                    if reason:
                        entry['skipped'] = reason
                        break
                    seconds, payload = time_one_pipeline(root, plan.pipeline_model, checkpoint,
                                                         plan.pipeline_batch_size, workers, plan.device,
                                                         decode_on_device, amp_dtype, channels_last)
                    estimate = seconds
                    runs.append(seconds)
                    result = payload['results']['imagenet-c']
                    eval_runs.append(float(result['elapsed_seconds']))
                    entry.update(num_images=result['num_samples'],
                                 mean_corruption_error=result.get('mean_corruption_error'))
            except Exception as failure:  # noqa: BLE001 - one decoder failing must not cost the other's numbers
                _logger.warning('ImageNet-C pipeline (%s) failed', label, exc_info=True)
                entry['error'] = (str(failure).strip().splitlines() or [type(failure).__name__])[0][:300]
            entry['runs_s'] = [round(value, 3) for value in runs]
            entry['eval_runs_s'] = [round(value, 3) for value in eval_runs]
            if runs and 'error' not in entry:
                first_timed = 1 if len(runs) > 1 else 0  # the first run is the warm-up whenever there are more
                entry['seconds'] = round(statistics.median(runs[first_timed:]), 3)
                entry['eval_seconds'] = round(statistics.median(eval_runs[first_timed:]), 3)
                entry['images_per_second'] = round(entry['num_images'] / max(entry['eval_seconds'], 1e-9), 1)
                if len(runs) < plan.pipeline_runs:  # measured, if less often than planned: a note, not a skip
                    cut_short = entry.pop('skipped', '')
                    entry['note'] = f'{len(runs)} of {plan.pipeline_runs} runs fitted' + (
                        ' (no warm-up: includes one-time start-up)' if len(runs) == 1 else '') + f'; {cut_short}'
            report.pipeline.append(entry)
            print(f"imagenet-c {label}: " + (f"{entry['images_per_second']} img/s ({entry['seconds']} s with loading)"
                                            if 'seconds' in entry else entry.get('error') or entry.get('skipped', '')),
                  flush=True)
    return {'generated_s': round(generated_s, 1), 'num_images': 75 * plan.pipeline_classes
            * plan.pipeline_images_per_class}


# ------------------------------------------------------------------------------------------------------ output

def _fmt(value: Any, digits: int = 1) -> str:
    return '-' if value is None else f'{value:.{digits}f}' if isinstance(value, float) else str(value)


def _table_order(results: Sequence[Any], plan: dict[str, Any]) -> list[Any]:
    """Rows as a reader compares them: training then inference, variant by variant, models in the plan's order
    (the run measures in order of value instead)."""
    models = [*plan['robust_models'], *plan['reference_models']]
    variants = [*plan['variants'], *([plan['compile_variant']] if plan['compile_variant'] else [])]

    def position(values: list[str], value: str) -> int:
        return values.index(value) if value in values else len(values)

    return sorted(results, key=lambda result: (result.mode != 'train', position(variants, result.variant),
                                               position(models, result.model)))


def format_markdown(report: CheckReport) -> str:
    """The section to paste into BENCHMARKS.md: machine, test result, headline, both tables, what was skipped."""
    from .throughput import format_table
    machine, plan, tests, headline = report.machine, report.plan, report.tests, report.headline
    where = machine.get('gpu') or machine.get('cpu') or plan['device']
    lines = [f"### {where} — {machine.get('date', '')[:10]} (`bash scripts/device_check.sh"
             f"{' --device cpu' if plan['device'] == 'cpu' else ''}{' --quick' if plan['quick'] else ''} OUT_DIR`)",
             '']
    software = [f"{key} {machine[key]}" for key in ('driver', 'cuda', 'cudnn', 'torch', 'timm', 'python')
                if machine.get(key) is not None]
    hardware = [f"GPU {machine['gpu']} ({machine.get('gpu_memory_gib')} GiB, compute {machine.get('gpu_capability')})"
                if machine.get('gpu') else None, f"CPU {machine.get('cpu')} ({machine.get('cpu_count')} cores)"]
    lines.append('Machine: ' + '; '.join(filter(None, hardware)) + '. Software: ' + ', '.join(software) + '.')
    if machine.get('gpu'):
        lines.append(f"TF32: convolutions {machine.get('cudnn_allow_tf32')}, matmuls {machine.get('matmul_allow_tf32')}"
                     f" (torch defaults; `base` rows are float32 under these).")
    lines.append('')
    if tests.get('status') == 'skipped':
        lines.append(f"CUDA tests (`python -m pytest -m cuda`): skipped ({tests.get('note')}).")
    elif tests:
        counts = (f"{tests.get('passed', 0)} passed, {tests.get('failed', 0)} failed, {tests.get('errors', 0)} errors, "
                  f"{tests.get('skipped', 0)} skipped in {tests.get('seconds')} s")
        if tests.get('failed_tests'):
            counts += '; failed: ' + ', '.join(tests['failed_tests'])
        if tests.get('note'):
            counts += f"; {tests['note']}"
        lines.append(f"CUDA tests (`python -m pytest -m cuda`): **{tests['status']}** — {counts}.")
    ratio = headline.get('ratio')
    others = ', '.join(f'{variant} {value:.2f}x' for variant, value in headline.get('per_variant', {}).items()
                       if variant != headline.get('variant'))
    measured = f'{ratio:.2f}x' if ratio is not None else 'not measured (see skipped rows)'
    lines.append(f"Headline: **{headline.get('model')} trains at {measured} {headline.get('reference')}'s throughput** "
                 f"({headline.get('variant')}, batch {plan['batch_size']}, {plan['img_size']} px)"
                 + (f'; other variants: {others}' if others else '') + '.')
    lines += ['', f"#### Throughput (batch {plan['batch_size']}, {plan['img_size']}x{plan['img_size']}, median of "
              f"{plan['repeats']} blocks of {plan['iterations']} steps after {plan['warmup']} warm-up steps; peak "
              f"memory from `torch.cuda.max_memory_allocated`)", '',
              format_table(_table_order(report.throughput, plan), list(plan['reference_models'])).rstrip('\n'), '']
    pipeline = report.parts.get('imagenet-c', {})
    lines += [f"#### ImageNet-C pipeline (validate.py on a generated tree: {pipeline.get('num_images', '?')} noise "
              f"JPEGs of {plan['pipeline_image_size']} px, {plan['pipeline_model']}, batch "
              f"{plan['pipeline_batch_size']}, median of the runs after a warm-up; img/s of the evaluation loop, "
              f"wall seconds with model loading)",
              '', '| decode | workers | images | wall s | eval loop s | img/s | mCE (random weights) | note |',
              '|---|---|---|---|---|---|---|---|']
    for entry in report.pipeline:
        note = entry.get('error') and f"error: {entry['error']}" or entry.get('skipped') and \
            f"skipped: {entry['skipped']}" or entry.get('note', '')
        lines.append(f"| {entry['decode']} | {entry['workers']} | {_fmt(entry.get('num_images'))} | "
                     f"{_fmt(entry.get('seconds'), 2)} | {_fmt(entry.get('eval_seconds'), 2)} | "
                     f"{_fmt(entry.get('images_per_second'))} | "
                     f"{_fmt(entry.get('mean_corruption_error'), 2)} | {note.replace('|', '/')} |")
    if not report.pipeline:
        lines.append(f"| - | - | - | - | - | - | - | {pipeline.get('status', 'not run')}: {pipeline.get('note', '')} |")
    skipped = [f"- {name}: {part['status']} ({part.get('note', '')})" for name, part in report.parts.items()
               if part.get('status') not in ('done',)]
    if skipped:
        lines += ['', 'Parts not done in full:', *skipped]
    lines.append(f"\nTotal wall time {report.seconds:.0f} s of a {plan['budget_s']:.0f} s budget.")
    return '\n'.join(lines) + '\n'


def _csv_text(report: CheckReport) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction='ignore')
    writer.writeheader()
    reference = report.headline.get('reference')
    for result in report.throughput:
        status = 'skipped' if result.skipped else 'error' if result.error else 'measured'
        row = {key: value for key, value in asdict(result).items() if key in CSV_COLUMNS}
        writer.writerow({**row, 'part': 'throughput', 'status': status, 'note': result.skipped or result.error or '',
                         'images_per_second': None if status != 'measured' else round(result.images_per_second, 2),
                         'step_ms': None if status != 'measured' else round(result.step_ms, 2),
                         'ratio_to_headline_reference': result.ratios.get(reference)})
    for entry in report.pipeline:
        status = 'error' if 'error' in entry else 'measured' if 'seconds' in entry else 'skipped'
        writer.writerow({'part': 'imagenet-c', 'model': entry['model'], 'mode': 'eval', 'variant': entry['decode'],
                         'device': entry['device'], 'batch_size': entry['batch_size'], 'img_size': entry['img_size'],
                         'images_per_second': entry.get('images_per_second'), 'seconds': entry.get('seconds'),
                         'eval_seconds': entry.get('eval_seconds'),
                         'workers': entry['workers'], 'num_images': entry.get('num_images'),
                         'mean_corruption_error': entry.get('mean_corruption_error'), 'status': status,
                         'note': entry.get('error') or entry.get('skipped') or entry.get('note', '')})
    return buffer.getvalue()


def _json_safe(value: Any) -> Any:
    """NaN (a row without a measurement) is not JSON: null instead."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def write_outputs(report: CheckReport, out_dir: Path) -> str:
    """Write the three files (atomically); returns the Markdown."""
    markdown = format_markdown(report)
    payload = {'plan': report.plan, 'machine': report.machine, 'headline': report.headline, 'tests': report.tests,
               'parts': report.parts, 'throughput': [asdict(result) for result in report.throughput],
               'imagenet_c': report.pipeline, 'seconds': round(report.seconds, 1)}
    atomic_write_text(json.dumps(_json_safe(payload), indent=2, default=str) + '\n', out_dir / OUTPUT_FILES[0])
    atomic_write_text(_csv_text(report), out_dir / OUTPUT_FILES[1])
    atomic_write_text(markdown, out_dir / OUTPUT_FILES[2])
    return markdown


# --------------------------------------------------------------------------------------------------------- run

class BudgetExceeded(BaseException):
    """The hard stop: raised by a timer where the run stands when the budget (plus a grace) has run out.

    A BaseException, so that a measurement's ``except Exception`` does not record it as one failed row; the check
    catches it, reports what was not done, and writes its files.
    """


@contextlib.contextmanager
def _hard_stop(seconds: float, reason: str) -> Iterator[None]:
    """Raise :class:`BudgetExceeded` after ``seconds`` (main thread, POSIX; elsewhere only the soft checks)."""
    if not hasattr(signal, 'setitimer') or threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise BudgetExceeded(reason)

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_device_check(plan: CheckPlan, out_dir: Path, tests_args: Sequence[str] | None = None,
                     grace_s: float = 30.0) -> CheckReport:
    """Run every part that fits (see the module docstring), writing the outputs after every row and part.

    Before each measurement the time it is expected to take is checked against what is left (the soft budget);
    ``grace_s`` after the budget a timer stops whatever still runs (a compilation that took far longer than the
    one before it), and the rows and parts not done are reported as such.
    """
    from .throughput import add_reference_ratios, machine_info, skipped_result

    clock = _Clock(plan.budget_s)
    report = CheckReport(plan=asdict(plan))
    report.machine = machine_info(plan.device)
    # where torch.compile keeps its kernels (device_check.sh: a temp dir, not OUT_DIR): warm on a second run
    report.machine['compile_cache'] = os.environ.get('TORCHINDUCTOR_CACHE_DIR')
    print(' '.join(f'{key}={value}' for key, value in report.machine.items()), flush=True)
    estimates = _Estimates(plan)
    rows = _throughput_plan(plan)

    def save() -> None:
        add_reference_ratios(report.throughput, plan.reference_models)
        report.headline = headline_ratio(report.throughput, *plan.headline_pair, plan.headline_variant)
        report.seconds = clock.elapsed()
        write_outputs(report, out_dir)

    def progress(result: Any) -> None:
        state = (f'skipped: {result.skipped}' if result.skipped else f'error: {result.error}' if result.error
                 else f'{result.images_per_second:.1f} img/s, {result.step_ms:.1f} ms/step'
                      + (f', peak {result.peak_memory_mib:.0f} MiB' if result.peak_memory_mib is not None else ''))
        print(f'[{clock.elapsed():5.0f} s] {result.model} {result.mode} {result.variant}: {state}', flush=True)
        save()

    def finish_part(name: str, status: str, note: str = '', **extra: Any) -> None:
        report.parts[name] = {'status': status, 'note': note, **extra}
        save()

    def throughput_part(name: str, part_rows: Sequence[tuple[str, str, str]], budget_s: float) -> None:
        clock.begin_part(budget_s)
        report.parts[name] = {'status': 'running'}
        started = time.perf_counter()
        counts = _measure_rows(plan, part_rows, clock, estimates, report, progress)
        status = 'done' if not counts['skipped'] else 'partly skipped' if counts['measured'] else 'skipped'
        note = f"{counts['skipped']} of {len(part_rows)} measurements did not fit the budget" if counts['skipped'] \
            else ''
        finish_part(name, status, note, seconds=round(time.perf_counter() - started, 1), **counts)

    def tests_part() -> None:
        if tests_args is None and plan.tests_budget_s is None:
            report.tests = {'status': 'skipped', 'note': '--quick: run `python -m pytest -m cuda` or the full check'}
            finish_part('cuda-tests', 'skipped', report.tests['note'])
            return
        if not (REPO / 'tests').is_dir():
            report.tests = {'status': 'skipped', 'note': f'no tests/ directory in {REPO}: run from a checkout'}
            finish_part('cuda-tests', 'skipped', report.tests['note'])
            return
        clock.begin_part(plan.tests_budget_s or 120.0)
        report.parts['cuda-tests'] = {'status': 'running'}
        print(f'[{clock.elapsed():5.0f} s] python -m pytest -m cuda (up to {clock.left():.0f} s)...', flush=True)
        report.tests = run_cuda_tests(plan.device, clock.left(), out_dir, list(tests_args or []))
        print(f"[{clock.elapsed():5.0f} s] CUDA tests: {report.tests['status']} ({report.tests.get('passed', 0)} "
              f"passed, {report.tests.get('failed', 0)} failed, {report.tests.get('errors', 0)} errors)", flush=True)
        finish_part('cuda-tests', 'done' if report.tests['status'] in ('passed', 'failed') else report.tests['status'],
                    report.tests.get('note', ''))

    def pipeline_part() -> None:
        clock.begin_part(plan.pipeline_budget_s)
        report.parts['imagenet-c'] = {'status': 'running'}
        started = time.perf_counter()
        try:
            pipeline = _run_pipeline(plan, clock, report)
        except Exception as failure:  # noqa: BLE001 - the tree or checkpoint could not be made: report, go on
            _logger.warning('ImageNet-C pipeline part failed', exc_info=True)
            finish_part('imagenet-c', 'failed', (str(failure).strip().splitlines() or [type(failure).__name__])[0])
            return
        incomplete = [entry for entry in report.pipeline if 'seconds' not in entry]
        note = '; '.join(f"{entry['decode']}: {entry.get('error') or entry.get('skipped')}" for entry in incomplete)
        finish_part('imagenet-c', 'done' if not incomplete else 'partly skipped', note,
                    seconds=round(time.perf_counter() - started, 1), **pipeline)

    def compile_part() -> None:
        if plan.compile_variant is not None:
            throughput_part('compile', [row for row in rows[2:] if 'compile' in row[2]],
                            clock.deadline - time.perf_counter())
            return
        variant = 'amp+channels_last+compile' if plan.device == 'cuda' else 'compile'
        for model in list(plan.robust_models) + list(plan.reference_models):
            for mode in ('train', 'infer'):
                report.throughput.append(skipped_result(_settings(plan, model, mode, variant),
                                                        '--quick: compilation does not fit'))
        finish_part('compile', 'skipped', '--quick: compilation does not fit')

    parts: list[tuple[str, Callable[[], None]]] = [
        ('headline', lambda: throughput_part('headline', rows[:2], plan.headline_budget_s)),
        ('cuda-tests', tests_part),
        ('throughput', lambda: throughput_part('throughput', [row for row in rows[2:] if 'compile' not in row[2]],
                                               plan.throughput_budget_s)),
        ('imagenet-c', pipeline_part),
        ('compile', compile_part),
    ]
    try:
        limit = plan.budget_s + grace_s
        with _hard_stop(limit - clock.elapsed(), f'the run reached its hard time limit (budget + {grace_s:.0f} s)'):
            for _, part in parts:
                part()
    except BudgetExceeded as stop:
        _report_cut_short(report, plan, rows, [name for name, _ in parts], str(stop))
    save()
    return report


def _report_cut_short(report: CheckReport, plan: CheckPlan, rows: Sequence[tuple[str, str, str]],
                      part_names: Sequence[str], reason: str) -> None:
    """After the hard stop: the part that was running is cut short, later parts and unmeasured rows are skipped."""
    from .throughput import skipped_result
    print(f'{reason}: stopping', flush=True)
    for name in part_names:
        part = report.parts.get(name)
        if part is None:
            report.parts[name] = {'status': 'skipped', 'note': reason}
        elif part['status'] == 'running':
            report.parts[name] = {'status': 'cut short', 'note': reason}
    if report.parts['cuda-tests']['status'] == 'cut short':
        report.tests = {'status': 'timed out', 'note': reason}
    elif not report.tests:
        report.tests = {'status': 'skipped', 'note': reason}
    done = {(result.model, result.mode, result.variant) for result in report.throughput}
    if plan.compile_variant is None:
        variant = 'amp+channels_last+compile' if plan.device == 'cuda' else 'compile'
        rows = [*rows, *((model, mode, variant) for model in (*plan.robust_models, *plan.reference_models)
                         for mode in ('train', 'infer'))]
    for model, mode, variant in rows:
        if (model, mode, variant) not in done:
            report.throughput.append(skipped_result(_settings(plan, model, mode, variant), reason))
    decoded = {entry['decode'] for entry in report.pipeline}
    for label in ('workers-decode', 'decode-on-device'):
        if label not in decoded:
            report.pipeline.append({'model': plan.pipeline_model, 'decode': label, 'device': plan.device,
                                    'workers': plan.pipeline_workers, 'batch_size': plan.pipeline_batch_size,
                                    'img_size': plan.pipeline_image_size, 'skipped': reason})


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog='device_check.sh', description=__doc__.split('\n')[0])
    parser.add_argument('out_dir', type=Path, help='where device_check.json/.csv/.md go (created if missing)')
    parser.add_argument('--device', default='cuda', choices=('cuda', 'cpu'),
                        help='cpu: the same plan with tiny models, to check the check itself')
    parser.add_argument('--quick', action='store_true', help='about 3 minutes: the headline ratio, throughput of '
                        'the CUDA default variant, the ImageNet-C pipeline; no tests, no compilation')
    parser.add_argument('--budget', type=float, default=None, metavar='SECONDS',
                        help='total wall-time budget (default 480, or 170 with --quick)')
    parser.add_argument('--tests', default=None, metavar='PYTEST_ARGS',
                        help='extra pytest arguments after `-m cuda` (e.g. a test file); given with --quick, the '
                        'tests run there too')
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.budget is not None and args.budget <= 0:
        raise UsageError(f'--budget must be a positive number of seconds, got {args.budget}')
    if args.out_dir.exists() and not args.out_dir.is_dir():
        raise UsageError(f'{args.out_dir} exists and is not a directory; give a directory for the outputs')
    import torch

    from ..engine.runtime import resolve_device_kind
    try:
        resolve_device_kind(args.device)
    except UsageError:  # no GPU visible
        raise UsageError('--device cuda: no CUDA GPU is visible; --device cpu checks the check on a CPU') from None
    setup_logging(False)  # warnings only: the progress lines and the table are the output
    args.out_dir.mkdir(parents=True, exist_ok=True)
    plan = plan_for(args.device, args.quick, args.budget)
    tests_args = shlex.split(args.tests) if args.tests is not None else None
    threads = torch.get_num_threads()
    if args.device == 'cpu':  # checking the check, not measuring a CPU: one thread suffers least on a shared machine
        torch.set_num_threads(1)
    try:
        report = run_device_check(plan, args.out_dir, tests_args)
    finally:
        torch.set_num_threads(threads)
    sys.stdout.write('\n' + format_markdown(report))
    print(f"outputs: {', '.join(str(args.out_dir / name) for name in OUTPUT_FILES)}", flush=True)
    return 1 if report.tests.get('status') in ('failed', 'timed out') else 0
