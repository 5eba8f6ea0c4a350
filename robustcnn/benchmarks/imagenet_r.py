"""ImageNet-R (Hendrycks et al. 2021): 30,000 renditions (art, cartoons, toys...) of 200 ImageNet classes.

Scored on the 200-way subset: logits restricted to timm's ``imagenet_r_indices`` before top-k (as the release's
``--evaluate_imagenet_r`` did), targets are positions in that subset.
"""
from __future__ import annotations

from ..data.label_space import imagenet_r_wnids
from .base import ClassFolderBenchmark

__all__ = ['ImageNetR']


class ImageNetR(ClassFolderBenchmark):
    name = 'imagenet-r'
    title = 'ImageNet-R'
    description = 'renditions of 200 classes; top-1 over the 200-class subset, higher is better'
    suite_folder_names = ('imagenet-r', 'imagenet_r', 'imagenetr')

    @property
    def subset_class_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return imagenet_r_wnids()
