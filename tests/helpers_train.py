"""Shared pieces of the training tests: a tiny learnable image-folder dataset and ways to run train.py."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO_ROOT / 'train.py'

# Each class is a colour; noise makes the images differ. A tiny CNN learns this in a couple of epochs.
CLASS_COLOURS = {'apple': (220, 40, 40), 'grass': (40, 200, 60), 'sea': (40, 60, 220), 'sun': (230, 220, 40)}


def make_image_folders(root: Path, train_per_class: int = 16, val_per_class: int = 6, size: int = 32,
                       seed: int = 0) -> Path:
    """``root/train/<class>/*.png`` and ``root/val/<class>/*.png`` with a learnable colour-to-class rule."""
    rng = np.random.default_rng(seed)
    for split, count in (('train', train_per_class), ('val', val_per_class)):
        for name, colour in CLASS_COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                pixels = np.asarray(colour, dtype=np.float64)[None, None, :] + rng.normal(0, 35, (size, size, 3))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f'{index:03d}.png')
    return root


# Flags that make a run tiny: 32 px, the smallest Robust-ResNet, no heavy augmentation unless a test adds it.
TINY_FLAGS = [
    '--model', 'robust_resnet_dw_pico', '--model-kwargs', 'patch_size=4', '--img-size', '32',
    '--batch-size', '8', '--workers', '0', '--log-interval', '2', '--warmup-epochs', '1', '--lr', '2e-3',
    '--aug-repeats', '0', '--mixup', '0', '--cutmix', '0', '--aa', 'none', '--reprob', '0', '--drop-path', '0',
    '--seed', '3',
]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'})
    env.pop('ROBUSTCNN_TRACEBACK', None)
    env.update(extra)
    return env


def run_train_subprocess(arguments: Sequence[str], timeout: float = 180, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TRAIN_SCRIPT), *arguments], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout, env=subprocess_env(**env))


def load_weights(path: Path, key: str = 'state_dict') -> dict[str, torch.Tensor]:
    return torch.load(path, map_location='cpu', weights_only=True)[key]


def read_summary(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / 'summary.csv').open(newline='') as file:
        return list(csv.DictReader(file))


def assert_same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    different = [name for name in first if not torch.equal(first[name], second[name])]
    assert not different, f'{len(different)} tensors differ, e.g. {different[:3]}'
