"""ObjectNet (Barbu et al., NeurIPS 2019): 50,000 photos of household objects in unusual poses, backgrounds and
viewpoints, of 313 classes; 113 of them overlap ImageNet-1k and are the ones an ImageNet classifier is scored on.

Layout: the download's ``objectnet-1.0/`` (DATA_DIR is that folder or the one holding it):
``images/<folder>/<image>`` and ``mappings/`` with, in the formats ObjectNet's own code and wise-ft /
model-soups' loaders read them:
- ``folder_to_objectnet_label.json``: ``{folder name: ObjectNet class name}``;
- ``objectnet_to_imagenet_1k.json``: ``{ObjectNet class name: "ImageNet name; ImageNet name; ..."}`` (the 113);
- ``imagenet_to_label_2012_v2``: text, line i = the name of ImageNet 2012 class id i;
- ``pytorch_to_imagenet_2012_id.json``: ``{classifier index: ImageNet 2012 class id}``.

Protocol: every image loses 2 pixels on each side first (the red border the photos carry; ``crop((2, 2, w - 2,
h - 2))`` in ObjectNet's template and wise-ft's loader), then the usual resize and center crop. Images of the 200
classes without an ImageNet counterpart are left out. ``top1`` over the 113 classes, by ``--objectnet-pooling``:
- ``max`` (default; wise-ft / model-soups, what most papers report): each ObjectNet class scores the maximum of the
  logits of its ImageNet classes, the prediction is the best of the 113;
- ``template`` (ObjectNet's own evaluation): the 1000-way top-1 mapped through the id mapping, correct when the
  predicted ImageNet class is one of the image's class's.
Both are computed in the one pass and reported (``top1_by_pooling``); ``top1`` is the chosen one, named in
``pooling``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch

from ..data.folder import list_class_folders, scan_class_folders
from ..data.label_space import LabelSpace
from .base import Benchmark, DatasetLayoutError, PreparedData, format_metric

if TYPE_CHECKING:
    from .context import EvaluationContext
    from .runner import ValidationRequest

__all__ = ['ObjectNet', 'OBJECTNET_POOLINGS', 'OBJECTNET_BORDER', 'read_objectnet_mappings']

_logger = logging.getLogger(__name__)

# --objectnet-pooling: how 1000 ImageNet logits become an ObjectNet prediction (what results call it).
OBJECTNET_POOLINGS: Mapping[str, str] = {
    'max': 'max of mapped logits over the 113 classes (wise-ft / model-soups)',
    'template': '1000-way top-1 mapped through the id mapping (ObjectNet template)',
}
# Pixels cut from each side: the red border of every ObjectNet photo.
OBJECTNET_BORDER = 2
MAPPING_FILES = ('folder_to_objectnet_label.json', 'objectnet_to_imagenet_1k.json', 'pytorch_to_imagenet_2012_id.json',
                 'imagenet_to_label_2012_v2')


def read_objectnet_mappings(mappings: Path) -> dict[str, list[int]]:
    """``{image folder: classifier indices of its ImageNet classes}`` for the classes that overlap ImageNet."""
    try:
        folder_to_label = json.loads((mappings / MAPPING_FILES[0]).read_text(encoding='utf-8'))
        label_to_imagenet = json.loads((mappings / MAPPING_FILES[1]).read_text(encoding='utf-8'))
        index_to_id = json.loads((mappings / MAPPING_FILES[2]).read_text(encoding='utf-8'))
        id_names = (mappings / MAPPING_FILES[3]).read_text(encoding='utf-8').splitlines()
    except (OSError, ValueError) as error:
        raise DatasetLayoutError(f'cannot read the ObjectNet mappings in {mappings}: {error}') from None
    try:
        id_to_index = {int(imagenet_id): int(index) for index, imagenet_id in index_to_id.items()}
        # a name on two lines keeps the last, as the reference loaders' dict does
        name_to_index = {name.strip(): id_to_index[line] for line, name in enumerate(id_names) if name.strip()}
        label_to_folder = {label: folder for folder, label in folder_to_label.items()}
        folder_indices: dict[str, list[int]] = {}
        for label, names in label_to_imagenet.items():
            folder_indices[label_to_folder[label]] = [name_to_index[name] for name in names.split('; ')]
    except (KeyError, ValueError, AttributeError) as error:
        raise DatasetLayoutError(f'ObjectNet mappings in {mappings} do not agree with each other (no entry for '
                                 f'{error}); use the download\'s mappings/ folder unchanged') from None
    return folder_indices


class ObjectNet(Benchmark):
    name = 'objectnet'
    title = 'ObjectNet'
    description = ('objects in unusual poses and places, the 113 classes that overlap ImageNet; top-1, higher is '
                   'better')
    suite_folder_names = ('objectnet', 'objectnet-1.0', 'objectnet_1.0')

    def dataset_root(self, data_dir: str | os.PathLike) -> Path:
        """``objectnet-1.0/`` itself or the folder that holds it."""
        root = self.check_exists(data_dir)
        for candidate in (root, root / 'objectnet-1.0'):
            if (candidate / 'images').is_dir() and (candidate / 'mappings').is_dir():
                return candidate
        raise DatasetLayoutError(f'no ObjectNet under {root}: expected objectnet-1.0/ with images/<folder>/ and '
                                 f'mappings/ ({", ".join(MAPPING_FILES)})')

    def detect(self, root: Path, strong: bool) -> str | None:
        if strong and any((candidate / 'mappings' / MAPPING_FILES[1]).is_file()
                          for candidate in (root, root / 'objectnet-1.0')):
            return 'ObjectNet mappings found'
        return None

    def prepare(self, data_dir: str | os.PathLike, label_space: LabelSpace,
                request: ValidationRequest | None = None) -> PreparedData:
        """Images of the overlapping classes, targets = position of the folder in their sorted list."""
        pooling = request.objectnet_pooling if request is not None else 'max'
        if pooling not in OBJECTNET_POOLINGS:
            raise DatasetLayoutError(f'--objectnet-pooling must be one of {", ".join(OBJECTNET_POOLINGS)}, '
                                     f'got {pooling!r}')
        if not label_space.is_imagenet_1k:
            raise DatasetLayoutError(f'ObjectNet maps ImageNet-1k classifier outputs; the model\'s label space is '
                                     f'{label_space.source} ({len(label_space)} classes)')
        root = self.dataset_root(data_dir)
        folder_indices = read_objectnet_mappings(root / 'mappings')
        images = root / 'images'
        present = set(list_class_folders(images))
        classes = sorted(folder for folder in folder_indices if folder in present)
        if not classes:
            raise DatasetLayoutError(f'none of the {len(folder_indices)} ImageNet-overlapping ObjectNet classes has '
                                     f'a folder under {images}')
        try:
            samples = scan_class_folders(images, {folder: position for position, folder in enumerate(classes)},
                                         classes)
        except ValueError as error:
            raise DatasetLayoutError(str(error)) from None
        if not samples:
            raise DatasetLayoutError(f'no image files under {images}/<overlapping class folders>')
        return PreparedData(
            benchmark=self.name, root=root, samples=samples, label_space=label_space,
            notes={'class_indices': [folder_indices[folder] for folder in classes], 'pooling': pooling,
                   'left_out_classes': len(present) - len(classes)})

    def score(self, context: EvaluationContext, prepared: PreparedData) -> dict[str, Any]:
        preprocessing = dataclasses.replace(context.preprocessing(self), border=OBJECTNET_BORDER)
        class_indices: list[list[int]] = prepared.notes['class_indices']
        mapped = torch.tensor([index for indices in class_indices for index in indices], dtype=torch.long)
        owner = torch.tensor([position for position, indices in enumerate(class_indices) for _ in indices],
                             dtype=torch.long)
        _logger.info('%s: %d images of %d classes overlapping ImageNet from %s (%d other classes left out), '
                     'preprocessing %s', self.name, len(prepared.samples), len(class_indices), prepared.root,
                     prepared.notes['left_out_classes'], preprocessing)

        def both_predictions(logits: torch.Tensor) -> torch.Tensor:
            """Per image: the best ObjectNet class by max-pooled logits, and the 1000-way top-1."""
            logits = logits.float()
            index, group = mapped.to(logits.device), owner.to(logits.device).expand(logits.shape[0], -1)
            pooled = torch.full((logits.shape[0], len(class_indices)), float('-inf'), device=logits.device)
            pooled = pooled.scatter_reduce(1, group, logits[:, index], reduce='amax')
            return torch.stack([pooled.argmax(dim=1), logits.argmax(dim=1)], dim=1).float()

        predictions = context.predict(prepared, preprocessing, self.name, reduce=both_predictions)
        outputs = predictions.outputs.long().tolist()
        scored = predictions.scored.tolist()
        correct = {'max': 0, 'template': 0}
        for (_, target), (pooled, top1), is_scored in zip(prepared.samples, outputs, scored):
            if is_scored:
                correct['max'] += int(pooled == target)
                correct['template'] += int(top1 in class_indices[target])
        count = sum(scored)
        by_pooling = {name: 100.0 * correct[name] / count if count else None for name in OBJECTNET_POOLINGS}
        pooling = prepared.notes['pooling']
        entry = {
            'top1': by_pooling[pooling],
            'pooling': pooling,
            'pooling_rule': OBJECTNET_POOLINGS[pooling],
            'top1_by_pooling': by_pooling,
            'num_samples': count,
            'num_classes': len(class_indices),
            'skipped_files': predictions.skipped_files,
            'preprocessing': context.preprocessing_record(preprocessing),
            'elapsed_seconds': predictions.elapsed_seconds,
        }
        _logger.info('%s: top1 %s (%s pooling; max %s, template %s) over %d images', self.name,
                     format_metric(entry['top1']), pooling, format_metric(by_pooling['max']),
                     format_metric(by_pooling['template']), count)
        return entry
