"""ImageNet-Sketch (Wang et al. 2019): 50,889 black-and-white sketches, 1000 wnid folders, often under ``sketch/``."""
from __future__ import annotations

from pathlib import Path

from .base import ClassFolderBenchmark

__all__ = ['ImageNetSketch']


class ImageNetSketch(ClassFolderBenchmark):
    name = 'imagenet-sketch'
    title = 'ImageNet-Sketch'
    description = 'hand-drawn sketches of the 1000 classes; top-1 accuracy, higher is better'
    image_subfolders = ('sketch',)
    suite_folder_names = ('imagenet-sketch', 'imagenet_sketch', 'sketch')

    def detect(self, root: Path, strong: bool) -> str | None:
        return 'sketch/ sub-folder' if not strong and (root / 'sketch').is_dir() else None
