"""ImageNet-O (Hendrycks et al., "Natural Adversarial Examples", CVPR 2021): 2,000 images of classes outside
ImageNet-1k that ImageNet models confidently take for one of 200 ImageNet classes; an out-of-distribution detection
benchmark scored against ImageNet val.

Layout: ``<root>/<wnid>/<image>.jpg`` (200 wnid folders, the class the images are mistaken for), and the
in-distribution set: ImageNet val (``--in-distribution DIR``, ``<wnid>/`` or ``val/<wnid>/``; in ``--suite`` the
ImageNet folder the suite found).

Protocol, as hendrycks/natural-adv-examples' ``eval_many_models.py`` scores it: the logits restricted to the 200
ImageNet-O classes (in ImageNet order) before the softmax; the in-distribution images are the ImageNet val images of
the classes that have an ImageNet-O folder; the anomaly score is the negative maximum softmax probability; the
ImageNet-O images are the positives. ``aupr`` is sklearn's ``average_precision_score`` and ``auroc`` its
``roc_auc_score`` (the reference's ``calibration_tools.get_measures``), in percent. Both are computed here (see
:func:`average_precision`, :func:`roc_auc`) rather than through scikit-learn, a large dependency for two sums.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch

from ..data.folder import list_class_folders, scan_class_folders
from ..data.label_space import LabelSpace
from .base import ClassFolderBenchmark, DatasetLayoutError, PreparedData, format_metric, normalized_name
from .imagenet import ImageNet

if TYPE_CHECKING:
    from .context import EvaluationContext
    from .runner import ValidationRequest

__all__ = ['ImageNetO', 'IMAGENET_O_WNIDS', 'average_precision', 'roc_auc']

_logger = logging.getLogger(__name__)

# The 200 classes of ImageNet-O (``imagenet_o_wnids`` of eval_many_models.py), in ImageNet order.
IMAGENET_O_WNIDS: tuple[str, ...] = (
    'n01443537', 'n01704323', 'n01770081', 'n01784675', 'n01819313', 'n01820546', 'n01910747', 'n01917289', 'n01968897',
    'n02074367', 'n02317335', 'n02319095', 'n02395406', 'n02454379', 'n02606052', 'n02655020', 'n02666196', 'n02672831',
    'n02730930', 'n02777292', 'n02783161', 'n02786058', 'n02787622', 'n02791270', 'n02808304', 'n02817516', 'n02841315',
    'n02865351', 'n02877765', 'n02892767', 'n02906734', 'n02910353', 'n02916936', 'n02948072', 'n02965783', 'n03000134',
    'n03000684', 'n03017168', 'n03026506', 'n03032252', 'n03075370', 'n03109150', 'n03126707', 'n03134739', 'n03160309',
    'n03196217', 'n03207743', 'n03218198', 'n03223299', 'n03240683', 'n03271574', 'n03291819', 'n03297495', 'n03314780',
    'n03325584', 'n03344393', 'n03347037', 'n03372029', 'n03376595', 'n03388043', 'n03388183', 'n03400231', 'n03445777',
    'n03457902', 'n03467068', 'n03482405', 'n03483316', 'n03494278', 'n03530642', 'n03544143', 'n03584829', 'n03590841',
    'n03598930', 'n03602883', 'n03649909', 'n03661043', 'n03666591', 'n03676483', 'n03692522', 'n03706229', 'n03717622',
    'n03720891', 'n03721384', 'n03724870', 'n03729826', 'n03733131', 'n03733281', 'n03742115', 'n03786901', 'n03788365',
    'n03794056', 'n03804744', 'n03814639', 'n03814906', 'n03825788', 'n03840681', 'n03843555', 'n03854065', 'n03857828',
    'n03868863', 'n03874293', 'n03884397', 'n03891251', 'n03908714', 'n03920288', 'n03929660', 'n03930313', 'n03937543',
    'n03942813', 'n03944341', 'n03961711', 'n03970156', 'n03982430', 'n03991062', 'n03995372', 'n03998194', 'n04005630',
    'n04023962', 'n04033901', 'n04040759', 'n04067472', 'n04074963', 'n04116512', 'n04118776', 'n04125021', 'n04127249',
    'n04131690', 'n04141975', 'n04153751', 'n04154565', 'n04201297', 'n04204347', 'n04209133', 'n04209239', 'n04228054',
    'n04235860', 'n04243546', 'n04252077', 'n04254120', 'n04258138', 'n04265275', 'n04270147', 'n04275548', 'n04330267',
    'n04332243', 'n04336792', 'n04347754', 'n04371430', 'n04371774', 'n04372370', 'n04376876', 'n04409515', 'n04417672',
    'n04418357', 'n04423845', 'n04429376', 'n04435653', 'n04442312', 'n04482393', 'n04501370', 'n04507155', 'n04525305',
    'n04542943', 'n04554684', 'n04557648', 'n04562935', 'n04579432', 'n04591157', 'n04597913', 'n04599235', 'n06785654',
    'n06874185', 'n07615774', 'n07693725', 'n07695742', 'n07697537', 'n07711569', 'n07714990', 'n07715103', 'n07716358',
    'n07717410', 'n07718472', 'n07720875', 'n07742313', 'n07745940', 'n07747607', 'n07749582', 'n07753275', 'n07753592',
    'n07754684', 'n07768694', 'n07836838', 'n07871810', 'n07873807', 'n07880968', 'n09229709', 'n09472597', 'n12144580',
    'n12267677', 'n13052670',
)


def _ranked(positives: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true/false positives at each distinct score, highest first (a threshold per distinct score)."""
    order = np.argsort(-scores, kind='mergesort')
    scores, positives = scores[order], positives[order].astype(np.float64)
    last_of_each_score = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    true_positives = np.cumsum(positives)[last_of_each_score]
    false_positives = (last_of_each_score + 1) - true_positives
    return true_positives, false_positives


def average_precision(positives: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """sklearn's ``average_precision_score``: sum over thresholds of (recall gained) x precision, no interpolation;
    tied scores form one threshold."""
    positives, scores = np.asarray(positives, dtype=bool), np.asarray(scores, dtype=np.float64)
    if not positives.any():
        return float('nan')
    true_positives, false_positives = _ranked(positives, scores)
    precision = true_positives / (true_positives + false_positives)
    recall = true_positives / true_positives[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(positives: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """sklearn's ``roc_auc_score``: the trapezoidal area under (false positive rate, true positive rate) from (0, 0),
    a point per distinct score (so a tie between a positive and a negative counts one half)."""
    positives, scores = np.asarray(positives, dtype=bool), np.asarray(scores, dtype=np.float64)
    if positives.all() or not positives.any():
        return float('nan')
    true_positives, false_positives = _ranked(positives, scores)
    true_rate = np.r_[0.0, true_positives / true_positives[-1]]
    false_rate = np.r_[0.0, false_positives / false_positives[-1]]
    return float(np.sum(np.diff(false_rate) * (true_rate[1:] + true_rate[:-1]) / 2.0))


class ImageNetO(ClassFolderBenchmark):
    name = 'imagenet-o'
    title = 'ImageNet-O'
    description = ('out-of-distribution detection of 2,000 non-ImageNet images against ImageNet val (200 classes); '
                   'AUPR, higher is better')
    suite_folder_names = ('imagenet-o', 'imagenet_o', 'imageneto')
    headline_metric = 'aupr'
    subset_class_names = IMAGENET_O_WNIDS

    def in_distribution_folder(self, request: ValidationRequest | None) -> Path:
        """--in-distribution, else in --suite the ImageNet folder of the suite (named or found under its root)."""
        if request is not None and request.in_distribution:
            if not Path(request.in_distribution).is_dir():
                raise DatasetLayoutError(f'--in-distribution folder not found: {request.in_distribution} (give the '
                                         f'ImageNet val folder)')
            return Path(request.in_distribution)
        if request is not None and request.suite:
            if request.dataset_dirs.get('imagenet'):
                return Path(request.dataset_dirs['imagenet'])
            known = {normalized_name(name) for name in ImageNet.suite_folder_names}
            root = Path(request.data_dir)
            for child in sorted(root.iterdir()) if root.is_dir() else []:
                if child.is_dir() and normalized_name(child.name) in known:
                    return child
        raise DatasetLayoutError('ImageNet-O is scored against ImageNet val: give --in-distribution DIR (the '
                                 'ImageNet val folder; in --suite the ImageNet folder is used)')

    def prepare(self, data_dir: str | os.PathLike, label_space: LabelSpace,
                request: ValidationRequest | None = None) -> PreparedData:
        """ImageNet-O's 200 folders (the anomalies) then the ImageNet val images of the same classes."""
        out_data = super().prepare(data_dir, label_space, request)
        in_root = ImageNet().image_root(self.in_distribution_folder(request))
        folders = list_class_folders(out_data.root)
        available = set(list_class_folders(in_root))
        missing = [folder for folder in folders if folder not in available]
        if missing:
            raise DatasetLayoutError(
                f'in-distribution folder {in_root} has no class folder(s) {", ".join(missing[:5])}'
                f'{" ..." if len(missing) > 5 else ""} of ImageNet-O; give the ImageNet val folder')
        positions = {name: position for position, name in enumerate(IMAGENET_O_WNIDS)}
        try:
            in_samples = scan_class_folders(in_root, {folder: positions[folder] for folder in folders}, folders)
        except ValueError as error:
            raise DatasetLayoutError(str(error)) from None
        if not in_samples:
            raise DatasetLayoutError(f'no in-distribution images under {in_root}/<ImageNet-O class folders>')
        return PreparedData(
            benchmark=self.name, root=out_data.root, samples=out_data.samples + in_samples,
            label_subset=out_data.label_subset, label_space=label_space,
            notes={'num_anomalies': len(out_data.samples), 'in_distribution': str(in_root)})

    def score(self, context: EvaluationContext, prepared: PreparedData) -> dict[str, Any]:
        preprocessing = context.preprocessing(self)
        subset = torch.tensor(prepared.label_subset, dtype=torch.long)
        num_anomalies = prepared.notes['num_anomalies']
        _logger.info('%s: %d anomalies from %s against %d in-distribution images from %s, preprocessing %s',
                     self.name, num_anomalies, prepared.root, len(prepared.samples) - num_anomalies,
                     prepared.notes['in_distribution'], preprocessing)

        def negative_max_softmax(logits: torch.Tensor) -> torch.Tensor:
            restricted = logits[:, subset.to(logits.device)].float()
            return -torch.softmax(restricted, dim=1).amax(dim=1, keepdim=True)

        predictions = context.predict(prepared, preprocessing, self.name, reduce=negative_max_softmax)
        scored = predictions.scored.numpy()
        scores = predictions.outputs[:, 0].double().numpy()[scored]
        positives = (np.arange(len(prepared.samples)) < num_anomalies)[scored]
        entry = {
            'aupr': 100.0 * average_precision(positives, scores),
            'auroc': 100.0 * roc_auc(positives, scores),
            'num_samples': int(positives.sum()),
            'num_in_distribution': int((~positives).sum()),
            'skipped_files': predictions.skipped_files,
            'in_distribution': prepared.notes['in_distribution'],
            'preprocessing': context.preprocessing_record(preprocessing),
            'elapsed_seconds': predictions.elapsed_seconds,
        }
        _logger.info('%s: aupr %s auroc %s (%d anomalies, %d in-distribution images)', self.name,
                     format_metric(entry['aupr']), format_metric(entry['auroc']), entry['num_samples'],
                     entry['num_in_distribution'])
        return entry

    def summary(self, entry: Mapping[str, Any]) -> dict[str, float | None]:
        return {'aupr': entry.get('aupr'), 'auroc': entry.get('auroc')}
