"""The authors' released ImageNet-1k weights: download once, verify, cache, and let timm find them.

The four checkpoints live on Google Drive (links in README.md's model zoo), behind a confirmation page that plain
HTTP clients cannot pass; ``gdown`` (extra ``[download]``) handles it. ``robustcnn download NAME`` fetches one into a
scratch folder inside the cache, refuses it unless it loads strictly into the model (a wrong, truncated or
non-checkpoint file leaves nothing behind), and stores the weights as ``<cache>/<NAME>.safetensors`` (no pickle; the
weights timm's loader would pick from the original) with ``<NAME>.json`` recording the source and both sha256 sums.
Afterwards ``timm.create_model(NAME, pretrained=True)`` and ``validate.py --pretrained`` use that file: the model's
pretrained_cfg ``file`` points at it; without it they stop with a one-line error naming the download command.

The cache is ``$ROBUSTCNN_CACHE/weights`` (default ``~/.cache/robustcnn/weights``).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

__all__ = ['RELEASED_WEIGHTS', 'weights_cache_dir', 'cached_weights', 'download_weights', 'pretrained_overlay',
           'remove_stale_downloads']

# model name -> Google Drive link of the authors' checkpoint (as in README.md's model zoo)
RELEASED_WEIGHTS: dict[str, str] = {
    'robust_resnet_dw_small': 'https://drive.google.com/file/d/1cbS3NGkkzKw2Uhq8ATMbsoGjIx8zhwgv/view?usp=sharing',
    'robust_resnet_inverted_dw_small':
        'https://drive.google.com/file/d/1g551TsZmVrSZ4BXje9RcT7gG_UjjFQmO/view?usp=sharing',
    'robust_resnet_up_inverted_dw_small':
        'https://drive.google.com/file/d/1lQ0zPqO6nmtXWt5r9d-M4k_GHVeW41Qy/view?usp=sharing',
    'robust_resnet_down_inverted_dw_small':
        'https://drive.google.com/file/d/1gZVclPJXT50F6iAJHUv8Z6wG6C0ZhXds/view?usp=sharing',
}
_SOURCE_KEYS = ('file', 'url', 'hf_hub_id', 'state_dict')


def weights_cache_dir() -> Path:
    from ..synthetic.benchmark import default_cache_root  # the one cache root of the project
    return default_cache_root() / 'weights'


def _paths(model_name: str) -> tuple[Path, Path]:
    folder = weights_cache_dir()
    return folder / f'{model_name}.safetensors', folder / f'{model_name}.json'


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open('rb') as file:
        for chunk in iter(lambda: file.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def cached_weights(model_name: str) -> Path | None:
    """The cached weights of ``model_name`` if a download completed (weights and their record both present)."""
    weights, record = _paths(model_name)
    return weights if weights.is_file() and record.is_file() else None


def _missing_message(model_name: str) -> str:
    if model_name in RELEASED_WEIGHTS:
        return (f'the released weights of {model_name} are not downloaded yet: run `robustcnn download {model_name}` '
                f'(cache: {weights_cache_dir()}), or pass pretrained_cfg_overlay=dict(file=PATH)')
    return (f'{model_name} has no released weights; pass pretrained_cfg_overlay=dict(file=PATH), a local-dir:/hf-hub: '
            f'model name, or train.py/validate.py --checkpoint')


def pretrained_overlay(variant: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` for timm's builder with ``pretrained=True``: unchanged when the caller named a source (a file, a
    local-dir:/hf-hub: config, a state dict), else pointing ``file`` at the cached download; raises
    :class:`~robustcnn.checkpoint.CheckpointError` (one line, naming ``robustcnn download``) when there is none."""
    from timm.models._builder import resolve_pretrained_cfg

    from ..checkpoint import CheckpointError
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
                                 pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay')).to_dict()
    if any(cfg.get(key) for key in _SOURCE_KEYS):
        return dict(kwargs)
    path = cached_weights(variant)
    if path is None:
        raise CheckpointError(_missing_message(variant))
    return {**kwargs, 'pretrained_cfg_overlay': {**(kwargs.get('pretrained_cfg_overlay') or {}), 'file': str(path)}}


def _verified_state_dict(model_name: str, path: Path, source: str) -> dict[str, Any]:
    """The weights timm would load from the file, after they loaded strictly into a fresh model."""
    import timm

    from ..checkpoint import CheckpointError, check_state_dict_fits, load_checkpoint_file
    from .robust_resnet import checkpoint_filter_fn
    loaded = load_checkpoint_file(path)  # weights_only: a file from the internet cannot run code
    model = timm.create_model(model_name)
    state_dict = checkpoint_filter_fn(loaded, model) if isinstance(loaded, Mapping) else loaded
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f'{source} is not a checkpoint of weights (it holds a {type(loaded).__name__})')
    check_state_dict_fits(model, state_dict, source=source)
    model.load_state_dict(state_dict, strict=True)
    return dict(state_dict)


def download_weights(model_name: str, url: str | None = None, force: bool = False, quiet: bool = False) -> Path:
    """Fetch, verify and cache ``model_name``'s weights (see the module docstring); returns the cached file."""
    from ..atomic import atomic_write_bytes, atomic_write_text
    from ..errors import CheckpointError, UsageError
    url = url or RELEASED_WEIGHTS.get(model_name)
    if url is None:
        raise UsageError(f'{model_name} has no released weights (released: {", ".join(RELEASED_WEIGHTS)}); give '
                         f'--url to fetch a checkpoint from elsewhere')
    weights, record = _paths(model_name)
    if not force and cached_weights(model_name) is not None:
        recorded = json.loads(record.read_text(encoding='utf-8')).get('sha256')
        if recorded == _sha256(weights):
            return weights
    try:
        import gdown
    except ImportError:
        raise UsageError('robustcnn download needs gdown (Google Drive downloads): pip install "robustcnn[download]" '
                         '(or pip install -e ".[download]" in a checkout)') from None
    weights.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_downloads()
    scratch = Path(tempfile.mkdtemp(prefix=f'.{model_name}.', suffix='.download', dir=weights.parent))
    try:
        downloaded = scratch / 'checkpoint.pth'
        try:
            result = gdown.download(url, str(downloaded), quiet=quiet)
        except Exception as error:  # gdown and requests raise several unrelated types
            reason = ' '.join(str(error).split())[:300] or type(error).__name__
            raise CheckpointError(f'could not download {model_name} from {url} ({reason})') from None
        if not result or not downloaded.is_file():
            raise CheckpointError(f'could not download {model_name} from {url} (nothing was received)')
        state_dict = _verified_state_dict(model_name, downloaded, source=f'downloaded from {url}')
        from safetensors.torch import save
        data = save({key: value.contiguous() for key, value in state_dict.items()},
                    metadata={'source': url, 'model': model_name})
        atomic_write_bytes(data, weights)
        entry = {'model': model_name, 'url': url, 'download_sha256': _sha256(downloaded),
                 'download_bytes': downloaded.stat().st_size, 'sha256': hashlib.sha256(data).hexdigest(),
                 'downloaded_at': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}
        atomic_write_text(json.dumps(entry, indent=2) + '\n', record)  # last: the record marks a complete download
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return weights


def remove_stale_downloads() -> None:
    """Scratch folders left by a killed download (their process is gone; a running one may still use its own)."""
    folder = weights_cache_dir()
    for path in folder.glob('.*.download') if folder.is_dir() else ():
        if path.is_dir() and os.stat(path).st_mtime < datetime.datetime.now().timestamp() - 24 * 3600:
            shutil.rmtree(path, ignore_errors=True)
