"""ImageNet-ReaL (Beyer et al., "Are we done with ImageNet?", 2020; google-research/reassessed-imagenet): the
50,000 validation images re-labelled, each with the set of classes raters found in it (possibly none).

Layout: ImageNet val (``<root>[/val]/<wnid>/ILSVRC2012_val_<8 digits>.JPEG``) plus ``real.json``: a list whose
entry i holds the ImageNet class indices of the i-th val image in file-name order, i.e. of
``ILSVRC2012_val_{i + 1:08d}.JPEG`` (the key timm's ``RealLabelsImagenet`` uses). ``--real-labels FILE`` gives the
file; without it the copy timm ships (``timm/data/_info/imagenet_real_labels.json``) is read. A partial tree uses
the entries of the files present.

Metrics: ``real_top1``, top-1 counted correct when the predicted class is in the image's ReaL set, over the images
whose set is not empty (``num_real_samples``); ``top1`` with the original labels over all images
(``num_samples``). timm's ``RealLabelsImagenet`` is not used as is: it asserts all 50,000 files are present and
takes outputs in loader order, while here a partial tree is allowed and outputs come gathered by sample index; the
rule is the same (prediction in the set, empty sets skipped).
"""
from __future__ import annotations

import json
import logging
import os
import pkgutil
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..data.label_space import LabelSpace
from .base import DatasetLayoutError, PreparedData, format_metric
from .imagenet import ImageNet

if TYPE_CHECKING:
    from .context import EvaluationContext
    from .runner import ValidationRequest

__all__ = ['ImageNetReaL', 'load_real_labels', 'REAL_VAL_IMAGES']

_logger = logging.getLogger(__name__)

REAL_VAL_IMAGES = 50_000
_VAL_FILE = re.compile(r'ILSVRC2012_val_(\d{8})\.[A-Za-z]+$')


def load_real_labels(path: str | os.PathLike | None) -> list[list[int]]:
    """``real.json`` (or timm's copy when ``path`` is None), checked: 50,000 lists of class indices 0..999."""
    source = str(path) if path else 'timm/data/_info/imagenet_real_labels.json'
    try:
        if path:
            text = Path(path).read_text(encoding='utf-8')
        else:
            data = pkgutil.get_data('timm.data', '_info/imagenet_real_labels.json')
            if data is None:
                raise FileNotFoundError('timm does not ship _info/imagenet_real_labels.json')
            text = data.decode('utf-8')
        labels = json.loads(text)
    except (OSError, ValueError) as error:
        raise DatasetLayoutError(f'cannot read the ReaL labels {source}: {error} (give --real-labels real.json)') \
            from None
    if (not isinstance(labels, list) or len(labels) != REAL_VAL_IMAGES
            or not all(isinstance(entry, list) and all(isinstance(index, int) and 0 <= index < 1000
                                                       for index in entry) for entry in labels)):
        raise DatasetLayoutError(f'{source} is not ReaL\'s real.json: expected a list of {REAL_VAL_IMAGES} lists of '
                                 f'ImageNet class indices 0..999')
    return labels


class ImageNetReaL(ImageNet):
    name = 'imagenet-real'
    title = 'ImageNet-ReaL'
    description = ('ImageNet val with the reassessed label sets; top-1 in the set over images with a label, higher '
                   'is better')
    # Its images are ImageNet's val; a suite scores it only under its own name (or --dataset-dir imagenet-real=...),
    # so a suite's ImageNet folder is not evaluated twice, nor refused for file names that are not val's.
    suite_folder_names = ('imagenet-real', 'imagenet_real', 'imagenetreal')
    headline_metric = 'real_top1'

    def prepare(self, data_dir: str | os.PathLike, label_space: LabelSpace,
                request: ValidationRequest | None = None) -> PreparedData:
        """ImageNet's scan, then each file's ReaL set by its file name (``request.real_labels``: the file)."""
        if not label_space.is_imagenet_1k:
            raise DatasetLayoutError(f'ImageNet-ReaL labels are ImageNet-1k class indices; the model\'s label space '
                                     f'is {label_space.source} ({len(label_space)} classes)')
        prepared = super().prepare(data_dir, label_space, request)
        real_labels_file = request.real_labels if request is not None else None
        labels = load_real_labels(real_labels_file)
        sets: list[list[int]] = []
        for path, _ in prepared.samples:
            match = _VAL_FILE.match(os.path.basename(path))
            number = int(match.group(1)) if match else 0
            if not 1 <= number <= REAL_VAL_IMAGES:
                raise DatasetLayoutError(f'{path} is not an ImageNet val file (ILSVRC2012_val_00000001..'
                                         f'{REAL_VAL_IMAGES:08d}); ReaL labels exist only for those')
            sets.append(labels[number - 1])
        prepared.notes.update(real_labels=sets, real_labels_file=str(real_labels_file or 'timm'))
        return prepared

    def score(self, context: EvaluationContext, prepared: PreparedData) -> dict[str, Any]:
        preprocessing = context.preprocessing(self)
        _logger.info('%s: %d images from %s, preprocessing %s', self.name, len(prepared.samples), prepared.root,
                     preprocessing)
        predictions = context.predict(prepared, preprocessing, self.name,
                                      reduce=lambda logits: logits.argmax(dim=1, keepdim=True).float())
        predicted = predictions.outputs[:, 0].long().tolist()
        scored = predictions.scored.tolist()
        sets = prepared.notes['real_labels']
        original = [predicted[index] == label for index, (_, label) in enumerate(prepared.samples) if scored[index]]
        real = [predicted[index] in sets[index] for index in range(len(sets)) if scored[index] and sets[index]]
        entry = {
            'real_top1': 100.0 * sum(real) / len(real) if real else None,
            'top1': 100.0 * sum(original) / len(original) if original else None,
            'num_samples': len(original),
            'num_real_samples': len(real),
            'skipped_files': predictions.skipped_files,
            'real_labels': prepared.notes['real_labels_file'],
            'preprocessing': context.preprocessing_record(preprocessing),
            'elapsed_seconds': predictions.elapsed_seconds,
        }
        _logger.info('%s: real_top1 %s over %d images with a label set, top1 %s over %d', self.name,
                     format_metric(entry['real_top1']), entry['num_real_samples'], format_metric(entry['top1']),
                     entry['num_samples'])
        return entry

    def summary(self, entry: Mapping[str, Any]) -> dict[str, float | None]:
        return {'real_top1': entry.get('real_top1'), 'top1': entry.get('top1')}
