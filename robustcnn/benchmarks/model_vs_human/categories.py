"""The 16 entry-level categories of Geirhos et al.'s human experiments and the 1000 -> 16 decision.

A 1000-class ImageNet model takes part in a 16-alternative task by *mean* probability: softmax over the 1000
logits, then each category's score is the mean of the probabilities of its ImageNet classes (207 classes in all;
the other 793 take no part), and the decision is the category with the largest score. This is
``ImageNetProbabilitiesTo16ClassesMapping`` of model-vs-human (``modelvshuman/datasets/decision_mappings.py``,
aggregation ``np.mean``) and of texture-vs-shape (``code/probabilities_to_decision.py``); the texture-vs-shape
README explains why the mean and not the sum (a sum favours categories with many classes, e.g. 109 dogs).

The class lists are the ``<category>_indices`` of ``modelvshuman/helper/human_categories.py`` (the ImageNet-1k
classes among the WordNet hyponyms of each category, minus those the authors excluded by hand).
"""
from __future__ import annotations

import numpy as np
import torch

from ...data.label_space import LabelSpace, LabelSpaceError

__all__ = ['CATEGORIES', 'CATEGORY_CLASS_INDICES', 'NUM_CATEGORIES', 'category_index', 'category_membership',
           'sixteen_class_probabilities', 'sixteen_class_probabilities_numpy', 'SixteenClassReduce',
           'check_imagenet_label_space']

# Alphabetical, as get_human_object_recognition_categories() sorts them: the order of the 16 outputs.
CATEGORIES: tuple[str, ...] = (
    'airplane', 'bear', 'bicycle', 'bird', 'boat', 'bottle', 'car', 'cat', 'chair', 'clock', 'dog', 'elephant',
    'keyboard', 'knife', 'oven', 'truck',
)
NUM_CATEGORIES = len(CATEGORIES)

CATEGORY_CLASS_INDICES: dict[str, tuple[int, ...]] = {
    'airplane': (404,),
    'bear': (294, 295, 296, 297),
    'bicycle': (444, 671),
    'bird': (8, 10, 11, 12, 13, 14, 15, 16, 18, 19, 20, 22, 23, 24, 80, 81, 82, 83, 87, 88, 89, 90, 91, 92, 93, 94,
             95, 96, 98, 99, 100, 127, 128, 129, 130, 131, 132, 133, 135, 136, 137, 138, 139, 140, 141, 142, 143,
             144, 145),
    'boat': (472, 554, 625, 814, 914),
    'bottle': (440, 720, 737, 898, 899, 901, 907),
    'car': (436, 511, 817),
    'cat': (281, 282, 283, 284, 285, 286),
    'chair': (423, 559, 765, 857),
    'clock': (409, 530, 892),
    'dog': tuple(range(152, 192)) + tuple(range(193, 203)) + (203,) + tuple(range(205, 227)) + tuple(range(228, 242))
    + tuple(range(243, 251)) + tuple(range(252, 258)) + (259,) + tuple(range(261, 264)) + tuple(range(265, 269)),
    'elephant': (385, 386),
    'keyboard': (508, 878),
    'knife': (499,),
    'oven': (766,),
    'truck': (555, 569, 656, 675, 717, 734, 864, 867),
}


def category_index(name: str) -> int:
    """Position of a category among the 16 outputs; a one-line error for anything else."""
    try:
        return CATEGORIES.index(name)
    except ValueError:
        raise ValueError(f'{name!r} is not one of the 16 categories ({", ".join(CATEGORIES)})') from None


def category_membership(num_classes: int = 1000) -> np.ndarray:
    """``[16, num_classes]`` matrix whose row k averages the probabilities of category k's classes."""
    matrix = np.zeros((NUM_CATEGORIES, num_classes), dtype=np.float64)
    for row, name in enumerate(CATEGORIES):
        indices = CATEGORY_CLASS_INDICES[name]
        matrix[row, list(indices)] = 1.0 / len(indices)
    return matrix


def check_imagenet_label_space(label_space: LabelSpace, title: str) -> None:
    """The 16-class mapping names ImageNet-1k classifier outputs; any other label space cannot be scored."""
    if not label_space.is_imagenet_1k:
        raise LabelSpaceError(
            f'{title} maps ImageNet-1k outputs to its 16 categories, but the model\'s label space is '
            f'{len(label_space)} classes from {label_space.source}; evaluate an ImageNet-1k classifier')


def sixteen_class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """``[B, 1000]`` logits -> ``[B, 16]`` mean class probabilities per category (float32, on the logits' device).

    Softmax in float32 whatever the autocast dtype, as model-vs-human takes it on float32 numpy logits.
    """
    if logits.ndim != 2 or logits.shape[1] != 1000:
        raise ValueError(f'the 16-class mapping needs [batch, 1000] ImageNet logits, got shape {tuple(logits.shape)}')
    probabilities = torch.softmax(logits.float(), dim=1)
    return torch.stack([probabilities[:, list(CATEGORY_CLASS_INDICES[name])].mean(dim=1) for name in CATEGORIES],
                       dim=1)


def sixteen_class_probabilities_numpy(probabilities: np.ndarray) -> np.ndarray:
    """``[..., 1000]`` softmax probabilities -> ``[..., 16]`` category means (for saved outputs and checks)."""
    probabilities = np.asarray(probabilities)
    if probabilities.shape[-1] != 1000:
        raise ValueError(f'expected 1000 ImageNet probabilities in the last axis, got shape {probabilities.shape}')
    return np.stack([probabilities[..., list(CATEGORY_CLASS_INDICES[name])].mean(axis=-1) for name in CATEGORIES],
                    axis=-1)


class SixteenClassReduce:
    """The ``reduce`` for ``EvaluationContext.predict``: per batch on the device, logits -> 16 probabilities.

    A named callable (not a lambda) so that it pickles and prints as what it is in logs.
    """

    num_outputs = NUM_CATEGORIES

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return sixteen_class_probabilities(logits)

    def __repr__(self) -> str:
        return 'SixteenClassReduce(softmax -> mean probability per category)'
