"""``robustcnn export CKPT DIR``: a checkpoint as a folder in timm's Hugging Face Hub layout.

The folder holds ``model.safetensors``, ``config.json`` and a ``README.md`` model card, exactly what
``timm.create_model('local-dir:DIR', pretrained=True)`` and ``timm.create_model('hf-hub:USER/REPO',
pretrained=True)`` read, so ``huggingface-cli upload USER/REPO DIR`` shares it as it is. ``config.json`` is written by
timm's own ``save_config_for_hf`` (architecture, num_classes, the constructor arguments under ``model_args`` -- e.g.
``patch_size`` -- and the ``pretrained_cfg`` with the preprocessing the weights were trained with), so the layout is
the one timm's loader expects, not a copy of it. Each file is written atomically and ``config.json`` last: a
folder with a config is complete.
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import timm
import torch
from timm.models._hub import generate_readme, save_config_for_hf

from . import __version__
from .atomic import atomic_write_text
from .checkpoint import (SAFETENSORS_METADATA_KEY, CheckpointMetadata, check_state_dict_fits, extract_state_dict,
                         load_checkpoint_file, save_safetensors, training_args)
from .cli import UsageError

__all__ = ['export_for_hub', 'push_folder_to_hub', 'WEIGHTS_FILE', 'CONFIG_FILE', 'CARD_FILE']

WEIGHTS_FILE = 'model.safetensors'  # the names timm's Hub loader looks for first
CONFIG_FILE = 'config.json'
CARD_FILE = 'README.md'

# (checkpoint args key, model card label): the training recipe as the card states it
_RECIPE_FIELDS = (
    ('epochs', 'Epochs'), ('opt', 'Optimizer'), ('weight_decay', 'Weight decay'), ('sched', 'Schedule'),
    ('warmup_epochs', 'Warm-up epochs'), ('drop_path', 'Drop path'), ('aa', 'Auto-augment'), ('mixup', 'Mixup'),
    ('cutmix', 'CutMix'), ('smoothing', 'Label smoothing'), ('reprob', 'Random erasing'),
    ('aug_repeats', 'Repeated augmentation'), ('model_ema', 'EMA of weights'), ('amp_dtype', 'Mixed precision'),
    ('seed', 'Seed'),
)
_CITATION = """@inproceedings{wang2023robustcnn,
  title={Can CNNs Be More Robust Than Transformers?},
  author={Wang, Zeyu and Bai, Yutong and Zhou, Yuyin and Xie, Cihang},
  booktitle={International Conference on Learning Representations},
  year={2023}
}"""


def _num_classes(model_name: str, state_dict: Mapping[str, torch.Tensor], metadata: CheckpointMetadata) -> int | None:
    """From the metadata, else the classifier's rows (a released bare state dict records nothing else)."""
    if metadata.num_classes:
        return metadata.num_classes
    classifier = timm.get_pretrained_cfg_value(model_name, 'classifier')
    weight = state_dict.get(f'{classifier}.weight') if isinstance(classifier, str) else None
    return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else None


def _data_config(metadata: CheckpointMetadata) -> dict[str, Any]:
    """The evaluation preprocessing the checkpoint records (train.py's metadata); the model's defaults otherwise."""
    config: dict[str, Any] = {}
    if metadata.input_size:
        config['input_size'] = metadata.input_size
    for name in ('crop_pct', 'interpolation', 'mean', 'std'):
        if getattr(metadata, name) is not None:
            config[name] = getattr(metadata, name)
    return config


def _results_table(results_files: Sequence[Path]) -> str:
    """validate.py's JSON results as one Markdown table (percent; ImageNet-C as errors, lower is better)."""
    rows = []
    for path in results_files:
        if path.suffix.lower() != '.json':
            raise UsageError(f'--results takes validate.py --results-file .json files, got {path}')
        try:
            payload = json.loads(path.read_text(encoding='utf-8'))
        except (OSError, ValueError) as error:
            raise UsageError(f'cannot read results file {path}: {error}') from None
        if not isinstance(payload, Mapping) or not isinstance(payload.get('results'), Mapping):
            raise UsageError(f'{path} is not a validate.py results file (no "results" mapping)')
        for dataset, entry in payload['results'].items():
            rows.append((dataset, entry))

    def cell(value: Any) -> str:
        return f'{value:.2f}' if isinstance(value, (int, float)) and math.isfinite(value) else '–'
    lines = ['| Dataset | top-1 ↑ | top-5 ↑ | mean corruption error ↓ | mCE ↓ | images |',
             '|---|---:|---:|---:|---:|---:|']
    for dataset, entry in rows:
        partial = ' (partial)' if entry.get('partial') else ''
        lines.append(f'| {dataset}{partial} | {cell(entry.get("top1"))} | {cell(entry.get("top5"))} | '
                     f'{cell(entry.get("mean_corruption_error"))} | {cell(entry.get("mce"))} | '
                     f'{entry.get("num_samples", "–")} |')
    return '\n'.join(lines) + '\n'


def _training_data(args: Mapping[str, Any], metadata: CheckpointMetadata, num_classes: int) -> tuple[str, bool]:
    """(name, is ImageNet-1k): ImageNet's when the classes are its 1000 WordNet ids (or a bare 1000-way state
    dict, as released), else the training folder's name."""
    from .data.label_space import imagenet_wnids
    class_names = metadata.class_names
    if (class_names == imagenet_wnids()) if class_names else num_classes == 1000:
        return 'ImageNet-1k', True
    data_dir = args.get('data_dir')
    return (Path(str(data_dir)).name if data_dir else 'unknown'), False


def _model_card(model: torch.nn.Module, name: str, args: Mapping[str, Any], metadata: CheckpointMetadata,
                data_config: Mapping[str, Any], results_files: Sequence[Path], source: str) -> str:
    dataset, is_imagenet = _training_data(args, metadata, model.num_classes)
    data_dir = args.get('data_dir')
    input_size = tuple(data_config.get('input_size') or model.pretrained_cfg['input_size'])
    details: dict[str, Any] = {
        'Model Type': 'Image classification / feature backbone',
        'Model Stats': {
            'Params (M)': f'{sum(parameter.numel() for parameter in model.parameters()) / 1e6:.2f}',
            'Image size': f'{input_size[1]} x {input_size[2]}',
            'Classes': model.num_classes,
        },
        'Papers': {'Can CNNs Be More Robust Than Transformers?': 'https://arxiv.org/abs/2206.03452'},
        'Dataset': dataset,
        'Original': 'https://github.com/UCSC-VLAA/RobustCNN',
    }
    recipe = {label: args[key] for key, label in _RECIPE_FIELDS if args.get(key) is not None}
    if metadata.total_batch_size:
        recipe['Total batch size'] = metadata.total_batch_size
    if metadata.learning_rate:
        recipe['Learning rate'] = f'{float(metadata.learning_rate):.3g}'
    if recipe:
        details['Training recipe (from the checkpoint)'] = recipe
    if metadata.model_kwargs:
        details['Model arguments'] = dict(metadata.model_kwargs)
    card: dict[str, Any] = {
        'license': str(model.pretrained_cfg.get('license') or 'mit'),
        'tags': ['image-classification', 'timm', 'robustcnn'],
        'description': (f'A `{model.pretrained_cfg["architecture"]}` (Robust-ResNet family) exported by robustcnn '
                        f'{__version__} from `{source}`; trained on {dataset}'
                        + (f' ({data_dir})' if data_dir and not is_imagenet else '') + '.'),
        'details': details,
        'usage': ('```python\nimport timm\nimport robustcnn  # registers the robust_resnet_* architectures\n\n'
                  f"model = timm.create_model('hf-hub:USER/{name}', pretrained=True)  # or 'local-dir:PATH'\n"
                  'model.eval()\nconfig = timm.data.resolve_data_config({}, model=model)\n'
                  'transform = timm.data.create_transform(**config)\n```\n'),
        'citation': _CITATION,
    }
    if results_files:
        card['comparison'] = 'Evaluation (validate.py; percent):\n\n' + _results_table(results_files)
    return generate_readme(card, name)


def export_for_hub(checkpoint_path: str | Path, output_dir: str | Path, *, model_name: str | None = None,
                   use_ema: bool = False, results_files: Sequence[str | Path] = ()) -> Path:
    """Write ``output_dir`` (created if needed) in timm's Hub layout; returns it."""
    checkpoint_path, output_dir = Path(checkpoint_path), Path(output_dir)
    results_files = [Path(path) for path in results_files]
    for path in results_files:
        if not path.is_file():
            raise UsageError(f'--results file not found: {path}')
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f'output {output_dir} exists and is not a folder')
    loaded = load_checkpoint_file(checkpoint_path)
    metadata = CheckpointMetadata.from_checkpoint(loaded, checkpoint_path, complete=True)
    model_name = model_name or metadata.model
    if not model_name:
        raise UsageError(f'{checkpoint_path} does not record its model; pass --model NAME')
    import robustcnn.models  # noqa: F401  (registers the robust_resnet_* models)
    if not timm.is_model(model_name):
        raise UsageError(f'unknown model {model_name!r}; see `robustcnn models`')
    state_dict = extract_state_dict(loaded, use_ema=use_ema)
    model_kwargs = dict(metadata.model_kwargs or {})
    num_classes = _num_classes(model_name, state_dict, metadata)
    if num_classes is not None:
        model_kwargs['num_classes'] = num_classes
    try:
        model = timm.create_model(model_name, **model_kwargs)
    except TypeError as error:
        raise UsageError(f'cannot create {model_name} with {model_kwargs}: {error}') from None
    check_state_dict_fits(model, state_dict, source=str(checkpoint_path))
    model.load_state_dict(state_dict, strict=True)
    data_config = _data_config(metadata)
    args = training_args(loaded)
    dataset, is_imagenet = _training_data(args, metadata, model.num_classes)
    # the variant's tag ('untrained' for the small sizes) describes timm's cfg, not these weights
    model_config: dict[str, Any] = {'pretrained_cfg': {'tag': 'in1k' if is_imagenet else dataset.lower()}}
    if metadata.class_names:
        model_config['label_names'] = list(metadata.class_names)
    card = _model_card(model, output_dir.resolve().name, args, metadata, data_config,
                       results_files, checkpoint_path.name)

    output_dir.mkdir(parents=True, exist_ok=True)
    header = {'source': checkpoint_path.name, 'robustcnn_version': __version__}
    stored = metadata.to_dict()
    if stored:  # validate.py --checkpoint DIR/model.safetensors then needs no more flags than the checkpoint
        header[SAFETENSORS_METADATA_KEY] = json.dumps(stored, default=str)
    save_safetensors(model.state_dict(), output_dir / WEIGHTS_FILE, metadata=header)
    atomic_write_text(card, output_dir / CARD_FILE)
    with tempfile.TemporaryDirectory() as scratch:  # timm writes the config in place: let it write a scratch copy
        scratch_config = Path(scratch) / CONFIG_FILE
        save_config_for_hf(model, str(scratch_config), model_config=model_config, data_config=data_config)
        atomic_write_text(scratch_config.read_text(encoding='utf-8'), output_dir / CONFIG_FILE)
    return output_dir


def push_folder_to_hub(folder: Path, repo_id: str, private: bool = False) -> str:
    """Upload the exported folder as it is (``huggingface-cli upload`` does the same); returns the commit URL."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise UsageError('--push-to-hub needs the huggingface_hub package: pip install huggingface_hub') from None
    try:
        api = HfApi(library_name='robustcnn', library_version=__version__)
        repo = api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo.repo_id, folder_path=str(folder), commit_message='Add model')
    except Exception as error:  # network, authentication and offline-mode errors of several libraries
        reason = ' '.join(str(error).split())[:300] or type(error).__name__
        raise UsageError(f'could not push to the Hub ({type(error).__name__}: {reason}); {folder} is written: push it '
                         f'later with `huggingface-cli upload {repo_id} {folder}`') from None
    return str(getattr(commit, 'commit_url', commit))
