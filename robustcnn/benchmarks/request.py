"""ValidationRequest: everything an evaluation run is asked to do, checked when it is made.

Torch-free (like the parsers), so validate.py builds and checks it before torch loads: an argument error costs no
import. The command line's flags are checked by the parser's typed checkers (:mod:`robustcnn.arguments`);
``__post_init__`` runs the same checkers, and checks what only the whole request can (a suite with --dataset),
so that a library caller (the demo, the study, the speed tool, tests) building a request in code gets the same
one-line errors. Device-dependent switches stay unresolved here (None: the device's default); the runner resolves
them once, with the runtime (``Runtime.device_settings``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..arguments import (AMP_DTYPE_NAMES, RESIZE_MODES, RESULT_SUFFIXES, check_channel_values, check_input_size,
                         check_suffix, crop_fraction, finite_float, interpolation, non_negative_int, percent,
                         positive_float, positive_int, require)
from ..cli import UsageError

__all__ = ['ValidationRequest']


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
    batch_size: int = 64  # per device, as train.py's
    workers: int | None = None
    pin_memory: bool = False
    decode_on_device: bool = False
    # autocast with amp_dtype, and channels-last; None: the device's default (on for CUDA), see device_settings
    amp: bool | None = False
    amp_dtype: str = 'bfloat16'
    channels_last: bool | None = False
    fuse: bool = True
    log_freq: int = 50
    results_file: str | None = None
    figure: str | None = None
    # resume file of a single set; with suite, the name each resumable set's own file is derived from
    partial_results: str | None = None
    allow_partial: bool = False
    extra_corruptions: bool = False
    clean_error: float | None = None
    group_sync_every: int = 50
    # ImageNet-ReaL's real.json (None: timm's copy), ImageNet-O's in-distribution ImageNet val folder (None: in
    # --suite the suite's ImageNet folder), ObjectNet's pooling of ImageNet logits ('max' or 'template')
    real_labels: str | None = None
    in_distribution: str | None = None
    objectnet_pooling: str = 'max'
    # shape bias / model-vs-human sets: model-vs-human's raw-data/ folder (human trials) for the human-likeness metrics
    human_data: str | None = None
    attack: Any = None  # robustcnn.adversarial.AttackSpec: score robust accuracy instead (see adversarial/)

    def __post_init__(self) -> None:
        """The one place a request's values are checked beyond their flags' types (see the module docstring)."""
        if self.suite and self.dataset is not None:
            raise UsageError('--suite evaluates every dataset found; do not combine it with --dataset')
        # Set names are checked by the registry (benchmarks.get_benchmark, when the runner looks them up), which a
        # library caller may extend; a set's own flags (--objectnet-pooling, ...) by the set's prepare().
        for flag, choices, value in (('--resize-mode', RESIZE_MODES, self.resize_mode),
                                     ('--amp-dtype', AMP_DTYPE_NAMES, self.amp_dtype)):
            if value is not None and value not in choices:
                raise UsageError(f'{flag} must be one of {", ".join(choices)}, got {value!r}')
        for flag, checker, value in (('--batch-size', positive_int, self.batch_size),
                                     ('--save-every', positive_int, self.group_sync_every),
                                     ('--log-freq', non_negative_int, self.log_freq),
                                     ('--workers', non_negative_int, self.workers),
                                     ('--img-size', positive_int, self.img_size),
                                     ('--num-classes', positive_int, self.num_classes),
                                     ('--crop-pct', crop_fraction, self.crop_pct),
                                     ('--interpolation', interpolation, self.interpolation),
                                     ('--clean-error', percent, self.clean_error)):
            if value is not None:
                require(flag, checker, value)
        check_input_size(self.input_size)
        check_channel_values('--mean', self.mean, finite_float)
        check_channel_values('--std', self.std, positive_float)
        if self.results_file:
            check_suffix('--results-file', self.results_file, RESULT_SUFFIXES)
        if self.figure:
            check_suffix('--figure', self.figure, ('.png',))
