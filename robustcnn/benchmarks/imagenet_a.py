"""ImageNet-A (Hendrycks et al. 2021): 7,500 natural adversarial examples of 200 classes (a different 200 from R).

Scored on the 200-way subset given by timm's ``imagenet_a_indices``.
"""
from __future__ import annotations

from ..data.label_space import imagenet_a_wnids
from .base import ClassFolderBenchmark

__all__ = ['ImageNetA']


class ImageNetA(ClassFolderBenchmark):
    name = 'imagenet-a'
    title = 'ImageNet-A'
    description = 'natural adversarial examples of 200 classes; top-1 over the 200-class subset, higher is better'
    suite_folder_names = ('imagenet-a', 'imagenet_a', 'imageneta')

    @property
    def subset_class_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return imagenet_a_wnids()
