"""Evaluation preprocessing: how a decoded image becomes the model's input.

The transform runs in the loader workers and stops at a uint8 tensor; normalization with the model's mean/std
happens on the device (``evaluate(normalization=...)``), which ships 4x fewer bytes per image.

Resize modes (the original release's ``--resize_mode``):
- ``resize_center_crop``: shorter side to ``floor(size / crop_pct)``, then center crop (ImageNet, -R, -A, -Sketch,
  -V2; exactly timm's eval transform).
- ``resize``: squash to the input size, no crop.
- ``none``: the image goes in as it is (Stylized-ImageNet and ImageNet-C are already 224x224).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from PIL import Image
from torchvision import transforms as tv_transforms
from torchvision.transforms import functional as tv_functional

from ..arguments import RESIZE_MODES
from ..cli import UsageError

__all__ = ['RESIZE_MODES', 'EvalPreprocessing', 'resolve_eval_preprocessing', 'build_eval_transform']


@dataclass(frozen=True)
class EvalPreprocessing:
    """Everything that decides the pixels the model sees; stored in results so numbers can be reproduced."""

    input_size: tuple[int, int, int]
    resize_mode: str
    crop_pct: float
    crop_mode: str
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # Pixels cut from every side of the decoded image before anything else (ObjectNet's red border: 2).
    border: int = 0

    def as_dict(self) -> dict[str, Any]:
        record = asdict(self)
        if not self.border:  # only where a set crops one, so every other set's record stays as it was
            del record['border']
        return record


def resolve_eval_preprocessing(
        model: torch.nn.Module | None,
        resize_mode: str,
        *,
        img_size: int | None = None,
        input_size: Sequence[int] | None = None,
        crop_pct: float | None = None,
        interpolation: str | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        pretrained_cfg: Mapping[str, Any] | None = None,
) -> EvalPreprocessing:
    """Model's data config (timm's resolve_data_config, test size) with the command line's overrides on top."""
    from timm.data import resolve_data_config

    if resize_mode not in RESIZE_MODES:
        raise ValueError(f'unknown resize mode {resize_mode!r}; expected one of {", ".join(RESIZE_MODES)}')
    overrides: dict[str, Any] = {}
    if img_size is not None:
        overrides['img_size'] = img_size
    if input_size is not None:
        overrides['input_size'] = tuple(input_size)
    if crop_pct is not None:
        overrides['crop_pct'] = crop_pct
    if interpolation:
        overrides['interpolation'] = interpolation
    if mean is not None:
        overrides['mean'] = tuple(mean)
    if std is not None:
        overrides['std'] = tuple(std)
    config = resolve_data_config(overrides, model=model, pretrained_cfg=dict(pretrained_cfg or {}) or None,
                                 use_test_size=True)
    channels = config['input_size'][0]
    mean_values, std_values = tuple(config['mean']), tuple(config['std'])
    if len(mean_values) == 1:
        mean_values = mean_values * channels
    if len(std_values) == 1:
        std_values = std_values * channels
    if len(mean_values) != channels or len(std_values) != channels:
        raise UsageError(f'--mean/--std need 1 or {channels} values, got {len(mean_values)} and {len(std_values)}')
    if any(value <= 0 for value in std_values):
        raise UsageError(f'--std values must be positive, got {std_values}')
    size = tuple(int(value) for value in config['input_size'])
    if any(value <= 0 for value in size):
        raise UsageError(f'input size must be positive, got {size}')
    pct = float(config.get('crop_pct') or 0.875)
    if not 0 < pct <= 10:
        raise UsageError(f'--crop-pct must be in (0, 10], got {pct}')
    return EvalPreprocessing(
        input_size=size, resize_mode=resize_mode, crop_pct=pct, crop_mode=str(config.get('crop_mode') or 'center'),
        interpolation=str(config['interpolation']), mean=mean_values, std=std_values,
    )


class _PILToUint8Tensor:
    """PIL image -> uint8 CHW tensor without scaling (the device normalizes); a tensor (decoded on the device by
    ``--decode-on-device``) passes through."""

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        return image if isinstance(image, torch.Tensor) else tv_functional.pil_to_tensor(image)

    def __repr__(self) -> str:
        return f'{type(self).__name__}()'


class _CropBorder:
    """Cut ``border`` pixels from each side (PIL: ``crop((b, b, w - b, h - b))``; a CHW tensor: the same slice)."""

    def __init__(self, border: int) -> None:
        self.border = border

    def __call__(self, image: Image.Image | torch.Tensor) -> Image.Image | torch.Tensor:
        border = self.border
        if isinstance(image, torch.Tensor):
            return image[..., border:image.shape[-2] - border, border:image.shape[-1] - border]
        return image.crop((border, border, image.width - border, image.height - border))

    def __repr__(self) -> str:
        return f'{type(self).__name__}(border={self.border})'


def build_eval_transform(preprocessing: EvalPreprocessing) -> Callable[[Image.Image], torch.Tensor]:
    """PIL RGB image -> uint8 tensor of the model's input size (or the image's own size for ``none``).

    The same transform also takes a uint8 CHW tensor (on any device): torchvision's Resize/CenterCrop and timm's
    ResizeKeepRatio accept tensors, resizing with antialiasing, which is how ``--decode-on-device`` resizes.
    ``preprocessing.border`` first cuts that many pixels from every side.
    """
    transform = _resize_transform(preprocessing)
    if preprocessing.border:
        return tv_transforms.Compose([_CropBorder(preprocessing.border), transform])
    return transform


def _resize_transform(preprocessing: EvalPreprocessing) -> Callable[[Image.Image], torch.Tensor]:
    from timm.data import create_transform
    from timm.data.transforms import str_to_interp_mode

    height, width = preprocessing.input_size[1:]
    if preprocessing.resize_mode == 'resize_center_crop':
        # timm's eval transform with use_prefetcher=True ends at a uint8 tensor: identical resize/crop arithmetic.
        return create_transform(
            input_size=preprocessing.input_size, is_training=False, use_prefetcher=True,
            interpolation=preprocessing.interpolation, crop_pct=preprocessing.crop_pct,
            crop_mode=preprocessing.crop_mode, mean=preprocessing.mean, std=preprocessing.std,
        )
    if preprocessing.resize_mode == 'resize':
        return tv_transforms.Compose([
            tv_transforms.Resize((height, width), interpolation=str_to_interp_mode(preprocessing.interpolation)),
            _PILToUint8Tensor(),
        ])
    return tv_transforms.Compose([_PILToUint8Tensor()])
