"""The demo's stylized set, scored in one model pass against both of its labels: the shape (the class, as
Stylized-ImageNet scores it) and the texture each image wears.

benchmark.py stores every stylized image twice: ``stylized/<shape class>/<name>`` and, byte for byte,
``stylized-texture-labels/<texture class>/<name>``, so the second folder gives each image its texture class. The
predictions of the one pass (Stylized-ImageNet's preprocessing: the images as they are) are scored against both:
the shape and texture decisions of the shape bias then come from the same outputs of the same pixels. Scoring the
two folders as two sets, as the demo once did, ran the model twice, the texture pass with the plain folder set's
resize and crop.

Not a registered ``--dataset``: the demo hands it to ``run_validation`` in place of ``stylized-imagenet``, whose
results entry it keeps unchanged; the texture-label numbers come back in the entry's :data:`TEXTURE_LABELS_FIELD`
for the demo to file under their own key.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..benchmarks.base import DatasetLayoutError, PreparedData, format_metric
from ..benchmarks.stylized_imagenet import StylizedImageNet
from ..data.folder import list_class_folders, scan_class_folders
from ..data.label_space import LabelSpace
from ..engine.evaluate import top5_hits
from .benchmark import TEXTURE_LABELLED

if TYPE_CHECKING:
    from ..benchmarks.context import EvaluationContext
    from ..benchmarks.runner import ValidationRequest

__all__ = ['SyntheticStylized', 'TEXTURE_LABELS_FIELD', 'label_metrics']

_logger = logging.getLogger(__name__)

# The field of the results entry that holds the same predictions scored against the texture labels.
TEXTURE_LABELS_FIELD = 'against_texture_labels'


def label_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Top-1 and top-5 (percent) and the mean cross entropy of gathered logits against one set of labels.

    The numbers ``engine.evaluate`` counts batch by batch (its :func:`top5_hits`, NaN without samples), taken here
    over the outputs of ``predict``: a second label set needs the outputs, which evaluate's counts do not keep.
    """
    if not len(targets):
        return {'top1': math.nan, 'top5': math.nan, 'loss': math.nan}
    hits = top5_hits(logits, targets)
    loss = F.cross_entropy(logits, targets, reduction='sum').double().item() / len(targets)
    return {'top1': 100.0 * hits[:, 0].sum().item() / len(targets),
            'top5': 100.0 * hits.any(dim=1).sum().item() / len(targets), 'loss': loss}


class SyntheticStylized(StylizedImageNet):
    """Stylized-ImageNet's layout, labels and preprocessing, plus every image's texture class (``notes``)."""

    def prepare(self, data_dir: str | os.PathLike, label_space: LabelSpace,
                request: ValidationRequest | None = None) -> PreparedData:
        """The shape-labelled samples, and each one's texture class from the benchmark's texture-labelled copy."""
        prepared = super().prepare(data_dir, label_space, request)
        copies = Path(prepared.root).parent / TEXTURE_LABELLED
        folders = list_class_folders(copies) if copies.is_dir() else []
        if not folders:
            raise DatasetLayoutError(f'no texture-labelled copy of {prepared.root} at {copies} (<class>/<images>); '
                                     f'is {copies.parent} a synthetic benchmark folder?')
        try:
            copied = scan_class_folders(copies, label_space.class_to_index, folders)
        except ValueError as error:
            raise DatasetLayoutError(str(error)) from None
        texture_of = {os.path.basename(path): target for path, target in copied}
        names = {os.path.basename(path) for path, _ in prepared.samples}
        if len(texture_of) != len(copied) or set(texture_of) != names or len(names) != len(prepared.samples):
            unpaired = sorted(names ^ set(texture_of))
            example = unpaired[0] if unpaired else 'a file name used twice'
            raise DatasetLayoutError(
                f'the {len(prepared.samples)} stylized images under {prepared.root} and the {len(copied)} under '
                f'{copies} do not pair up one to one by file name (e.g. {example}); regenerate the benchmark')
        prepared.notes['texture_targets'] = [texture_of[os.path.basename(path)] for path, _ in prepared.samples]
        prepared.notes['texture_labelled'] = str(copies)
        return prepared

    def score(self, context: EvaluationContext, prepared: PreparedData) -> dict[str, Any]:
        """One pass; Stylized-ImageNet's entry against the shapes, the texture labels' numbers inside it."""
        preprocessing = context.preprocessing(self)
        _logger.info('%s: %d images from %s, preprocessing %s, scored against shape and texture labels', self.name,
                     len(prepared.samples), prepared.root, preprocessing)
        predictions = context.predict(prepared, preprocessing, self.name)
        scored = predictions.scored.bool()
        logits = predictions.outputs[scored]
        shapes = torch.tensor([target for _, target in prepared.samples], dtype=torch.long)[scored]
        textures = torch.tensor(prepared.notes['texture_targets'], dtype=torch.long)[scored]
        record = context.preprocessing_record(preprocessing)
        counts = {'num_samples': len(shapes), 'skipped_files': int(predictions.skipped_files)}
        entry = {**label_metrics(logits, shapes), **counts, 'preprocessing': record,
                 'elapsed_seconds': predictions.elapsed_seconds}
        entry[TEXTURE_LABELS_FIELD] = {**label_metrics(logits, textures), **counts, 'preprocessing': record,
                                       'same_pass_as': self.name, 'labels': prepared.notes['texture_labelled']}
        _logger.info('%s: top1 %s against the shape labels, %s against the texture labels, over %d images '
                     '(%d skipped files)', self.name, format_metric(entry['top1']),
                     format_metric(entry[TEXTURE_LABELS_FIELD]['top1']), counts['num_samples'],
                     counts['skipped_files'])
        return entry
