"""Tiny image trees in the real layouts of the evaluation sets, and a model whose answers the tests control.

Reusable by any test (and the demo): every builder writes small PNGs whose solid colour encodes an ImageNet class
index, and :class:`ColorCodeClassifier` reads that colour back, so the expected accuracy of a tree is known
exactly. An image "coded" with another class than its folder's is a deliberate mistake.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from robustcnn.data.label_space import imagenet_wnids

IMAGE_SIZE = 32
# Normalization of the test model; the evaluation pipeline must apply exactly this for the decoding to work.
TEST_MEAN = (0.5, 0.5, 0.5)
TEST_STD = (0.25, 0.25, 0.25)
COLOR_MODEL_NAME = 'color_code_test_classifier'


def class_color(index: int) -> tuple[int, int, int]:
    """RGB that encodes a class index 0..1023: red = index % 256, green = 64 * (index // 256)."""
    if not 0 <= index < 1024:
        raise ValueError(f'class index {index} cannot be colour-coded')
    return index % 256, 64 * (index // 256), 128


def write_image(path: str | os.PathLike, color: Sequence[int], size: int = IMAGE_SIZE) -> Path:
    """A solid-colour PNG (lossless, so the colour survives; the extension may still say .JPEG like ImageNet's)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new('RGB', (size, size), tuple(int(value) for value in color)).save(path, format='PNG')
    return path


def write_class_folder(folder: str | os.PathLike, codes: Iterable[int], prefix: str = 'img',
                       extension: str = '.JPEG', size: int = IMAGE_SIZE) -> list[Path]:
    """One image per code in ``folder``; ``codes`` are the class indices the pictures show."""
    return [write_image(Path(folder) / f'{prefix}_{number:04d}{extension}', class_color(code), size)
            for number, code in enumerate(codes)]


def write_broken_files(folder: str | os.PathLike) -> list[Path]:
    """Files with image extensions that cannot be decoded: empty, truncated, and not an image at all."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    empty = folder / 'zz_empty.JPEG'
    empty.write_bytes(b'')
    truncated = folder / 'zz_truncated.png'
    good = folder / '_full.png'
    write_image(good, (1, 2, 3))
    truncated.write_bytes(good.read_bytes()[:40])
    good.unlink()
    text = folder / 'zz_text.jpg'
    text.write_text('not an image')
    return [empty, truncated, text]


def build_wnid_tree(root: str | os.PathLike, contents: Mapping[int, Sequence[int]], folder_names: str = 'wnid',
                    size: int = IMAGE_SIZE) -> Path:
    """``root/<class folder>/images``: ``contents`` maps an ImageNet class index to the codes of its images.

    ``folder_names='wnid'`` names folders by wnid (ImageNet, -R, -A, -Sketch, Stylized); ``'index'`` by the
    integer class index (ImageNet-V2).
    """
    root = Path(root)
    wnids = imagenet_wnids()
    for class_index, codes in contents.items():
        name = wnids[class_index] if folder_names == 'wnid' else str(class_index)
        write_class_folder(root / name, codes, size=size)
    root.mkdir(parents=True, exist_ok=True)
    return root


def correct_tree(class_indices: Iterable[int], per_class: int = 2) -> dict[int, list[int]]:
    """Contents where every image shows its own class."""
    return {index: [index] * per_class for index in class_indices}


def build_imagenet_c_tree(
        root: str | os.PathLike,
        contents: Mapping[tuple[str, int], Mapping[int, Sequence[int]]],
        category_level: bool = False,
        size: int = IMAGE_SIZE,
) -> Path:
    """``root/<corruption>/<severity>/<wnid>/images`` (or ``root/<category>/<corruption>/...``)."""
    from robustcnn.benchmarks.imagenet_c import CORRUPTION_CATEGORIES

    category_of = {name: category for category, names in CORRUPTION_CATEGORIES.items() for name in names}
    root = Path(root)
    for (corruption, severity), tree in contents.items():
        base = root / category_of.get(corruption, 'extra') / corruption if category_level else root / corruption
        build_wnid_tree(base / str(severity), tree, size=size)
    root.mkdir(parents=True, exist_ok=True)
    return root


class ColorCodeClassifier(torch.nn.Module):
    """Reads the class index back from a solid-colour image: logit_k = -|k - decoded index|.

    So top-1 is the coded class, and top-5 holds the coded class and its 4 nearest indices: tests can predict
    top-1, top-5 and the loss by hand. ``fail_after_batches`` raises KeyboardInterrupt (simulated kill).
    """

    fail_after_batches: int | None = None

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.register_buffer('mean', torch.tensor(TEST_MEAN).view(1, 3, 1, 1))
        self.register_buffer('std', torch.tensor(TEST_STD).view(1, 3, 1, 1))
        self.pretrained_cfg = {'input_size': (3, IMAGE_SIZE, IMAGE_SIZE), 'crop_pct': 1.0,
                               'interpolation': 'bilinear', 'mean': TEST_MEAN, 'std': TEST_STD,
                               'num_classes': num_classes}
        self.batches_seen = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.batches_seen += 1
        if self.fail_after_batches is not None and self.batches_seen > self.fail_after_batches:
            raise KeyboardInterrupt('simulated kill')
        pixels = (images * self.std + self.mean) * 255.0
        red = pixels[:, 0].mean(dim=(1, 2)).round()
        green = pixels[:, 1].mean(dim=(1, 2)).round()
        decoded = red + 256.0 * (green / 64.0).round()
        classes = torch.arange(self.num_classes, dtype=images.dtype, device=images.device)
        return -(classes.unsqueeze(0) - decoded.unsqueeze(1)).abs() * self.scale


def register_color_model() -> str:
    """Register :class:`ColorCodeClassifier` with timm (once per process) and return its name."""
    import timm
    from timm.models import register_model

    if not timm.is_model(COLOR_MODEL_NAME):
        def color_code_test_classifier(pretrained: bool = False, num_classes: int = 1000, **kwargs) -> torch.nn.Module:
            return ColorCodeClassifier(num_classes=num_classes)
        color_code_test_classifier.__module__ = __name__
        register_model(color_code_test_classifier)
    return COLOR_MODEL_NAME


def save_color_checkpoint(path: str | os.PathLike, num_classes: int = 1000, metadata: Mapping | None = None,
                          wrap: str | None = 'state_dict') -> Path:
    """A checkpoint for the colour model in one of the released forms (``wrap`` None: bare state dict)."""
    state_dict = ColorCodeClassifier(num_classes).state_dict()
    checkpoint: dict = dict(state_dict) if wrap is None else {wrap: state_dict}
    if metadata is not None:
        checkpoint['metadata'] = dict(metadata)
    torch.save(checkpoint, path)
    return Path(path)


def expected_top1(contents: Mapping[int, Sequence[int]]) -> float:
    """Percent of images whose code equals their folder's class (no label subset)."""
    codes = [(index, code) for index, values in contents.items() for code in values]
    return 100.0 * sum(index == code for index, code in codes) / len(codes)


def nearest(values: np.ndarray | Sequence[int], code: int) -> int:
    """The element of ``values`` nearest to ``code`` (lowest index on ties, like argmax over -|k - code|)."""
    values = list(values)
    return min(range(len(values)), key=lambda position: (abs(values[position] - code), position))
