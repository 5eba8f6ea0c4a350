"""Wiring for validate.py: find the datasets, load the model once, evaluate each set, aggregate, report.

Order matters for users: everything cheap that can be wrong (dataset folders, results path, checkpoint file) is
checked before the model is built, so a typo costs a second, not a model load.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..checkpoint import (atomic_write_text, check_state_dict_fits, checkpoint_model_kwargs, extract_state_dict,
                          load_checkpoint_file)
from ..cli import UsageError
from ..data.folder import ClassFolderDataset
from ..data.label_space import LabelSpace, resolve_label_space
from ..data.transforms import EvalPreprocessing, build_eval_transform, resolve_eval_preprocessing
from ..engine.evaluate import EvalResult, GroupCounts, evaluate
from ..engine.runtime import AMP_DTYPES
from ..report import check_results_path, readme_row, write_figure, write_results
from . import BENCHMARKS, SUITE_ORDER, get_benchmark
from .base import Benchmark, DatasetLayoutError, PreparedData, normalized_name
from .imagenet_c import CORRUPTIONS, EXTRA_CORRUPTIONS, SEVERITIES, ImageNetC, aggregate_corruption_errors
from .device_decode import (DeviceDecodingLoader, JpegBytesDataset, check_device_preprocessing,
                            collate_encoded_batch)
from .loader import build_eval_loader, default_workers

__all__ = ['ValidationRequest', 'infer_dataset', 'find_suite_datasets', 'load_eval_model', 'run_validation',
           'partial_results_path', 'apply_checkpoint_defaults']

_logger = logging.getLogger(__name__)


@dataclass
class ValidationRequest:
    """Everything validate.py's command line decides (timm's flag names; release flags already mapped)."""

    data_dir: str
    dataset: str | None = None
    model: str | None = None
    checkpoint: str | None = None
    pretrained: bool = False
    use_ema: bool = False
    num_classes: int | None = None
    model_kwargs: Mapping[str, Any] | None = None
    class_map: str | None = None
    suite: bool = False
    suite_datasets: Sequence[str] | None = None
    dataset_dirs: Mapping[str, str] = field(default_factory=dict)
    resize_mode: str | None = None
    img_size: int | None = None
    input_size: Sequence[int] | None = None
    crop_pct: float | None = None
    interpolation: str | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    batch_size: int = 64
    workers: int | None = None
    pin_memory: bool = False
    decode_on_device: bool = False
    amp_dtype: str | None = None
    channels_last: bool = False
    fuse: bool = True
    log_freq: int = 50
    results_file: str | None = None
    figure: str | None = None
    partial_results: str | None = None
    allow_partial: bool = False
    extra_corruptions: bool = False
    clean_error: float | None = None
    group_sync_every: int = 50
    attack: Any = None  # robustcnn.adversarial.AttackSpec: score robust accuracy instead (see adversarial/)


# ---------------------------------------------------------------------------------------------------- datasets

def infer_dataset(data_dir: str | os.PathLike) -> tuple[str, str]:
    """Guess the dataset when --dataset is not given (the release's commands do not name it): ``(name, why)``."""
    root = Path(data_dir)
    imagenet_c = BENCHMARKS['imagenet-c']
    assert isinstance(imagenet_c, ImageNetC)
    if root.is_dir() and any(imagenet_c.corruption_folder(root, name) is not None for name in CORRUPTIONS):
        return 'imagenet-c', 'corruption folders found'
    names = [root.name] + ([root.parent.name] if root.name.lower() in ('val', 'validation', 'sketch') else [])
    for name in names:
        for benchmark in SUITE_ORDER:
            known = {normalized_name(folder) for folder in BENCHMARKS[benchmark].suite_folder_names}
            if normalized_name(name) in known:
                return benchmark, f'folder name {name!r}'
    if root.is_dir():
        folders = [entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith('.')]
        if folders and all(folder.isdigit() for folder in folders):
            return 'imagenet-v2', 'integer class folders'
        if (root / 'sketch').is_dir():
            return 'imagenet-sketch', 'sketch/ sub-folder'
    return 'imagenet', 'default: ImageNet-1k wnid class folders'


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
    for name in SUITE_ORDER + tuple(name for name in wanted if name not in SUITE_ORDER):
        if name not in wanted:
            continue
        if name in request.dataset_dirs:
            found[name] = Path(request.dataset_dirs[name])
            continue
        for folder_name in BENCHMARKS[name].suite_folder_names:
            if normalized_name(folder_name) in children:
                found[name] = children[normalized_name(folder_name)]
                break
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
    if not isinstance(checkpoint, Mapping):
        return request
    metadata = checkpoint.get('metadata')
    metadata = metadata if isinstance(metadata, Mapping) else {}
    changes: dict[str, Any] = {}
    if request.model_kwargs is None:
        stored_model = metadata.get('model') or checkpoint.get('arch')
        kwargs = checkpoint_model_kwargs(checkpoint)
        if kwargs and (stored_model is None or stored_model == model_name):
            changes['model_kwargs'] = kwargs
        elif kwargs:
            _logger.warning('checkpoint was trained as %s with %s; not applying those arguments to --model %s',
                            stored_model, kwargs, model_name)
    if request.img_size is None and request.input_size is None and metadata.get('input_size'):
        changes['input_size'] = tuple(int(value) for value in metadata['input_size'])
    for name in ('crop_pct', 'interpolation', 'mean', 'std'):
        if getattr(request, name) is None and metadata.get(name) is not None:
            value = metadata[name]
            changes[name] = tuple(float(item) for item in value) if name in ('mean', 'std') else value
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
    metadata = checkpoint.get('metadata') if isinstance(checkpoint, Mapping) else None
    if num_classes is None and isinstance(metadata, Mapping) and metadata.get('num_classes'):
        num_classes = int(metadata['num_classes'])
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
    """Fold BatchNorms into convolutions where the model offers it (timm's reparameterize hook / ``fuse()``)."""
    if callable(getattr(model, 'fuse', None)):
        fused = model.fuse()
        return fused if isinstance(fused, torch.nn.Module) else model
    from timm.utils.model import reparameterize_model
    return reparameterize_model(model, inplace=True)


# ---------------------------------------------------------------------------------------------------- ImageNet-C

def partial_results_path(request: ValidationRequest) -> Path | None:
    """Where finished ImageNet-C folders are recorded: --partial-results, else beside --results-file."""
    if request.partial_results:
        return Path(request.partial_results)
    if request.results_file:
        results = Path(request.results_file)
        return results.with_name(f'{results.stem}.imagenet-c.partial.json')
    return None


def _run_identity(request: ValidationRequest, model_name: str, data_dir: Path) -> dict[str, Any]:
    """What must match for saved folder results to be reused: same weights, same preprocessing, same data."""
    checkpoint = None
    if request.checkpoint:
        stat = os.stat(request.checkpoint)
        checkpoint = {'path': os.path.abspath(request.checkpoint), 'size': stat.st_size, 'mtime_ns': stat.st_mtime_ns}
    return {
        'model': model_name, 'checkpoint': checkpoint, 'use_ema': request.use_ema, 'data_dir': str(data_dir.resolve()),
        'resize_mode': request.resize_mode, 'img_size': request.img_size,
        'input_size': list(request.input_size) if request.input_size else None, 'crop_pct': request.crop_pct,
        'interpolation': request.interpolation, 'mean': list(request.mean) if request.mean else None,
        'std': list(request.std) if request.std else None, 'class_map': request.class_map,
        'num_classes': request.num_classes, 'pretrained': request.pretrained,
        'model_kwargs': dict(request.model_kwargs) if request.model_kwargs else None,
        'decode_on_device': request.decode_on_device,
    }


def _load_partial(path: Path | None, identity: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Folder counts saved by an interrupted run with the same identity; anything else starts over."""
    if path is None or not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError) as error:
        _logger.warning('ignoring unreadable ImageNet-C partial results %s (%s); starting over', path, error)
        return {}
    if saved.get('identity') != dict(identity):
        _logger.warning('ImageNet-C partial results %s come from a different model/checkpoint/preprocessing; '
                        'starting over', path)
        return {}
    folders = saved.get('folders', {})
    return {name: {key: int(value) for key, value in counts.items()} for name, counts in folders.items()}


def _write_partial(path: Path, identity: Mapping[str, Any], folders: Mapping[str, Mapping[str, int]]) -> None:
    text = json.dumps({'identity': dict(identity), 'folders': dict(folders)}, indent=1, sort_keys=True)
    atomic_write_text(text + '\n', path)


def _share_finished_groups(runtime: Any, group_names: Sequence[str], finished: Mapping[str, Any]) -> list[str]:
    """Every process must skip the same folders: the main process's view wins."""
    flags = torch.zeros(len(group_names), dtype=torch.long, device=runtime.device)
    if runtime.is_main:
        for position, name in enumerate(group_names):
            flags[position] = int(name in finished)
    runtime.all_reduce_sum(flags)
    return [name for name, flag in zip(group_names, flags.tolist()) if flag]


# ---------------------------------------------------------------------------------------------------- evaluation

@dataclass
class _Context:
    request: ValidationRequest
    runtime: Any
    model: torch.nn.Module
    model_name: str
    amp_dtype: torch.dtype | None
    workers: int


def _preprocessing(context: _Context, benchmark: Benchmark) -> EvalPreprocessing:
    request = context.request
    return resolve_eval_preprocessing(
        context.model, request.resize_mode or benchmark.default_resize_mode, img_size=request.img_size,
        input_size=request.input_size, crop_pct=request.crop_pct, interpolation=request.interpolation,
        mean=request.mean, std=request.std)


def _preprocessing_record(context: _Context, preprocessing: EvalPreprocessing) -> dict[str, Any]:
    """What a results entry says about the pixels: the preprocessing and where JPEGs were decoded."""
    return {**preprocessing.as_dict(), 'decode_on_device': context.request.decode_on_device}


def _evaluate_prepared(context: _Context, prepared: PreparedData, preprocessing: EvalPreprocessing,
                       description: str, **evaluate_options: Any) -> EvalResult:
    request = context.request
    transform = build_eval_transform(preprocessing)
    loader: Any
    if request.decode_on_device:
        # workers read bytes (and fully decode what is not a plain JPEG); the device decodes and resizes batches
        dataset = JpegBytesDataset(prepared.samples, transform, on_decode_error='skip')
        loader = DeviceDecodingLoader(
            build_eval_loader(dataset, request.batch_size, context.workers, context.runtime, request.pin_memory,
                              collate_fn=collate_encoded_batch),
            transform, context.runtime.device, dataset)
    else:
        dataset = ClassFolderDataset(prepared.samples, transform, on_decode_error='skip')
        loader = build_eval_loader(dataset, request.batch_size, context.workers, context.runtime, request.pin_memory)
    return evaluate(
        context.model, loader, context.runtime, amp_dtype=context.amp_dtype, channels_last=request.channels_last,
        label_subset=prepared.label_subset, normalization=(preprocessing.mean, preprocessing.std),
        log_freq=request.log_freq, description=description, **evaluate_options)


def _run_class_folder(context: _Context, benchmark: Benchmark, prepared: PreparedData) -> dict[str, Any]:
    preprocessing = _preprocessing(context, benchmark)
    _logger.info('%s: %d images from %s, preprocessing %s', benchmark.name, len(prepared.samples), prepared.root,
                 preprocessing)
    result = _evaluate_prepared(context, prepared, preprocessing, benchmark.name)
    entry = result.metrics()
    entry['preprocessing'] = _preprocessing_record(context, preprocessing)
    if prepared.label_subset is not None:
        entry['label_subset_size'] = len(prepared.label_subset)
    entry['elapsed_seconds'] = result.elapsed_seconds
    return entry


@dataclass
class _ImageNetCPlan:
    """ImageNet-C's folders still to evaluate, and what an interrupted run already finished."""

    prepared: PreparedData
    finished: dict[str, dict[str, int]]
    resumed: int
    identity: dict[str, Any]
    partial_path: Path | None
    imagenet_1k: bool = True  # mCE's AlexNet baseline is defined for the 1000 ImageNet classes only


def _plan_imagenet_c(request: ValidationRequest, runtime: Any, benchmark: ImageNetC, data_dir: Path,
                     label_space: LabelSpace, model_name: str) -> _ImageNetCPlan:
    corruptions = CORRUPTIONS + (EXTRA_CORRUPTIONS if request.extra_corruptions else ())
    found, _ = benchmark.find_groups(data_dir, corruptions)
    identity = _run_identity(request, model_name, data_dir)
    partial_path = partial_results_path(request)
    saved = _load_partial(partial_path, identity) if runtime.is_main else {}
    skip = _share_finished_groups(runtime, list(found), saved)
    if skip:
        _logger.info('imagenet-c: resuming; %d of %d folders already finished (%s)', len(skip), len(found),
                     partial_path)
    prepared = benchmark.prepare(data_dir, label_space, extra_corruptions=request.extra_corruptions,
                                 allow_partial=request.allow_partial, skip_groups=skip)
    finished = {name: saved[name] for name in skip if name in saved}
    return _ImageNetCPlan(prepared, finished, len(skip), identity, partial_path, label_space.is_imagenet_1k)


def _run_imagenet_c(context: _Context, benchmark: ImageNetC, plan: _ImageNetCPlan,
                    clean_error: float | None) -> dict[str, Any]:
    request, runtime = context.request, context.runtime
    prepared, partial_path, identity = plan.prepared, plan.partial_path, plan.identity
    corruptions = prepared.notes['corruptions']
    preprocessing = _preprocessing(context, benchmark)
    finished = dict(plan.finished)

    def record(counts: GroupCounts) -> None:
        if not runtime.is_main or partial_path is None:
            return
        new = False
        for group in counts.finished(prepared.group_sizes):
            name = prepared.group_names[group]
            if prepared.group_sizes[group] and name not in finished:
                finished[name] = {'correct': counts.correct[group], 'scored': counts.scored[group],
                                  'skipped': counts.skipped[group]}
                new = True
        if new:
            _write_partial(partial_path, identity, finished)

    _logger.info('imagenet-c: %d images in %d folders to evaluate in one pipeline, preprocessing %s',
                 len(prepared.samples), len(prepared.group_names) - plan.resumed, preprocessing)
    result = _evaluate_prepared(
        context, prepared, preprocessing, 'imagenet-c', sample_groups=prepared.sample_groups,
        num_groups=len(prepared.group_names), on_groups_update=record, group_sync_every=request.group_sync_every)
    counts = dict(finished)
    assert result.groups is not None
    for group, name in enumerate(prepared.group_names):
        if name not in counts and prepared.group_sizes[group]:
            counts[name] = {'correct': result.groups.correct[group], 'scored': result.groups.scored[group],
                            'skipped': result.groups.skipped[group]}
    errors: dict[str, dict[int, float]] = {}
    for name, folder_counts in counts.items():
        corruption, severity = name.split('/')
        if folder_counts['scored']:
            errors.setdefault(corruption, {})[int(severity)] = 100.0 * (
                1.0 - folder_counts['correct'] / folder_counts['scored'])
    aggregates = aggregate_corruption_errors(errors, clean_error=clean_error)
    if not plan.imagenet_1k:
        # AlexNet's ImageNet-C errors are not a baseline for another label space: a number there would mislead
        _logger.info('imagenet-c: mce and relative_mce left out (null): they are normalized by AlexNet\'s '
                     'ImageNet-C errors, which exist for the 1000 ImageNet classes only')
        aggregates.update(mce=None, relative_mce=None, corruption_errors={})
    ordered = {corruption: {str(severity): errors[corruption][severity] for severity in SEVERITIES
                            if severity in errors[corruption]}
               for corruption in corruptions if corruption in errors}
    entry = {
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
        'resumed_folders': plan.resumed,
        'preprocessing': _preprocessing_record(context, preprocessing),
        'elapsed_seconds': result.elapsed_seconds,
    }
    if runtime.is_main and partial_path is not None and partial_path.exists():
        partial_path.unlink()  # complete: the results file now holds everything
    return entry


def run_validation(request: ValidationRequest, runtime: Any) -> dict[str, Any]:
    """Evaluate one model on one dataset or a suite; returns the results payload (and writes the files)."""
    if request.results_file:
        try:
            check_results_path(request.results_file)
        except ValueError as error:
            raise UsageError(str(error)) from None
    if request.batch_size <= 0:
        raise UsageError(f'--batch-size must be positive, got {request.batch_size}')
    if request.amp_dtype is not None and request.amp_dtype not in AMP_DTYPES:
        raise UsageError(f'--amp-dtype must be one of {", ".join(AMP_DTYPES)}, got {request.amp_dtype}')
    if request.decode_on_device:
        if runtime.kind not in ('cuda', 'cpu'):
            raise UsageError(f'--decode-on-device works with CUDA (nvJPEG) or the CPU, not {runtime.kind}; drop it '
                             f'to decode in the loader workers')
        _logger.info('JPEGs are decoded on %s in batches (torchvision decode_jpeg%s); workers read the files',
                     runtime.device, ', nvJPEG' if runtime.kind == 'cuda' else '')
    if request.clean_error is not None and not 0 <= request.clean_error <= 100:
        raise UsageError(f'--clean-error is a top-1 error in percent (0..100), got {request.clean_error}')

    # 1. datasets: folders exist and look right (cheap; before the model loads)
    if request.suite:
        datasets = find_suite_datasets(request)
    else:
        name = request.dataset
        if name is None:
            name, why = infer_dataset(request.data_dir)
            _logger.info('dataset: %s (%s; pass --dataset to choose)', name, why)
        datasets = {name: Path(request.data_dir)}
    for name, path in datasets.items():
        get_benchmark(name).check_exists(path)
    if request.attack is not None:
        from ..adversarial.evaluation import check_attack_request
        check_attack_request(request.attack, list(datasets), runtime.kind, request.decode_on_device)

    # 2. checkpoint file (its metadata may name the model and the classes)
    checkpoint = load_checkpoint_file(request.checkpoint) if request.checkpoint else None
    if checkpoint is None and not request.pretrained:
        raise UsageError('give --checkpoint PATH (or --pretrained for timm\'s released weights)')
    metadata = checkpoint.get('metadata') if isinstance(checkpoint, Mapping) else None
    model_name = request.model or (metadata.get('model') if isinstance(metadata, Mapping) else None)
    if not model_name:
        raise UsageError('give --model NAME (the checkpoint does not record its model)')
    request = apply_checkpoint_defaults(request, checkpoint, model_name)
    model_label_space = resolve_label_space(request.class_map, metadata, request.checkpoint, default=None) \
        if (request.class_map or (isinstance(metadata, Mapping) and metadata.get('class_names'))) else None

    # 3. scan the class-folder sets now, so a bad layout fails before the model loads
    try:
        prepared, label_spaces, plans = _prepare_all(request, runtime, model_name, datasets, model_label_space)
    except ValueError as error:  # label-space problems: the user picked the wrong dataset / class map
        raise UsageError(str(error)) from None
    explicit = model_label_space is not None
    model_label_space = model_label_space or max(label_spaces.values(), key=len)

    # 4. the model, once
    model = load_eval_model(model_name, checkpoint, request.checkpoint, model_label_space,
                            num_classes=request.num_classes, pretrained=request.pretrained, use_ema=request.use_ema,
                            class_list_is_explicit=explicit, model_kwargs=request.model_kwargs)
    del checkpoint
    if request.fuse:
        model = _fuse(model)
    model.eval().to(runtime.device)
    if request.channels_last:
        model = model.to(memory_format=torch.channels_last)
    _logger.info('model %s (%.2f M parameters) on %s, %d process(es)', model_name,
                 sum(parameter.numel() for parameter in model.parameters()) / 1e6, runtime.device, runtime.world_size)
    context = _Context(request=request, runtime=runtime, model=model, model_name=model_name,
                       amp_dtype=AMP_DTYPES[request.amp_dtype] if request.amp_dtype else None,
                       workers=default_workers() if request.workers is None else request.workers)
    try:
        if request.decode_on_device:  # every set's preprocessing, before the first image is read
            for name in datasets:
                check_device_preprocessing(_preprocessing(context, get_benchmark(name)))
        return _evaluate_all(context, datasets, prepared, plans)
    except ValueError as error:
        if isinstance(error, UsageError):
            raise
        raise UsageError(str(error)) from None


def _prepare_all(request: ValidationRequest, runtime: Any, model_name: str, datasets: Mapping[str, Path],
                 model_label_space: LabelSpace | None,
                 ) -> tuple[dict[str, PreparedData], dict[str, LabelSpace], dict[str, _ImageNetCPlan]]:
    """Scan the class-folder sets and check ImageNet-C's folders, before the model loads."""
    prepared: dict[str, PreparedData] = {}
    label_spaces: dict[str, LabelSpace] = {}
    plans: dict[str, _ImageNetCPlan] = {}
    for name, path in datasets.items():
        benchmark = get_benchmark(name)
        label_space = model_label_space or benchmark.default_label_space(path) or LabelSpace.imagenet_1k()
        label_spaces[name] = label_space
        if name == 'imagenet-c':
            assert isinstance(benchmark, ImageNetC)
            plans[name] = _plan_imagenet_c(request, runtime, benchmark, path, label_space, model_name)
        else:
            prepared[name] = benchmark.prepare(path, label_space)
    return prepared, label_spaces, plans


def _evaluate_all(context: _Context, datasets: Mapping[str, Path], prepared: Mapping[str, PreparedData],
                  plans: Mapping[str, _ImageNetCPlan]) -> dict[str, Any]:
    request, runtime, model_name = context.request, context.runtime, context.model_name
    payload: dict[str, Any] = {'model': model_name, 'checkpoint': request.checkpoint, 'results': {}}
    clean_error = request.clean_error
    for name, path in datasets.items():
        benchmark = get_benchmark(name)
        if name == 'imagenet-c':
            assert isinstance(benchmark, ImageNetC)
            entry = _run_imagenet_c(context, benchmark, plans[name], clean_error)
            _logger.info('imagenet-c: mean_corruption_error %s, mce %s, relative_mce %s%s',
                         _fmt(entry['mean_corruption_error']), _fmt(entry['mce']), _fmt(entry['relative_mce']),
                         ' (PARTIAL)' if entry['partial'] else '')
        elif request.attack is not None:
            from ..adversarial.evaluation import run_attack
            preprocessing = _preprocessing(context, benchmark)
            entry = run_attack(context, name, prepared[name], preprocessing,
                               _preprocessing_record(context, preprocessing), _run_identity(request, model_name, path))
        else:
            entry = _run_class_folder(context, benchmark, prepared[name])
            if name == 'imagenet' and clean_error is None and math.isfinite(entry['top1']):
                clean_error = 100.0 - entry['top1']
            _logger.info('%s: top1 %s top5 %s loss %s over %d images (%d skipped files)', name, _fmt(entry['top1']),
                         _fmt(entry['top5']), _fmt(entry['loss'], 4), entry['num_samples'], entry['skipped_files'])
        payload['results'][name] = entry
        if request.suite:
            payload['readme_row'] = readme_row(payload)
        if runtime.is_main and request.results_file:
            write_results(request.results_file, payload)  # after every set: a crash keeps what is done

    if runtime.is_main:
        if request.figure:
            write_figure(request.figure, payload)
        _logger.info('README row: %s', readme_row(payload))
    return payload


def _fmt(value: Any, digits: int = 2) -> str:
    return 'n/a' if value is None or (isinstance(value, float) and not math.isfinite(value)) else f'{value:.{digits}f}'
