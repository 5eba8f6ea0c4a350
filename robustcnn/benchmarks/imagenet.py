"""ImageNet-1k validation set: 50,000 images in 1000 wnid folders (``val/n01440764/...``)."""
from __future__ import annotations

from .base import ClassFolderBenchmark

__all__ = ['ImageNet']


class ImageNet(ClassFolderBenchmark):
    name = 'imagenet'
    title = 'ImageNet'
    description = 'clean ImageNet-1k validation images; top-1 accuracy, higher is better'
    image_subfolders = ('val', 'validation')
    suite_folder_names = ('imagenet', 'imagenet-1k', 'imagenet1k', 'ILSVRC2012', 'ilsvrc')
