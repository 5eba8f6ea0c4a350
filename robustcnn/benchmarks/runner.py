"""Wiring for validate.py: find the datasets, prepare each set, load the model once, let each set score itself, report.

Nothing here knows a set by name: what a set does is in its module (``Benchmark.prepare`` / ``score``). Order
matters for users: everything cheap that can be wrong (dataset folders, results path, checkpoint file) is
checked before the model is built, so a typo costs a second, not a model load.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from ..checkpoint import CheckpointMetadata, check_state_dict_fits, extract_state_dict, load_checkpoint_file
from ..cli import UsageError, setup_logging
from ..data.device_decode import check_device_preprocessing
from ..data.label_space import LabelSpace, resolve_label_space
from ..data.loader import default_workers
from ..engine.runtime import Runtime, init_runtime
from ..report import readme_row, results_to_markdown, write_figure, write_results
from . import BENCHMARKS, DEFAULT_DATASET, SUITE_ORDER, get_benchmark
from .base import Benchmark, ClassFolderBenchmark, DatasetLayoutError, PreparedData, normalized_name
from .context import EvaluationContext, model_record
from .request import ValidationRequest

__all__ = ['ValidationRequest', 'infer_dataset', 'find_suite_datasets', 'load_eval_model', 'run_validation',
           'apply_checkpoint_defaults', 'run_validation_command']

_logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------- datasets

def infer_dataset(data_dir: str | os.PathLike) -> tuple[str, str]:
    """Guess the dataset when --dataset is not given (the release's commands do not name it): ``(name, why)``.

    A layout only one set has wins (``Benchmark.detect(..., strong=True)``), then the folder's name, then weaker
    layout hints, then ImageNet.
    """
    root = Path(data_dir)
    for strong in (True, False):
        if not strong:
            names = [root.name] + ([root.parent.name] if root.name.lower() in ('val', 'validation', 'sketch') else [])
            for name in names:
                for benchmark in SUITE_ORDER:
                    known = {normalized_name(folder) for folder in BENCHMARKS[benchmark].suite_folder_names}
                    if normalized_name(name) in known:
                        return benchmark, f'folder name {name!r}'
        if root.is_dir():
            for benchmark in BENCHMARKS.values():
                why = benchmark.detect(root, strong=strong)
                if why:
                    return benchmark.name, why
    return DEFAULT_DATASET, 'default: ImageNet-1k wnid class folders'


def find_suite_datasets(request: ValidationRequest) -> dict[str, Path]:
    """``{dataset: folder}`` for every standard set found under the suite root (or given with --dataset-dir)."""
    root = Path(request.data_dir)
    if not root.is_dir():
        raise DatasetLayoutError(f'suite root folder not found: {root}')
    wanted = list(request.suite_datasets or SUITE_ORDER)
    for name in wanted:
        get_benchmark(name)
    children = {normalized_name(entry.name): entry for entry in sorted(root.iterdir()) if entry.is_dir()}
    found: dict[str, Path] = {}
    claims: dict[Path, list[str]] = {}
    for name in SUITE_ORDER + tuple(name for name in wanted if name not in SUITE_ORDER):
        if name not in wanted:
            continue
        if name in request.dataset_dirs:
            found[name] = Path(request.dataset_dirs[name])
            continue
        for folder_name in BENCHMARKS[name].suite_folder_names:
            if normalized_name(folder_name) in children:
                found[name] = children[normalized_name(folder_name)]
                claims.setdefault(found[name], []).append(name)
                break
    for folder, names in claims.items():
        # A folder name two sets share (sketch/: ImageNet-Sketch's or model-vs-human's): the set whose own layout
        # the folder has takes it, else the first in suite order.
        if len(names) > 1:
            owners = [name for name in names if BENCHMARKS[name].detect(folder, strong=True)] or names[:1]
            for name in names:
                if name not in owners:
                    del found[name]
    missing = [name for name in wanted if name not in found]
    if request.suite_datasets and missing:
        raise DatasetLayoutError(f'suite: no folder for {", ".join(missing)} under {root} '
                                 f'(name it with --dataset-dir NAME=PATH)')
    if missing:
        _logger.info('suite: not found under %s (skipped): %s', root, ', '.join(missing))
    if not found:
        raise DatasetLayoutError(
            f'suite: no dataset folders under {root}; expected some of '
            f'{", ".join(BENCHMARKS[name].suite_folder_names[0] for name in SUITE_ORDER)}')
    return found


# ---------------------------------------------------------------------------------------------------- model

def apply_checkpoint_defaults(request: ValidationRequest, checkpoint: Any, model_name: str) -> ValidationRequest:
    """Fill what the user left unset from the training checkpoint: model arguments and evaluation preprocessing.

    A model trained with ``--model-kwargs patch_size=8`` at 64 px only loads with that stem, and is only right at
    the size, crop, interpolation and normalization it was trained with; the timm config of the model name says
    224 px. Flags the user gives always win. The model arguments are used only when the checkpoint's model is the
    one evaluated (they belong to that architecture).
    """
    metadata = CheckpointMetadata.from_checkpoint(checkpoint, complete=True)
    changes: dict[str, Any] = {}
    if request.model_kwargs is None:
        stored_model, kwargs = metadata.model, metadata.model_kwargs
        if kwargs and (stored_model is None or stored_model == model_name):
            changes['model_kwargs'] = dict(kwargs)
        elif kwargs:
            _logger.warning('checkpoint was trained as %s with %s; not applying those arguments to --model %s',
                            stored_model, kwargs, model_name)
    if request.img_size is None and request.input_size is None and metadata.input_size:
        changes['input_size'] = metadata.input_size
    for name in ('crop_pct', 'interpolation', 'mean', 'std'):
        if getattr(request, name) is None and getattr(metadata, name) is not None:
            changes[name] = getattr(metadata, name)
    if changes:
        _logger.info('from the checkpoint: %s', ', '.join(f'{name}={value}' for name, value in changes.items()))
    return dataclasses.replace(request, **changes) if changes else request


def load_eval_model(
        model_name: str,
        checkpoint: Any,
        checkpoint_path: str | None,
        label_space: LabelSpace | None,
        *,
        num_classes: int | None = None,
        pretrained: bool = False,
        use_ema: bool = False,
        class_list_is_explicit: bool = True,
        model_kwargs: Mapping[str, Any] | None = None,
) -> torch.nn.Module:
    """Build the timm model and load the weights.

    With an explicit class list (--class-map, the checkpoint's class_names) the model gets that many outputs; a
    list merely read off sorted folders (``--dataset folder``) only needs to fit inside the model's outputs, as in
    timm's validate.py.
    """
    import timm

    import robustcnn  # noqa: F401  (registers the robust_resnet_* models)
    if not timm.is_model(model_name):
        raise UsageError(f'unknown model {model_name!r}; see timm.list_models() (robust_resnet_* are ours)')
    if num_classes is None:
        num_classes = CheckpointMetadata.from_checkpoint(checkpoint, checkpoint_path or 'the checkpoint').num_classes
    if num_classes is None and class_list_is_explicit and label_space is not None and not label_space.is_imagenet_1k:
        num_classes = len(label_space)
    kwargs = dict(model_kwargs or {})
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    try:
        model = timm.create_model(model_name, pretrained=pretrained, **kwargs)
    except TypeError as error:
        raise UsageError(f'cannot create model {model_name!r}: {error}') from None
    if checkpoint is not None:
        state_dict = extract_state_dict(checkpoint, use_ema=use_ema)
        filter_fn = getattr(model, 'checkpoint_filter_fn', None)
        if filter_fn is not None:
            state_dict = filter_fn(state_dict, model)
        check_state_dict_fits(model, state_dict, source=str(checkpoint_path))
        model.load_state_dict(state_dict, strict=True)
    outputs = getattr(model, 'num_classes', None)
    if label_space is not None and outputs is not None and (
            outputs < len(label_space) or (class_list_is_explicit and outputs != len(label_space))):
        raise UsageError(
            f'model {model_name} has {outputs} outputs but its label space ({label_space.source}) has '
            f'{len(label_space)} classes; pass --num-classes / --class-map that match the checkpoint')
    return model


def _fuse(model: torch.nn.Module) -> torch.nn.Module:
    """Fold BatchNorms into convolutions where the model offers it: the one helper in ``models/fuse.py``."""
    from ..models.fuse import fuse_for_inference
    return fuse_for_inference(model)


# ---------------------------------------------------------------------------------------------------- evaluation

def run_validation_command(request: ValidationRequest, args: argparse.Namespace) -> int:
    """validate.py after its arguments are checked: the runtime (``--device``, ``--threads``), the evaluation, the
    table on stdout, the trackers (``--log-tensorboard`` / ``--log-wandb``)."""
    runtime = init_runtime(args.device)
    setup_logging(runtime.is_main)
    runtime.configure_threads(args.threads, log_level=logging.DEBUG)  # before its data checks' one-line errors
    with runtime.session():
        payload = run_validation(request, runtime)
    if runtime.is_main:
        sys.stdout.write(results_to_markdown(payload))
        from ..tracking import track_validation_run
        track_validation_run(args, payload)
    return 0


def run_validation(request: ValidationRequest, runtime: Runtime,
                   benchmarks: Mapping[str, Benchmark] | None = None) -> dict[str, Any]:
    """Evaluate one model on one dataset or a suite; returns the results payload (and writes the files).

    ``benchmarks``: sets that take the place of the registered ones of the same dataset name for this run (the
    synthetic demo's stylized set, which also knows each image's texture class); None: the registered sets.
    """
    if request.decode_on_device and runtime.kind not in ('cuda', 'cpu'):
        raise UsageError(f'--decode-on-device works with CUDA (nvJPEG) or the CPU, not {runtime.kind}; drop it '
                         f'to decode in the loader workers')
    settings = runtime.device_settings(amp=request.amp, amp_dtype=request.amp_dtype,
                                       channels_last=request.channels_last, batch_size=request.batch_size)
    if request.decode_on_device:
        _logger.info('JPEGs are decoded on %s in batches (torchvision decode_jpeg%s); workers read the files',
                     runtime.device, ', nvJPEG' if runtime.kind == 'cuda' else '')

    # 1. datasets: folders exist and look right (cheap; before the model loads)
    if request.suite:
        datasets = find_suite_datasets(request)
    else:
        name = request.dataset
        if name is None:
            name, why = infer_dataset(request.data_dir)
            _logger.info('dataset: %s (%s; pass --dataset to choose)', name, why)
        datasets = {name: Path(request.data_dir)}
    sets = {name: (benchmarks or {}).get(name) or get_benchmark(name) for name in datasets}
    for name, path in datasets.items():
        sets[name].check_exists(path)
    if request.attack is not None:
        from ..adversarial.evaluation import check_attack_request
        check_attack_request(request.attack, list(datasets), runtime.kind, request.decode_on_device)
        own_metric = [name for name in datasets if type(sets[name]).score is not ClassFolderBenchmark.score]
        if own_metric:
            raise UsageError(f'--attack measures top-1 under attack on class-folder sets; {", ".join(own_metric)} '
                             f'score(s) a metric of their own; leave them out (with --suite: --datasets)')

    # 2. checkpoint file (its metadata may name the model and the classes)
    checkpoint = load_checkpoint_file(request.checkpoint) if request.checkpoint else None
    if checkpoint is None and not request.pretrained:
        raise UsageError('give --checkpoint PATH (or --pretrained for timm\'s released weights)')
    metadata = CheckpointMetadata.from_checkpoint(checkpoint, request.checkpoint or 'the checkpoint')
    model_name = request.model or metadata.model
    if not model_name:
        raise UsageError('give --model NAME (the checkpoint does not record its model)')
    request = apply_checkpoint_defaults(request, checkpoint, model_name)
    model_label_space = resolve_label_space(request.class_map, metadata.class_names, request.checkpoint,
                                            default=None) if (request.class_map or metadata.class_names) else None

    # 3. scan the class-folder sets now, so a bad layout fails before the model loads
    prepared = _prepare_all(request, sets, datasets, model_label_space)
    explicit = model_label_space is not None
    model_label_space = model_label_space or max((item.label_space for item in prepared.values()), key=len)

    # 4. the model, once
    model = load_eval_model(model_name, checkpoint, request.checkpoint, model_label_space,
                            num_classes=request.num_classes, pretrained=request.pretrained, use_ema=request.use_ema,
                            class_list_is_explicit=explicit, model_kwargs=request.model_kwargs)
    del checkpoint
    if request.fuse:
        model = _fuse(model)
    model.eval().to(runtime.device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    _logger.info('model %s (%.2f M parameters) on %s, %d process(es)', model_name,
                 sum(parameter.numel() for parameter in model.parameters()) / 1e6, runtime.device, runtime.world_size)
    context = EvaluationContext(request=request, runtime=runtime, model=model, model_name=model_name,
                                settings=settings,
                                workers=default_workers() if request.workers is None else request.workers,
                                model_record=model_record(request, settings, model_name, model))
    if request.decode_on_device:  # every set's preprocessing, before the first image is read
        for name in datasets:
            check_device_preprocessing(context.preprocessing(sets[name]))
    return _score_all(context, sets, prepared)


def _prepare_all(request: ValidationRequest, sets: Mapping[str, Benchmark], datasets: Mapping[str, Path],
                 model_label_space: LabelSpace | None) -> dict[str, PreparedData]:
    """Every set scans its files and checks its layout, before the model loads."""
    prepared: dict[str, PreparedData] = {}
    for name, path in datasets.items():
        benchmark = sets[name]
        label_space = model_label_space or benchmark.default_label_space(path) or LabelSpace.imagenet_1k()
        prepared[name] = dataclasses.replace(benchmark.prepare(path, label_space, request), label_space=label_space)
    return prepared


def _score_all(context: EvaluationContext, sets: Mapping[str, Benchmark],
               prepared: Mapping[str, PreparedData]) -> dict[str, Any]:
    """Each set in turn scores itself; the results file is rewritten after every set (a crash keeps what is done),
    and once more with the summaries of families of sets (:meth:`Benchmark.suite_summary`) when there are any."""
    request, runtime = context.request, context.runtime
    payload: dict[str, Any] = {'model': context.model_name, 'checkpoint': request.checkpoint, 'results': {}}
    for name, data in prepared.items():
        benchmark = sets[name]
        if request.attack is not None:  # any set: robust accuracy under the attack instead of the set's own score
            from ..adversarial.evaluation import run_attack
            preprocessing = context.preprocessing(benchmark)
            entry = run_attack(context, name, data, preprocessing, context.preprocessing_record(preprocessing),
                               store=context.resume_store(f'{name}.attack', data, preprocessing))
        else:
            entry = benchmark.score(context, data)
        context.results[name] = entry
        payload['results'][name] = entry
        if request.suite:
            payload['readme_row'] = readme_row(payload)
        if runtime.is_main and request.results_file:
            write_results(request.results_file, payload)
    summaries = _suite_summaries(sets.values(), payload['results'])
    if summaries:
        payload['summaries'] = summaries
        if runtime.is_main and request.results_file:
            write_results(request.results_file, payload)

    if runtime.is_main:
        if request.figure:
            write_figure(request.figure, payload)
        _logger.info('README row: %s', readme_row(payload))
    return payload


def _suite_summaries(benchmarks: Iterable[Benchmark], results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``{key: summary}`` from one set of each family that ran (the sets of a family share the key and the hook)."""
    summaries: dict[str, Any] = {}
    asked: set[str] = set()
    for benchmark in benchmarks:
        key = benchmark.suite_summary_key
        if key is None or key in asked:
            continue
        asked.add(key)
        summary = benchmark.suite_summary(results)
        if summary is not None:
            summaries[key] = summary
    return summaries
