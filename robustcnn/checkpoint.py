"""Reading checkpoints safely, and what a checkpoint says about its weights.

Every checkpoint the project reads goes through :func:`load_checkpoint_file`: pickles are unpickled with
``weights_only=True`` so a file from the internet cannot run code, and ``.safetensors`` files are read natively.
What a checkpoint records about itself (model, classes, preprocessing) is read through :class:`CheckpointMetadata`,
which checks every value once. Every file the project writes goes through :mod:`robustcnn.atomic`
(:func:`atomic_save` here for ``torch.save``), so a crash never leaves a half-written file.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

# atomic_write_bytes / atomic_write_text are imported from here by code written before robustcnn.atomic existed
from .atomic import atomic_write, atomic_write_bytes, atomic_write_text
from .errors import CheckpointError
from .limits import CROP_PCT_RANGE, MAX_IMAGE_SIDE, MAX_MODEL_ARGUMENT, MAX_NUM_CLASSES

__all__ = [
    'CheckpointError', 'CheckpointMetadata', 'training_args', 'load_checkpoint_file', 'extract_state_dict',
    'clean_state_dict', 'load_model_weights', 'check_state_dict_fits', 'atomic_save', 'atomic_write_bytes',
    'atomic_write_text', 'save_safetensors', 'SAFETENSORS_METADATA_KEY', 'CHECKSUM_KEY', 'content_checksum',
    'with_checksum',
]

# Where a .safetensors file written by ``robustcnn convert`` keeps the training metadata (model, model_kwargs,
# class names, input size...), JSON-encoded: safetensors headers hold strings only.
SAFETENSORS_METADATA_KEY = 'robustcnn.metadata'

# Where a training checkpoint keeps the SHA-256 of everything else it holds (see :func:`content_checksum`).
CHECKSUM_KEY = 'checksum'

# Wrapper keys of the released and timm/DeiT training checkpoints, in the order they are tried.
_STATE_DICT_KEYS = ('state_dict', 'model')
_EMA_KEYS = ('state_dict_ema', 'model_ema')
# Prefixes added by DistributedDataParallel and torch.compile, in either nesting order.
_WRAPPER_PREFIXES = ('module.', '_orig_mod.')


def load_checkpoint_file(path: str | os.PathLike, map_location: str | torch.device = 'cpu') -> Any:
    """Load a ``.pth``/``.pth.tar``/``.pt`` or ``.safetensors`` file without executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint not found: {path} (check the path)')
    if path.suffix == '.safetensors':
        from safetensors import safe_open
        from safetensors.torch import load_file
        try:
            tensors = load_file(str(path), device=str(map_location))
            with safe_open(str(path), framework='pt') as file:
                header = file.metadata() or {}
        except Exception as error:  # safetensors raises several unrelated types
            raise CheckpointError(f'cannot read safetensors file {path}: {error}') from None
        if SAFETENSORS_METADATA_KEY not in header:
            return tensors
        try:
            metadata = json.loads(header[SAFETENSORS_METADATA_KEY])
        except ValueError:
            raise CheckpointError(f'{path}: its {SAFETENSORS_METADATA_KEY} header is not valid JSON') from None
        checkpoint = {'state_dict': tensors, 'metadata': metadata}  # the training checkpoint's shape
        CheckpointMetadata.from_checkpoint(checkpoint, path)  # untrusted: every value checked before any use
        return checkpoint
    try:
        # argparse.Namespace is what timm/DeiT training scripts store under 'args'; it is plain data.
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # torch names the refused callable as 'Unsupported global: GLOBAL x.y' or 'unsupported GLOBAL x.y whose
        # module x is blocked', depending on the version
        found = re.search(r'[Uu]nsupported (?:global: )?GLOBAL (\S+)', str(error))
        if found:
            raise CheckpointError(
                f'{path} was blocked by weights-only loading (safety): loading it would call {found.group(1)}, '
                f'which could run code; re-save it as a plain state dict or .safetensors from a trusted source'
            ) from None
        raise CheckpointError(f'cannot read checkpoint {path}: not a PyTorch weights file (corrupt or another '
                              f'format)') from None
    except (RuntimeError, EOFError, OSError) as error:
        raise CheckpointError(f'cannot read checkpoint {path}: {error} (the file may be truncated or corrupt)') from None
    if isinstance(checkpoint, Mapping) and CHECKSUM_KEY in checkpoint:
        _verify_checksum(checkpoint, path)
    CheckpointMetadata.from_checkpoint(checkpoint, path)  # untrusted: every value checked before any use
    return checkpoint


# Constructor arguments that make timm open or download another file (timm.create_model's own, and any *_path /
# *_file / *_url / *_dir): a downloaded checkpoint must not choose what else gets read.
_FILE_ARGUMENTS = frozenset({'pretrained', 'pretrained_cfg', 'pretrained_cfg_overlay', 'checkpoint_path', 'cache_dir',
                             'pretrained_strict', 'file', 'url', 'hf_hub_id'})
_FILE_ARGUMENT_ENDINGS = ('_path', '_file', '_url', '_dir')


@dataclass(frozen=True)
class CheckpointMetadata:
    """What a checkpoint says about its weights, so that using them later needs no training flags: the model and
    its constructor arguments, the classes in classifier order, the evaluation preprocessing, and the recipe's
    scale for the model card.

    train.py stores :meth:`to_dict` under the checkpoint's ``metadata`` key (``robustcnn convert`` and ``export``
    in the safetensors header, :data:`SAFETENSORS_METADATA_KEY`); every reader goes through
    :meth:`from_checkpoint`, which checks each value once (typed, bounded by :mod:`robustcnn.limits`, no file
    names): checkpoints are untrusted input (downloads, copies). A field the file does not record is None; plain
    state dicts and the authors' released DeiT-style checkpoints record nothing.
    """

    version: str | None = None                     # of robustcnn, which wrote the checkpoint
    model: str | None = None                       # timm model name
    model_kwargs: dict[str, Any] | None = None     # constructor arguments besides num_classes (--model-kwargs)
    class_names: tuple[str, ...] | None = None     # training class folders, in classifier order
    num_classes: int | None = None
    img_size: int | None = None
    input_size: tuple[int, int, int] | None = None  # channels, height, width of the evaluation input
    interpolation: str | None = None
    crop_pct: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    total_batch_size: int | None = None
    learning_rate: float | None = None
    world_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The plain form a checkpoint stores: fields in declaration order, sequences as lists (as train.py has
        always written them; ``weights_only`` loading and JSON take both), unrecorded fields left out."""
        stored: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, dict):
                value = dict(value)
            if value is not None:
                stored[field.name] = value
        return stored

    @classmethod
    def from_dict(cls, values: Any, source: str | os.PathLike = 'the checkpoint') -> CheckpointMetadata:
        """The record of a stored ``metadata`` mapping (None: nothing recorded); raise :class:`CheckpointError`
        naming the first field that is wrong."""
        if values is None:
            return cls()
        problem = _metadata_problem(values)
        if problem is not None:
            raise _untrusted(source, problem)

        def read(name: str, convert: Any = None) -> Any:
            value = values.get(name)
            return value if value is None or convert is None else convert(value)

        return cls(
            version=read('version'), model=read('model'), model_kwargs=read('model_kwargs', dict),
            class_names=read('class_names', tuple), num_classes=read('num_classes'), img_size=read('img_size'),
            input_size=read('input_size', tuple), interpolation=read('interpolation'), crop_pct=read('crop_pct'),
            mean=read('mean', _floats), std=read('std', _floats), total_batch_size=read('total_batch_size'),
            learning_rate=read('learning_rate'), world_size=read('world_size'),
        )

    @classmethod
    def from_checkpoint(cls, checkpoint: Any, source: str | os.PathLike = 'the checkpoint', *,
                        complete: bool = False) -> CheckpointMetadata:
        """The record a loaded checkpoint stores under ``metadata`` (empty for a bare state dict or another
        project's checkpoint).

        With ``complete``, what timm's and the authors' DeiT-style training scripts record elsewhere fills what the
        metadata lacks: the model name from ``arch``, the constructor arguments from ``args['model_kwargs']``
        (also older train.py checkpoints keep them only there). That is what travels with the weights (convert,
        export) and what decides validate.py's model arguments; a resume and validate.py's model name read the
        metadata alone.
        """
        if not isinstance(checkpoint, Mapping):
            return cls()
        args_kwargs = training_args(checkpoint).get('model_kwargs')
        problem = _model_kwargs_problem(args_kwargs, 'args.model_kwargs')
        if problem is not None:
            raise _untrusted(source, problem)
        record = cls.from_dict(checkpoint.get('metadata'), source)
        if not complete:
            return record
        changes: dict[str, Any] = {}
        if not record.model and isinstance(checkpoint.get('arch'), str):
            changes['model'] = checkpoint['arch']
        if record.model_kwargs is None and isinstance(args_kwargs, Mapping):
            changes['model_kwargs'] = dict(args_kwargs)
        return dataclasses.replace(record, **changes) if changes else record


def training_args(checkpoint: Any) -> dict[str, Any]:
    """The training flags a checkpoint stores under ``args`` (train.py: a dict; timm's and DeiT's training
    scripts: an argparse Namespace), or an empty dict."""
    args = checkpoint.get('args') if isinstance(checkpoint, Mapping) else None
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    return dict(args) if isinstance(args, Mapping) else {}


def _untrusted(source: str | os.PathLike, problem: str) -> CheckpointError:
    return CheckpointError(f'{source}: {problem}; the file was altered or not written by this project (re-save it '
                           f'from a trusted source)')


def _floats(values: Any) -> tuple[float, ...]:
    return tuple(float(value) for value in values)


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _model_kwargs_problem(kwargs: Any, field: str) -> str | None:
    if kwargs is None:
        return None
    if not isinstance(kwargs, Mapping):
        return f'{field} is a {type(kwargs).__name__}, not a mapping of argument names to values'
    for key, value in kwargs.items():
        if not isinstance(key, str):
            return f'{field} has the non-text key {key!r}'
        if key.lower() in _FILE_ARGUMENTS or key.lower().endswith(_FILE_ARGUMENT_ENDINGS):
            return f'{field}.{key} would make timm read or download another file, which a checkpoint may not ask'
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            if isinstance(item, bool) or item is None:
                continue
            if isinstance(item, int) and not -MAX_MODEL_ARGUMENT <= item <= MAX_MODEL_ARGUMENT:
                return f'{field}.{key} is {item}, outside +-{MAX_MODEL_ARGUMENT}'
            if isinstance(item, float) and not math.isfinite(item):
                return f'{field}.{key} is {item}'
            if isinstance(item, str) and len(item) > 200:
                return f'{field}.{key} is a {len(item)}-character text'
            if not isinstance(item, (int, float, str)):
                return f'{field}.{key} holds a {type(item).__name__}, not a number, switch or text'
    return None


def _metadata_problem(metadata: Any) -> str | None:
    """The first thing wrong with a stored ``metadata``, as ``metadata.field is ..., expected ...``, or None."""
    if not isinstance(metadata, Mapping):
        return f'metadata is a {type(metadata).__name__}, not a mapping'
    model = metadata.get('model')
    if model is not None and not (isinstance(model, str) and 0 < len(model) <= 200):
        return f'metadata.model is {str(model)[:60]!r}, not a model name'
    problem = _model_kwargs_problem(metadata.get('model_kwargs'), 'metadata.model_kwargs')
    if problem:
        return problem
    checks = {
        'num_classes': (lambda value: _is_int(value, 1, MAX_NUM_CLASSES), f'an integer in 1..{MAX_NUM_CLASSES}'),
        'img_size': (lambda value: _is_int(value, 1, MAX_IMAGE_SIDE), f'an integer in 1..{MAX_IMAGE_SIDE}'),
        'input_size': (lambda value: isinstance(value, (list, tuple)) and len(value) == 3 and value[0] in (1, 3)
                       and all(_is_int(side, 1, MAX_IMAGE_SIDE) for side in value),
                       f'[channels, height, width] with sides in 1..{MAX_IMAGE_SIDE}'),
        'crop_pct': (lambda value: _is_real(value) and CROP_PCT_RANGE[0] <= value <= CROP_PCT_RANGE[1],
                     f'a number in {CROP_PCT_RANGE[0]}..{CROP_PCT_RANGE[1]}'),
        'interpolation': (lambda value: isinstance(value, str) and value in _interpolations(),
                          f'one of {", ".join(_interpolations())}'),
        'mean': (lambda value: isinstance(value, (list, tuple)) and len(value) in (1, 3)
                 and all(_is_real(item) for item in value), '1 or 3 finite numbers'),
        'std': (lambda value: isinstance(value, (list, tuple)) and len(value) in (1, 3)
                and all(_is_real(item) and item > 0 for item in value), '1 or 3 positive numbers'),
        'class_names': (lambda value: isinstance(value, (list, tuple)) and 0 < len(value) <= MAX_NUM_CLASSES
                        and all(isinstance(name, str) and 0 < len(name) <= 1000 for name in value)
                        and len(set(value)) == len(value), 'a list of distinct class names'),
        # the recipe's record (model card): typed like the rest, as a reader formats them as numbers and text
        'version': (lambda value: isinstance(value, str) and len(value) <= 100, 'a version text'),
        'total_batch_size': (lambda value: _is_int(value, 1, 2 ** 40), 'a positive integer'),
        'learning_rate': (_is_real, 'a finite number'),
        'world_size': (lambda value: _is_int(value, 1, 2 ** 40), 'a positive integer'),
    }
    for field, (valid, expected) in checks.items():
        value = metadata.get(field)
        if value is not None and not valid(value):
            shown = repr(value) if len(repr(value)) <= 60 else f'{repr(value)[:57]}...'
            return f'metadata.{field} is {shown}, expected {expected}'
    return None


def _interpolations() -> tuple[str, ...]:
    from .config import INTERPOLATIONS  # here, not at the top: config is train.py's flag module (yaml, adversarial)
    return INTERPOLATIONS


def content_checksum(checkpoint: Mapping[str, Any]) -> str:
    """SHA-256 of everything a checkpoint holds except its own checksum: every tensor's bytes, dtype and shape,
    and every plain value, in their nesting order.

    Why our own: torch's zip format keeps CRC-32s that ``torch.load`` does not check on the tensor records, so a
    flipped bit in the weights loads silently (an exponent flip resumed a 9.4e36 weight). Hashing the loaded
    values, not the file, makes the check independent of how torch lays the file out.
    """
    digest = hashlib.sha256()

    def visit(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            data = value.detach().cpu().resolve_conj().resolve_neg().contiguous()
            digest.update(f'T{data.dtype}{tuple(data.shape)}'.encode())
            digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b'')
        elif isinstance(value, Mapping):
            digest.update(f'M{len(value)}'.encode())
            for key, item in value.items():
                digest.update(f'K{type(key).__name__}:{key!r}'.encode())
                visit(item)
        elif isinstance(value, (list, tuple)):
            digest.update(f'{type(value).__name__[0]}{len(value)}'.encode())
            for item in value:
                visit(item)
        elif isinstance(value, argparse.Namespace):
            visit(vars(value))
        else:  # str, int, float, bool, None, torch.dtype...: repr is exact (floats round-trip)
            digest.update(f'V{type(value).__name__}:{value!r}'.encode())

    visit({key: value for key, value in checkpoint.items() if key != CHECKSUM_KEY})
    return digest.hexdigest()


def with_checksum(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """``checkpoint`` plus its :func:`content_checksum`, which :func:`load_checkpoint_file` verifies."""
    content = {key: value for key, value in checkpoint.items() if key != CHECKSUM_KEY}
    return {**content, CHECKSUM_KEY: {'sha256': content_checksum(content)}}


def _verify_checksum(checkpoint: Mapping[str, Any], path: Path) -> None:
    stored = checkpoint[CHECKSUM_KEY]
    expected = stored.get('sha256') if isinstance(stored, Mapping) else None
    if not isinstance(expected, str):
        raise CheckpointError(f'checkpoint {path} is damaged: its {CHECKSUM_KEY!r} entry is not a sha256 digest')
    if content_checksum(checkpoint) != expected:
        raise CheckpointError(f'checkpoint {path} is damaged: its contents do not match the checksum written with '
                              f'it (a flipped bit or a bad copy); use another checkpoint or a backup')


def clean_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Strip ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes, in any nesting order."""
    cleaned = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix):]
                    stripped = True
        cleaned[key] = value
    return cleaned


def extract_state_dict(checkpoint: Any, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """Return the model weights from any released or training checkpoint form.

    Accepts a bare state dict, or one wrapped under ``model`` / ``state_dict`` (and ``state_dict_ema`` /
    ``model_ema`` when ``use_ema``), with or without ``module.`` prefixes.
    """
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f'checkpoint holds a {type(checkpoint).__name__}, expected a dict of weights')
    keys = _EMA_KEYS if use_ema else _STATE_DICT_KEYS
    for key in keys:
        if isinstance(checkpoint.get(key), Mapping):
            return clean_state_dict(checkpoint[key])
    if use_ema:
        raise CheckpointError('EMA weights were asked for (--use-ema) but the checkpoint has no state_dict_ema or '
                              'model_ema; drop --use-ema to use its plain weights')
    if checkpoint and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        return clean_state_dict(checkpoint)
    raise CheckpointError(
        f'checkpoint has no weights: expected a state dict or one of the keys {", ".join(keys)}, '
        f'found keys {", ".join(sorted(map(str, checkpoint))[:8])}'
    )


def load_model_weights(
        model: torch.nn.Module,
        path: str | os.PathLike,
        use_ema: bool = False,
        strict: bool = True,
) -> None:
    """Load a checkpoint file into ``model``, raising a one-line error that names what does not match."""
    state_dict = extract_state_dict(load_checkpoint_file(path), use_ema=use_ema)
    check_state_dict_fits(model, state_dict, source=str(path), strict=strict)
    model.load_state_dict(state_dict, strict=strict)


def check_state_dict_fits(
        model: torch.nn.Module,
        state_dict: Mapping[str, torch.Tensor],
        source: str,
        strict: bool = True,
) -> None:
    """Raise :class:`CheckpointError` naming missing/unexpected keys and shape mismatches."""
    expected = model.state_dict()
    problems = []
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if strict and missing:
        problems.append(f'{len(missing)} missing keys (e.g. {", ".join(missing[:3])})')
    if strict and unexpected:
        problems.append(f'{len(unexpected)} unexpected keys (e.g. {", ".join(unexpected[:3])})')
    mismatched = [
        f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}'
        for k, v in state_dict.items()
        if k in expected and isinstance(v, torch.Tensor) and v.shape != expected[k].shape
    ]
    if mismatched:
        problems.append(f'{len(mismatched)} shape mismatches (e.g. {"; ".join(mismatched[:2])})')
    if problems:
        raise CheckpointError(
            f'checkpoint {source} does not fit model {type(model).__name__}: {", ".join(problems)}; '
            f'check --model (and --num-classes) match the checkpoint'
        )


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` that never leaves a partial file at ``path`` (the old file survives any failure)."""
    return atomic_write(path, lambda file: torch.save(obj, file))


def save_safetensors(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike,
                     metadata: Mapping[str, str] | None = None) -> Path:
    """Write a state dict as ``.safetensors`` atomically (tensors made contiguous, shared storage split)."""
    from safetensors.torch import save
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    return atomic_write_bytes(save(tensors, metadata=dict(metadata or {})), path)
