"""Reading and writing checkpoints safely.

Every checkpoint the project reads goes through :func:`load_checkpoint_file`: pickles are unpickled with
``weights_only=True`` so a file from the internet cannot run code, and ``.safetensors`` files are read natively.
Every file the project writes goes through :func:`atomic_save`, so a crash never leaves a half-written file.
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import json
import math
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from .cli import caused_by
from .faults import kill_point
from .limits import CROP_PCT_RANGE, MAX_IMAGE_SIDE, MAX_MODEL_ARGUMENT, MAX_NUM_CLASSES

__all__ = [
    'CheckpointError', 'load_checkpoint_file', 'extract_state_dict', 'clean_state_dict', 'load_model_weights',
    'atomic_save', 'atomic_write_bytes', 'atomic_write_text', 'save_safetensors', 'checkpoint_model_kwargs',
    'portable_metadata', 'SAFETENSORS_METADATA_KEY', 'raised_by_interrupt', 'CHECKSUM_KEY', 'content_checksum',
    'with_checksum', 'check_checkpoint_metadata',
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


class CheckpointError(ValueError):
    """A checkpoint file is missing, unsafe, unreadable or does not fit the model."""


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
        check_checkpoint_metadata(checkpoint, path)
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
    check_checkpoint_metadata(checkpoint, path)
    return checkpoint


# Constructor arguments that make timm open or download another file (timm.create_model's own, and any *_path /
# *_file / *_url / *_dir): a downloaded checkpoint must not choose what else gets read.
_FILE_ARGUMENTS = frozenset({'pretrained', 'pretrained_cfg', 'pretrained_cfg_overlay', 'checkpoint_path', 'cache_dir',
                             'pretrained_strict', 'file', 'url', 'hf_hub_id'})
_FILE_ARGUMENT_ENDINGS = ('_path', '_file', '_url', '_dir')


def check_checkpoint_metadata(checkpoint: Any, source: str | os.PathLike) -> None:
    """Validate what a checkpoint says about itself before anything uses it: typed values, bounded sizes, no file
    names; raise :class:`CheckpointError` naming the field. Checkpoints are untrusted input (downloads, copies)."""
    if not isinstance(checkpoint, Mapping):
        return
    problem = _metadata_problem(checkpoint)
    if problem is not None:
        raise CheckpointError(f'{source}: {problem}; the file was altered or not written by this project (re-save '
                              f'it from a trusted source)')


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


def _metadata_problem(checkpoint: Mapping[str, Any]) -> str | None:
    """The first thing wrong with the checkpoint's ``metadata`` / ``args``, as ``field: problem``, or None."""
    args = checkpoint.get('args')
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    if isinstance(args, Mapping):
        problem = _model_kwargs_problem(args.get('model_kwargs'), 'args.model_kwargs')
        if problem:
            return problem
    metadata = checkpoint.get('metadata')
    if metadata is None:
        return None
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
    }
    for field, (valid, expected) in checks.items():
        value = metadata.get(field)
        if value is not None and not valid(value):
            shown = repr(value) if len(repr(value)) <= 60 else f'{repr(value)[:57]}...'
            return f'metadata.{field} is {shown}, expected {expected}'
    return None


def _interpolations() -> tuple[str, ...]:
    from .config import INTERPOLATIONS  # here, not at the top: config imports cli, which imports this module
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


def checkpoint_model_kwargs(checkpoint: Any) -> dict[str, Any] | None:
    """The constructor arguments a training run used: ``metadata['model_kwargs']``, else ``args['model_kwargs']``
    (train.py and timm's train.py both store the latter; timm's as an argparse Namespace)."""
    if not isinstance(checkpoint, Mapping):
        return None
    metadata = checkpoint.get('metadata')
    if isinstance(metadata, Mapping) and isinstance(metadata.get('model_kwargs'), Mapping):
        return dict(metadata['model_kwargs'])
    args = checkpoint.get('args')
    if args is not None and not isinstance(args, Mapping):
        args = getattr(args, '__dict__', None)
    if isinstance(args, Mapping) and isinstance(args.get('model_kwargs'), Mapping):
        return dict(args['model_kwargs'])
    return None


def portable_metadata(checkpoint: Any) -> dict[str, Any]:
    """What evaluating these weights later needs besides the tensors: the checkpoint's ``metadata`` with the model
    name (``arch`` in timm's checkpoints) and constructor arguments filled in where only ``args`` had them."""
    if not isinstance(checkpoint, Mapping):
        return {}
    metadata = dict(checkpoint['metadata']) if isinstance(checkpoint.get('metadata'), Mapping) else {}
    if not metadata.get('model') and isinstance(checkpoint.get('arch'), str):
        metadata['model'] = checkpoint['arch']
    kwargs = checkpoint_model_kwargs(checkpoint)
    if kwargs and not metadata.get('model_kwargs'):
        metadata['model_kwargs'] = kwargs
    return metadata


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


def raised_by_interrupt(error: BaseException) -> bool:
    """Whether ``error`` is, or was raised while handling, a KeyboardInterrupt."""
    return caused_by(error, KeyboardInterrupt)


def _creation_mode() -> int:
    """The permissions ``open()`` would give a new file (0o666 less the umask): mkstemp makes 0600 files."""
    try:  # Linux names the umask without changing it (os.umask must set one to read it, racing other threads)
        with open('/proc/self/status', encoding='ascii') as status:
            for line in status:
                if line.startswith('Umask:'):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


# Below this many free bytes after a failed write, the failure is reported as a full disk: torch.save reports
# ENOSPC as '[enforce fail at inline_container.cc] unexpected pos', without the errno.
_FULL_DISK_BYTES = 64 * 2 ** 20


def _is_disk_full(error: BaseException, directory: Path) -> bool:
    if getattr(error, 'errno', None) in (errno.ENOSPC, errno.EDQUOT):
        return True
    if not isinstance(error, RuntimeError):
        return False
    try:
        stats = os.statvfs(directory)
    except (OSError, AttributeError):
        return False
    return stats.f_bavail * stats.f_frsize < _FULL_DISK_BYTES


def _atomic_write(path: str | os.PathLike, write: Any) -> Path:
    """Write through ``write(file)`` into a temp file beside ``path``, fsync, then rename over ``path``.

    The file gets the permissions a plain ``open()`` would give it (those of the file it replaces, else 0o666 less
    the umask), so results and checkpoints can be shared as the user's umask says.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        try:
            mode = path.stat().st_mode & 0o777
        except OSError:
            mode = _creation_mode()
        os.fchmod(fd, mode)
        with os.fdopen(fd, 'wb') as file:
            write(file)
            file.flush()
            kill_point('file-write')
            os.fsync(file.fileno())
        os.replace(tmp_name, path)
    except BaseException as error:
        disk_full = isinstance(error, (OSError, RuntimeError)) and _is_disk_full(error, path.parent)
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        if raised_by_interrupt(error):  # Ctrl-C inside torch.save comes out as a RuntimeError: keep it an interrupt
            raise KeyboardInterrupt from error
        # e.g. disk full (torch.save reports it as a RuntimeError): say that nothing the user had was lost
        if isinstance(error, (OSError, RuntimeError)):
            previous = 'the previous file there is unchanged' if path.exists() else 'no file was written'
            reason = 'No space left on device' if disk_full else (
                getattr(error, 'strerror', None) or str(error).splitlines()[0])
            message = f'could not write {path} ({reason}); {previous}'
            errno_value = errno.ENOSPC if disk_full else getattr(error, 'errno', None)
            raise (OSError(errno_value, message) if errno_value else OSError(message)) from error
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` that never leaves a partial file at ``path`` (the old file survives any failure)."""
    return _atomic_write(path, lambda file: torch.save(obj, file))


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    return _atomic_write(path, lambda file: file.write(data))


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    return atomic_write_bytes(text.encode('utf-8'), path)


def save_safetensors(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike,
                     metadata: Mapping[str, str] | None = None) -> Path:
    """Write a state dict as ``.safetensors`` atomically (tensors made contiguous, shared storage split)."""
    from safetensors.torch import save
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    return atomic_write_bytes(save(tensors, metadata=dict(metadata or {})), path)
