"""What an evaluation set's :meth:`~robustcnn.benchmarks.base.Benchmark.score` may use once the model is loaded.

The runner builds one :class:`EvaluationContext` per run; a set asks it for its preprocessing, runs the model
through :meth:`EvaluationContext.evaluate` (top-1/top-5/loss) or :meth:`EvaluationContext.predict` (every sample's
output, for metrics that are not top-k), reads the entries of the sets scored before it in ``results`` and, if it
is long enough to be killed, keeps finished parts in a :class:`ResumeStore`. Nothing here knows any set by name.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch

from ..atomic import atomic_write_text
from ..data.device_decode import DeviceDecodingLoader, JpegBytesDataset, collate_encoded_batch
from ..data.folder import ClassFolderDataset
from ..data.loader import build_eval_loader
from ..data.transforms import EvalPreprocessing, build_eval_transform, resolve_eval_preprocessing
from ..engine.evaluate import EvalResult, Predictions, evaluate, predict
from ..engine.runtime import DeviceSettings
from .base import PreparedData
from .request import ValidationRequest

if TYPE_CHECKING:
    from .base import Benchmark

__all__ = ['EvaluationContext', 'ResumeStore', 'Predictions', 'model_record']

_logger = logging.getLogger(__name__)


def model_record(request: ValidationRequest, settings: DeviceSettings, model_name: str,
                 model: torch.nn.Module) -> dict[str, Any]:
    """What decides the model's outputs apart from the pixels: the weights (file identity), the architecture and
    its arguments, and the numerics the run computes with."""
    checkpoint = None
    if request.checkpoint:
        stat = os.stat(request.checkpoint)
        checkpoint = {'path': os.path.abspath(request.checkpoint), 'size': stat.st_size, 'mtime_ns': stat.st_mtime_ns}
    return {
        'model': model_name, 'checkpoint': checkpoint, 'use_ema': request.use_ema, 'pretrained': request.pretrained,
        'model_kwargs': dict(request.model_kwargs) if request.model_kwargs else None,
        'num_classes': getattr(model, 'num_classes', None), 'amp_dtype': settings.amp_dtype,
        'channels_last': settings.channels_last, 'fuse': request.fuse,
    }


def _units_problem(units: Any, fields: tuple[str, ...] = ()) -> str | None:
    """What is wrong with a resume file's unit counts, or None: a tampered ImageNet-C file once gave a mean error
    of -207, so counts must be whole numbers >= 0 and no unit may have more images correct than scored."""
    if not isinstance(units, Mapping):
        return 'units is not a mapping'
    for name, counts in units.items():
        if not isinstance(counts, Mapping) or not counts:
            return f'unit {name!r} has no counts'
        if fields and set(counts) != set(fields):
            return f'unit {name!r} lacks {"/".join(fields)} counts'
        if not all(isinstance(value, int) and not isinstance(value, bool) and value >= 0 for value in counts.values()):
            return f'unit {name!r} has counts that are not whole numbers >= 0'
        if 'correct' in counts and 'scored' in counts and counts['correct'] > counts['scored']:
            return f'unit {name!r} has more correct ({counts["correct"]}) than scored ({counts["scored"]}) images'
    return None


class ResumeStore:
    """Finished units of one long set (ImageNet-C's folders), saved atomically so a killed run resumes.

    The file holds ``{"identity": ..., "units": {name: {count: int}}}``; saved units are reused only when the
    identity (model record, preprocessing record, data folder, label space) is equal, anything else starts over.
    Only the main process reads and writes; :meth:`load_shared` makes every process agree on what is finished.
    """

    def __init__(self, path: Path | None, identity: Mapping[str, Any], runtime: Any, name: str,
                 fields: tuple[str, ...] = ()) -> None:
        self.path = path
        self.fields = fields  # the counts every unit must have (empty: any)
        self.identity = json.loads(json.dumps(dict(identity)))  # what the file will hold, compared as read back
        self.runtime = runtime
        self.name = name

    def load(self) -> dict[str, dict[str, int]]:
        """Units saved by an interrupted run with the same identity (main process only; {} elsewhere)."""
        if self.path is None or not self.runtime.is_main or not self.path.is_file():
            return {}
        try:
            saved = json.loads(self.path.read_text(encoding='utf-8'))
        except (OSError, ValueError) as error:
            _logger.warning('ignoring unreadable %s partial results %s (%s); starting over', self.name, self.path,
                            error)
            return {}
        if not isinstance(saved, dict) or saved.get('identity') != self.identity:
            _logger.warning('%s partial results %s come from a different model/checkpoint/preprocessing; '
                            'starting over', self.name, self.path)
            return {}
        units = saved.get('units', {})
        problem = _units_problem(units, self.fields)
        if problem:
            _logger.warning('ignoring %s partial results %s (%s: altered or damaged); starting over', self.name,
                            self.path, problem)
            return {}
        return {name: {key: int(value) for key, value in counts.items()} for name, counts in units.items()}

    def load_shared(self, unit_names: list[str]) -> dict[str, dict[str, int]]:
        """:meth:`load`, restricted to ``unit_names``, with every process skipping the same units (the main
        process's view wins); the counts themselves are only known on the main process."""
        saved = self.load()
        flags = torch.zeros(len(unit_names), dtype=torch.long, device=self.runtime.device)
        if self.runtime.is_main:
            for position, name in enumerate(unit_names):
                flags[position] = int(name in saved)
        self.runtime.all_reduce_sum(flags)
        return {name: saved.get(name, {}) for name, flag in zip(unit_names, flags.tolist()) if flag}

    def save(self, units: Mapping[str, Mapping[str, int]]) -> None:
        if self.path is None or not self.runtime.is_main:
            return
        text = json.dumps({'identity': self.identity, 'units': dict(units)}, indent=1, sort_keys=True)
        atomic_write_text(text + '\n', self.path)

    def discard(self) -> None:
        """The set is complete: its results entry now holds everything."""
        if self.path is not None and self.runtime.is_main and self.path.exists():
            self.path.unlink()


@dataclass
class EvaluationContext:
    """The loaded model and the run's settings, as every set's ``score`` sees them."""

    request: ValidationRequest
    runtime: Any
    model: torch.nn.Module
    model_name: str
    settings: DeviceSettings  # autocast, channels-last and the process batch, as the runtime resolved them
    workers: int
    # the record of the model (weights, architecture, numerics) that resume identities are derived from
    model_record: dict[str, Any] = field(default_factory=dict)
    # entries of the sets already scored in this run, by name (e.g. 'imagenet' top1 for ImageNet-C's relative mCE)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return self.settings.torch_amp_dtype

    def preprocessing(self, benchmark: Benchmark) -> EvalPreprocessing:
        """The model's data config with the command line's overrides, in the set's default resize mode."""
        request = self.request
        return resolve_eval_preprocessing(
            self.model, request.resize_mode or benchmark.default_resize_mode, img_size=request.img_size,
            input_size=request.input_size, crop_pct=request.crop_pct, interpolation=request.interpolation,
            mean=request.mean, std=request.std)

    def preprocessing_record(self, preprocessing: EvalPreprocessing) -> dict[str, Any]:
        """What a results entry says about the pixels: the preprocessing and where JPEGs were decoded."""
        return {**preprocessing.as_dict(), 'decode_on_device': self.request.decode_on_device}

    def loader(self, prepared: PreparedData, preprocessing: EvalPreprocessing) -> Any:
        """This process's batches of ``prepared.samples`` (decoded in workers, or on the device when asked)."""
        request = self.request
        transform = build_eval_transform(preprocessing)
        if request.decode_on_device:
            # workers read bytes (and fully decode what is not a plain JPEG); the device decodes and resizes batches
            dataset = JpegBytesDataset(prepared.samples, transform, on_decode_error='skip')
            return DeviceDecodingLoader(
                build_eval_loader(dataset, self.settings.batch_size, self.workers, self.runtime, request.pin_memory,
                                  collate_fn=collate_encoded_batch),
                transform, self.runtime.device, dataset)
        dataset = ClassFolderDataset(prepared.samples, transform, on_decode_error='skip')
        return build_eval_loader(dataset, self.settings.batch_size, self.workers, self.runtime, request.pin_memory)

    def evaluate(self, prepared: PreparedData, preprocessing: EvalPreprocessing, description: str,
                 **options: Any) -> EvalResult:
        """Top-1/top-5/loss over ``prepared`` (its label subset applied); ``options`` go to engine's evaluate
        (``sample_groups=SampleGroups(...)`` for per-group counts)."""
        return evaluate(
            self.model, self.loader(prepared, preprocessing), self.runtime, amp_dtype=self.amp_dtype,
            channels_last=self.settings.channels_last, label_subset=prepared.label_subset,
            normalization=(preprocessing.mean, preprocessing.std), log_freq=self.request.log_freq,
            description=description, **options)

    def predict(self, prepared: PreparedData, preprocessing: EvalPreprocessing, description: str,
                reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Predictions:
        """Every sample's output (``reduce(logits)`` if given) in dataset order, gathered over all processes."""
        return predict(
            self.model, self.loader(prepared, preprocessing), self.runtime, len(prepared.samples),
            amp_dtype=self.amp_dtype, channels_last=self.settings.channels_last,
            normalization=(preprocessing.mean, preprocessing.std), reduce=reduce, description=description)

    def resume_store(self, name: str, prepared: PreparedData, preprocessing: EvalPreprocessing,
                     fields: tuple[str, ...] = ()) -> ResumeStore:
        """Where set ``name`` keeps finished units: --partial-results, else ``<results>.<name>.partial.json``
        beside --results-file (no file: no resume). In a suite every resumable set has its own file, also under
        an explicit --partial-results PATH (``<PATH stem>.<name><PATH suffix>``): one shared file would hold only
        the set run last, so after a kill the first set's restart threw away the progress of the one killed.
        The identity is derived from the model record, the preprocessing record, the data folder and the label
        space, so a flag that changes pixels or outputs changes it without being listed anywhere."""
        request = self.request
        path = None
        if request.partial_results:
            path = Path(request.partial_results)
            if request.suite:
                path = path.with_name(f'{path.stem}.{name}{path.suffix}')
        elif request.results_file:
            results = Path(request.results_file)
            path = results.with_name(f'{results.stem}.{name}.partial.json')
        label_names = prepared.label_space.class_names if prepared.label_space is not None else ()
        identity = {
            'model': self.model_record, 'preprocessing': self.preprocessing_record(preprocessing),
            'data_dir': str(Path(prepared.root).resolve()),
            'label_space': hashlib.sha256('\n'.join(label_names).encode('utf-8')).hexdigest(),
        }
        return ResumeStore(path, identity, self.runtime, name, fields)
