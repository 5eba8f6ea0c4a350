"""Stylized-ImageNet (Geirhos et al. 2019): the validation images re-rendered in painting styles, 224x224 already.

Shape-vs-texture test: a model that relies on texture fails here. The images go in as they are (no resize).
"""
from __future__ import annotations

from .base import ClassFolderBenchmark

__all__ = ['StylizedImageNet']


class StylizedImageNet(ClassFolderBenchmark):
    name = 'stylized-imagenet'
    title = 'Stylized-ImageNet'
    description = 'ImageNet val re-styled by AdaIN style transfer; top-1 accuracy, higher is better'
    default_resize_mode = 'none'
    image_subfolders = ('val', 'validation')
    suite_folder_names = ('stylized-imagenet', 'stylized_imagenet', 'stylizedimagenet', 'sin', 'stylized')
