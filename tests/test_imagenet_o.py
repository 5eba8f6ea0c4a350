"""ImageNet-O: AUPR/AUROC of the negative max softmax over the 200 ImageNet-O classes, anomalies positive."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dataset_trees import register_color_model, save_color_checkpoint, write_class_folder
from robustcnn.benchmarks import DatasetLayoutError
from robustcnn.benchmarks.imagenet_o import IMAGENET_O_WNIDS, ImageNetO, average_precision, roc_auc
from robustcnn.benchmarks.runner import ValidationRequest, run_validation
from robustcnn.data.label_space import LabelSpace, imagenet_wnids
from robustcnn.engine.runtime import init_runtime

MODEL = register_color_model()


def test_aupr_and_auroc_on_a_hand_worked_example_with_a_tie() -> None:
    positives = [True, False, True, True, False]
    scores = [0.9, 0.8, 0.8, 0.3, 0.1]
    # thresholds 0.9 / 0.8 / 0.3: precision 1, 2/3, 3/4 at recall 1/3, 2/3, 1 -> (1 + 2/3 + 3/4) / 3 = 29/36
    assert average_precision(positives, scores) == pytest.approx(29 / 36)
    # pairs won by the positives: 2 + (0.5 + 1) + 1 of 6 (the 0.8 tie counts one half)
    assert roc_auc(positives, scores) == pytest.approx(4.5 / 6)
    metrics = pytest.importorskip('sklearn.metrics')
    assert average_precision(positives, scores) == pytest.approx(metrics.average_precision_score(positives, scores))
    assert roc_auc(positives, scores) == pytest.approx(metrics.roc_auc_score(positives, scores))
    generator = np.random.default_rng(0)
    for _ in range(50):  # where scikit-learn is installed: tie-heavy random cases agree with it exactly
        labels = generator.random(30) < 0.4
        values = np.round(generator.normal(size=30), 1)
        if labels.any() and not labels.all():
            assert average_precision(labels, values) == pytest.approx(metrics.average_precision_score(labels, values))
            assert roc_auc(labels, values) == pytest.approx(metrics.roc_auc_score(labels, values))


def test_the_200_classes() -> None:
    assert len(IMAGENET_O_WNIDS) == len(set(IMAGENET_O_WNIDS)) == 200
    assert set(IMAGENET_O_WNIDS) <= set(imagenet_wnids()) and list(IMAGENET_O_WNIDS) == sorted(IMAGENET_O_WNIDS)


def _scores(codes: list[int]) -> list[float]:
    """The reference's rule, by hand: logits of the colour model over the 200 classes, softmax, minus its max."""
    wnids = imagenet_wnids()
    subset = np.array([wnids.index(name) for name in IMAGENET_O_WNIDS], dtype=np.float64)
    scores = []
    for code in codes:
        logits = -np.abs(subset - code)
        probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        scores.append(-float(probabilities.max()))
    return scores


def test_imagenet_o_against_val_of_the_same_classes(tmp_path: Path) -> None:
    wnids = imagenet_wnids()
    first, second = IMAGENET_O_WNIDS[0], IMAGENET_O_WNIDS[5]
    # codes chosen so that all scores differ by far more than float32 rounding, anomalies and val interleaved
    anomalies = {first: [300, 950], second: [602, 64]}
    in_distribution = {first: [77, 450, 800], second: [700, 120, 60]}
    for name, codes in anomalies.items():
        write_class_folder(tmp_path / 'imagenet-o' / name, codes)
    for name, codes in in_distribution.items():
        write_class_folder(tmp_path / 'imagenet' / 'val' / name, codes)
    outside = next(name for name in wnids if name not in IMAGENET_O_WNIDS)
    write_class_folder(tmp_path / 'imagenet' / 'val' / outside, [500, 501])  # not an ImageNet-O class: left out
    request = ValidationRequest(data_dir=str(tmp_path / 'imagenet-o'), dataset='imagenet-o', model=MODEL,
                                checkpoint=str(save_color_checkpoint(tmp_path / 'color.pth')), workers=0,
                                batch_size=3, log_freq=0, in_distribution=str(tmp_path / 'imagenet'))
    entry = run_validation(request, init_runtime('cpu'))['results']['imagenet-o']
    positive_scores = _scores([code for codes in anomalies.values() for code in codes])
    negative_scores = _scores([code for codes in in_distribution.values() for code in codes])
    everything = positive_scores + negative_scores
    assert min(np.diff(sorted(everything))) > 1e-5  # no ties: the rank formulas below are exact
    wins = sum(positive > negative for positive in positive_scores for negative in negative_scores)
    assert entry['auroc'] == pytest.approx(100.0 * wins / (len(positive_scores) * len(negative_scores)), abs=1e-4)
    ranked = sorted(everything, reverse=True)
    ranks = [ranked.index(score) + 1 for score in positive_scores]  # precision at each anomaly's rank
    precisions = [sum(other in positive_scores for other in ranked[:rank]) / rank for rank in ranks]
    assert entry['aupr'] == pytest.approx(100.0 * sum(precisions) / len(precisions), abs=1e-4)
    assert (entry['num_samples'], entry['num_in_distribution']) == (4, 6)
    assert 50 < entry['auroc'] < 100 and 50 < entry['aupr'] < 100  # a ranking that is neither perfect nor flipped


def test_in_distribution_is_required_and_must_hold_the_classes(tmp_path: Path) -> None:
    write_class_folder(tmp_path / 'imagenet-o' / IMAGENET_O_WNIDS[0], [1])
    write_class_folder(tmp_path / 'val' / IMAGENET_O_WNIDS[1], [1])
    with pytest.raises(DatasetLayoutError, match='give --in-distribution DIR'):
        ImageNetO().prepare(tmp_path / 'imagenet-o', LabelSpace.imagenet_1k())
    missing = ValidationRequest(data_dir=str(tmp_path / 'imagenet-o'), in_distribution=str(tmp_path / 'nowhere'))
    with pytest.raises(DatasetLayoutError, match='--in-distribution folder not found: .*nowhere'):
        ImageNetO().prepare(tmp_path / 'imagenet-o', LabelSpace.imagenet_1k(), missing)
    request = ValidationRequest(data_dir=str(tmp_path / 'imagenet-o'), in_distribution=str(tmp_path / 'val'))
    with pytest.raises(DatasetLayoutError, match=f'has no class folder.*{IMAGENET_O_WNIDS[0]} of ImageNet-O'):
        ImageNetO().prepare(tmp_path / 'imagenet-o', LabelSpace.imagenet_1k(), request)


def test_suite_uses_its_imagenet_folder_as_in_distribution(tmp_path: Path) -> None:
    write_class_folder(tmp_path / 'imagenet-o' / IMAGENET_O_WNIDS[0], [300, 64])
    write_class_folder(tmp_path / 'imagenet' / 'val' / IMAGENET_O_WNIDS[0], [1, 800])
    request = ValidationRequest(data_dir=str(tmp_path), suite=True, suite_datasets=['imagenet-o'], model=MODEL,
                                checkpoint=str(save_color_checkpoint(tmp_path / 'color.pth')), workers=0,
                                batch_size=3, log_freq=0)
    entry = run_validation(request, init_runtime('cpu'))['results']['imagenet-o']
    assert entry['in_distribution'] == str(tmp_path / 'imagenet' / 'val')
    assert (entry['num_samples'], entry['num_in_distribution']) == (2, 2)
    # scores -0.731, -0.999 (anomalies) against -1.0, -0.823: three of four pairs won
    assert entry['auroc'] == pytest.approx(75.0)


def test_command_line_without_in_distribution_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import validate
    from robustcnn.cli import run_cli
    write_class_folder(tmp_path / 'imagenet-o' / IMAGENET_O_WNIDS[0], [1])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(validate.main, [str(tmp_path / 'imagenet-o'), '--dataset', 'imagenet-o', '--model', MODEL,
                                '--checkpoint', str(save_color_checkpoint(tmp_path / 'color.pth'))],
                prog='validate.py')
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(error.splitlines()) == 1 and '--in-distribution DIR' in error
