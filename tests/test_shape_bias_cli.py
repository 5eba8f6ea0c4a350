"""validate.py end to end on the shape-bias and model-vs-human sets: tiny trees in the released layouts, the colour
model of dataset_trees (its logits are -|k - coded class|), and every expected number computed here from the
model's logits with the test's own softmax, 16-category mean and counting."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from dataset_trees import build_wnid_tree, class_color, register_color_model, save_color_checkpoint, write_image
from robustcnn.benchmarks.model_vs_human import CATEGORIES, CATEGORY_CLASS_INDICES
from robustcnn.benchmarks.model_vs_human.figure import draw_shape_bias
from robustcnn.benchmarks.runner import ValidationRequest, find_suite_datasets, infer_dataset, run_validation
from robustcnn.engine.runtime import init_runtime
from robustcnn.report import results_to_csv, results_to_markdown

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # validate.py is a script at the repository root
import validate  # noqa: E402
MODEL = register_color_model()

# A representative ImageNet class per category (its first), and code 274 (a wild dog, in no category): nearer the
# 6 cat classes in mean probability, nearer the 109 dog classes in summed probability.
CODE = {category: CATEGORY_CLASS_INDICES[category][0] for category in CATEGORIES}
MEAN_VS_SUM_CODE = 274


def category_scores(code: int, aggregate: str = 'mean') -> np.ndarray:
    """The colour model's 16 category scores for an image coded ``code``: softmax over 1000 logits, then the mean
    (model-vs-human) or the sum (the aggregation it rejects) of each category's class probabilities."""
    logits = -np.abs(np.arange(1000, dtype=np.float64) - code)
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    reduce = np.mean if aggregate == 'mean' else np.sum
    return np.array([reduce(probabilities[list(CATEGORY_CLASS_INDICES[name])]) for name in CATEGORIES])


def decision(code: int, aggregate: str = 'mean') -> str:
    return CATEGORIES[int(np.argmax(category_scores(code, aggregate)))]


def test_the_codes_decide_as_the_tests_assume() -> None:
    assert all(decision(code) == category for category, code in CODE.items())
    assert decision(MEAN_VS_SUM_CODE, 'mean') == 'cat' and decision(MEAN_VS_SUM_CODE, 'sum') == 'dog'


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_color_checkpoint(tmp_path_factory.mktemp('ckpt') / 'color.pth')


def request(data_dir: Path, checkpoint: Path, **options) -> ValidationRequest:
    return ValidationRequest(data_dir=str(data_dir), model=MODEL, checkpoint=str(checkpoint), workers=0,
                             batch_size=3, log_freq=0, **options)


# (shape folder, file name, coded class): shape = texture in cat3-cat1 (no conflict: left out); knife's only image
# is decided 'truck', neither its shape nor its texture (knife has no decision: null); cat4-bird1's code is 'cat'
# by mean probability but 'dog' (neither) by summed probability.
CUE_CONFLICT = [
    ('cat', 'cat1-dog1.png', CODE['cat']), ('cat', 'cat2-dog2.png', CODE['dog']),
    ('cat', 'cat3-cat1.png', CODE['dog']), ('cat', 'cat4-bird1.png', MEAN_VS_SUM_CODE),
    ('dog', 'dog1-bird2.png', CODE['bird']), ('dog', 'dog2-clock1.png', CODE['clock']),
    ('knife', 'knife1-oven1.png', CODE['truck']),
]


def build_cue_conflict(root: Path) -> Path:
    """texture-vs-shape's ``stimuli/style-transfer-preprocessed-512/<shape>/<shape><n>-<texture><m>.png``."""
    folder = root / 'style-transfer-preprocessed-512'
    for shape, name, code in CUE_CONFLICT:
        write_image(folder / shape / name, class_color(code))
    return folder


def expected_shape_bias(aggregate: str) -> dict:
    """Shape bias counted here: conflict images only, shape / (shape + texture) decisions, per shape category."""
    shape = texture = conflicts = 0
    per_category: dict[str, list[int]] = {}
    for folder, name, code in CUE_CONFLICT:
        texture_category = name.removesuffix('.png').split('-')[1].rstrip('0123456789')
        if texture_category == folder:
            continue
        conflicts += 1
        counts = per_category.setdefault(folder, [0, 0])
        decided = decision(code, aggregate)
        shape += decided == folder
        texture += decided == texture_category
        counts[0] += decided == folder
        counts[1] += decided == texture_category
    return {'shape_bias': 100 * shape / (shape + texture), 'shape_match': 100 * shape / conflicts,
            'texture_match': 100 * texture / conflicts, 'num_samples': conflicts,
            'num_excluded': len(CUE_CONFLICT) - conflicts,
            'shape_match_of_all_trials': 100 * shape / len(CUE_CONFLICT),
            'per_category': {category: 100 * counts[0] / sum(counts) if sum(counts) else None
                             for category, counts in per_category.items()}}


def test_cue_conflict_shape_bias_end_to_end(tmp_path: Path, checkpoint: Path) -> None:
    folder = build_cue_conflict(tmp_path / 'stimuli')
    payload = run_validation(request(folder, checkpoint, dataset='cue-conflict',
                                     results_file=str(tmp_path / 'r.md')), init_runtime('cpu'))
    entry = payload['results']['cue-conflict']
    expected = expected_shape_bias('mean')
    assert expected['shape_bias'] == pytest.approx(40.0)  # 2 shape (cat1, cat4), 3 texture decisions
    for name in ('shape_bias', 'shape_match', 'texture_match', 'shape_match_of_all_trials'):
        assert entry[name] == pytest.approx(expected[name]), name
    assert (entry['num_samples'], entry['num_excluded'], entry['skipped_files']) == (6, 1, 0)
    assert entry['per_category'] == pytest.approx(expected['per_category'])
    assert entry['per_category']['knife'] is None
    # summed probabilities would decide cat4-bird1 'dog' (neither): one shape decision fewer
    assert expected_shape_bias('sum')['shape_bias'] == pytest.approx(25.0) != entry['shape_bias']
    assert entry['preprocessing']['resize_mode'] == 'none'  # the stimuli go in as they are
    text = (tmp_path / 'r.md').read_text()
    assert '| Category | model |' in text and '| knife | – |' in text and '| cat | 66.67 |' in text
    assert '6 conflict images scored, 1 without a conflict' in text


def test_cue_conflict_from_the_command_line(tmp_path: Path, checkpoint: Path) -> None:
    """No --dataset: the folder's name says cue-conflict; --resize_mode overrides the set's default."""
    folder = build_cue_conflict(tmp_path / 'stimuli')
    results = tmp_path / 'r.json'
    argv = [str(folder), '--model', MODEL, '--checkpoint', str(checkpoint), '--workers', '0', '--resize_mode',
            'resize_center_crop', '--results-file', str(results), '--figure', str(tmp_path / 'f.png')]
    with pytest.raises(SystemExit) as exit_info:
        from robustcnn.cli import run_cli
        run_cli(validate.main, argv, prog='validate.py')
    assert exit_info.value.code == 0
    entry = json.loads(results.read_text())['results']['cue-conflict']
    assert entry['preprocessing']['resize_mode'] == 'resize_center_crop'
    assert entry['shape_bias'] == pytest.approx(expected_shape_bias('mean')['shape_bias'])
    assert (tmp_path / 'f.png').read_bytes()[:4] == b'\x89PNG'


@pytest.mark.parametrize('dataset, folder', [('edges', 'edges'), ('silhouettes', 'filled-silhouettes')])
def test_edges_and_silhouettes_top1(tmp_path: Path, checkpoint: Path, dataset: str, folder: str) -> None:
    # oven2's code is oven by mean probability and bottle by sum; boat1 is decided knife (wrong)
    images = [('oven', 'oven1.png', CODE['oven']), ('oven', 'oven2.png', 751), ('boat', 'boat1.png', CODE['knife'])]
    assert decision(751, 'mean') == 'oven' and decision(751, 'sum') == 'bottle'
    for category, name, code in images:
        write_image(tmp_path / 'stimuli' / folder / category / name, class_color(code))
    payload = run_validation(request(tmp_path / 'stimuli' / folder, checkpoint, dataset=dataset),
                             init_runtime('cpu'))
    right = sum(decision(code) == category for category, _, code in images)
    assert payload['results'][dataset]['top1'] == pytest.approx(100 * right / len(images)) == pytest.approx(200 / 3)
    assert payload['results'][dataset]['num_samples'] == 3


# uniform-noise, model-vs-human's download: (trial, condition as in the file name, category, image, coded class)
NOISE = [(1, '0.00', 'elephant', 'n02504458_1.png', CODE['elephant']),
         (2, '0.10', 'elephant', 'n02504458_2.png', CODE['elephant']),
         (3, '0.10', 'knife', 'n03041632_3.png', CODE['knife']),
         (4, '0.10', 'knife', 'n03041632_4.png', CODE['oven']),
         (5, '0.90', 'knife', 'n03041632_5.png', CODE['truck']),
         (6, '0.35', 'car', 'n02814533_6.png', CODE['car'])]
# human answers per subject for the trials at 0.10 and 0.35 (in NOISE order); 'na' counts as wrong
HUMANS = {'subject-01': {2: 'elephant', 3: 'oven', 4: 'oven', 6: 'car'},
          'subject-02': {2: 'elephant', 3: 'knife', 4: 'knife', 6: 'na'}}


def build_uniform_noise(root: Path) -> Path:
    for trial, condition, category, image, code in NOISE:
        write_image(root / 'uniform-noise' / 'dnn' / 'session-1' /
                    f'{trial:04d}_nse_dnn_{condition}_{category}_10_{image}', class_color(code))
    return root / 'uniform-noise'


def write_human_csv(raw_data: Path) -> None:
    """model-vs-human's raw-data/uniform-noise/<set>_<subject>_session_1.csv, plus a model's rows (ignored)."""
    folder = raw_data / 'uniform-noise'
    folder.mkdir(parents=True)
    trials = {trial: (condition, category, image) for trial, condition, category, image, _ in NOISE}
    for subject, answers in [*HUMANS.items(), ('resnet50', {2: 'dog'})]:
        with open(folder / f'uniform-noise_{subject}_session_1.csv', 'w', newline='') as handle:
            writer = csv.writer(handle)
            writer.writerow(['subj', 'Session', 'trial', 'rt', 'object_response', 'category', 'condition',
                             'imagename'])
            for trial, response in answers.items():
                condition, category, image = trials[trial]
                writer.writerow([subject, 1, trial, 0.9, response, category, condition,
                                 f'{trial:04d}_nse_s01_{condition}_{category}_10_{image}'])


def kappa(model: list[bool], human: list[bool]) -> tuple[float, float, float]:
    """(accuracy difference squared, observed consistency, Cohen's kappa) of two right/wrong sequences."""
    p_model, p_human = np.mean(model), np.mean(human)
    observed = float(np.mean([a == b for a, b in zip(model, human)]))
    expected = p_model * p_human + (1 - p_model) * (1 - p_human)
    return (p_model - p_human) ** 2, observed, 1.0 if observed == 1 else (observed - expected) / (1 - expected)


def test_parametric_set_per_condition_and_human_likeness(tmp_path: Path, checkpoint: Path) -> None:
    folder = build_uniform_noise(tmp_path / 'datasets')
    write_human_csv(tmp_path / 'raw-data')
    results = tmp_path / 'r.md'
    payload = run_validation(request(folder, checkpoint, dataset='uniform-noise', human_data=str(tmp_path / 'raw-data'),
                                     results_file=str(results)), init_runtime('cpu'))
    entry = payload['results']['uniform-noise']
    right = {trial: decision(code) == category for trial, _, category, _, code in NOISE}
    by_condition: dict[str, list[bool]] = {}
    for trial, condition, *_ in NOISE:
        by_condition.setdefault(str(float(condition)), []).append(right[trial])
    assert entry['per_condition']['0.1'] == pytest.approx(100 * np.mean(by_condition['0.1'])) == pytest.approx(200 / 3)
    assert entry['per_condition']['0.0'] == 100.0 and entry['per_condition']['0.9'] == 0.0
    assert entry['per_condition']['0.05'] is None
    # OOD accuracy: trials of the kept conditions pooled (0.0, 0.6 and 0.9 are model-vs-human's exclusions)
    kept = by_condition['0.1'] + by_condition['0.35']
    assert entry['ood_accuracy'] == pytest.approx(100 * np.mean(kept)) == pytest.approx(75.0)
    assert entry['top1'] == pytest.approx(100 * np.mean(list(right.values())))
    # human-likeness: per subject and kept condition, then the mean over conditions, then over subjects
    per_subject = []
    for answers in HUMANS.values():
        values = []
        for condition in ('0.10', '0.35'):
            trials = [trial for trial, cond, *_ in NOISE if cond == condition]
            categories = {trial: category for trial, _, category, _, _ in NOISE}
            values.append(kappa([right[trial] for trial in trials],
                                [answers[trial] == categories[trial] for trial in trials]))
        per_subject.append(np.mean(values, axis=0))
    difference, observed, error_consistency = np.mean(per_subject, axis=0)
    likeness = entry['human_likeness']
    assert likeness['error_consistency'] == pytest.approx(error_consistency) == pytest.approx(0.35)
    assert likeness['observed_consistency'] == pytest.approx(observed) == pytest.approx(7 / 12)
    assert likeness['accuracy_difference'] == pytest.approx(difference) == pytest.approx(11 / 36)
    assert likeness['num_subjects'] == 2 and likeness['unpaired_trials'] == 4  # 0.0 and 0.9: no human trials
    text = results.read_text()
    assert '| ood accuracy | accuracy difference | observed consistency | error consistency |' in text
    assert '| .1 | 0.1 | 66.67 | yes |' in text and '| .9 | 0.9 | 0.00 | no |' in text
    # the per-dataset table takes the nested human-likeness numbers from the set's summary()
    assert '| uniform-noise | 66.67 | – | – | – | – | – | 6 | 0 | 75.00 | 0.31 | 0.58 | 0.35 |' in text
    # model-vs-human's means over the one set that ran, saying so
    summary = payload['summaries']['model-vs-human']
    assert summary['ood_accuracy'] == pytest.approx(75.0) and summary['sets'] == ['uniform-noise']
    assert summary['human_likeness'] == {'accuracy_difference': pytest.approx(difference),
                                         'observed_consistency': pytest.approx(observed),
                                         'error_consistency': pytest.approx(error_consistency),
                                         'num_sets': 1, 'sets': ['uniform-noise']}
    assert '## model-vs-human benchmark means (over 1 of its 17 sets)' in text
    assert '| 75.00 | 0.306 | 0.583 | 0.350 |' in text and 'scored with --human-data: uniform-noise.' in text


def test_human_data_and_label_space_errors_are_one_line(tmp_path: Path, checkpoint: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    from robustcnn.cli import run_cli
    folder = build_uniform_noise(tmp_path / 'datasets')
    argv = [str(folder), '--dataset', 'uniform-noise', '--model', MODEL, '--workers', '0']
    with pytest.raises(SystemExit) as exit_info:
        run_cli(validate.main, argv + ['--checkpoint', str(checkpoint), '--human-data', str(tmp_path / 'none')],
                prog='validate.py')
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and '--human-data folder not found' in err
    own_classes = save_color_checkpoint(tmp_path / 'own.pth', num_classes=5, metadata={
        'model': MODEL, 'class_names': ['circle', 'square', 'star', 'triangle', 'wave'], 'num_classes': 5})
    with pytest.raises(SystemExit) as exit_info:
        run_cli(validate.main, argv + ['--checkpoint', str(own_classes)], prog='validate.py')
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert 'maps ImageNet-1k outputs to its 16 categories' in err and '5 classes' in err


def test_suite_finds_the_sets_and_keeps_sketch_and_stylized_apart(tmp_path: Path, checkpoint: Path) -> None:
    root = tmp_path / 'suite'
    build_cue_conflict(root)  # texture-vs-shape's folder name
    write_image(root / 'edges' / 'oven' / 'oven1.png', class_color(CODE['oven']))
    write_image(root / 'sketch' / 'dnn' / 'session-1' / '0001_ske_dnn_0_boat_00_boat-0068-sketch-23.png',
                class_color(CODE['boat']))  # model-vs-human's sketch, not ImageNet-Sketch
    build_wnid_tree(root / 'stylized', {3: [3]})  # Stylized-ImageNet, not model-vs-human's stylized
    found = find_suite_datasets(request(root, checkpoint, suite=True))
    assert found == {'stylized-imagenet': root / 'stylized', 'edges': root / 'edges',
                     'cue-conflict': root / 'style-transfer-preprocessed-512', 'mvh-sketch': root / 'sketch'}
    other = tmp_path / 'other'
    build_wnid_tree(other / 'sketch', {5: [5]})  # ImageNet-Sketch's own folder name and layout
    assert find_suite_datasets(request(other, checkpoint, suite=True)) == {'imagenet-sketch': other / 'sketch'}
    # without --dataset, one folder: the layout decides the same way
    assert infer_dataset(root / 'sketch')[0] == 'mvh-sketch' and infer_dataset(other / 'sketch')[0] == 'imagenet-sketch'
    assert infer_dataset(root / 'sketch' / 'dnn')[0] == 'mvh-sketch'
    assert infer_dataset(root / 'style-transfer-preprocessed-512')[0] == 'cue-conflict'
    results = tmp_path / 'suite.md'
    payload = run_validation(request(root, checkpoint, suite=True, results_file=str(results),
                                     figure=str(tmp_path / 'suite.png')), init_runtime('cpu'))
    assert payload['results']['mvh-sketch']['top1'] == 100.0 and payload['results']['edges']['top1'] == 100.0
    assert payload['results']['stylized-imagenet']['top1'] == 100.0
    text = results.read_text()
    assert '| cue-conflict |' in text and '| Cue-conflict↑ |' in text and '| Category | model |' in text
    assert (tmp_path / 'suite.png').read_bytes()[:4] == b'\x89PNG'


def test_suite_reports_model_vs_humans_means_over_the_sets_it_ran(tmp_path: Path, checkpoint: Path) -> None:
    root = tmp_path / 'suite'
    build_cue_conflict(root)
    edges = [('oven', 'oven1.png', CODE['oven']), ('boat', 'boat1.png', CODE['knife'])]
    for category, name, code in edges:
        write_image(root / 'edges' / category / name, class_color(code))
    build_uniform_noise(root)
    build_wnid_tree(root / 'stylized', {3: [3]})  # Stylized-ImageNet: not one of model-vs-human's sets
    results = tmp_path / 'suite.json'
    payload = run_validation(request(root, checkpoint, suite=True, results_file=str(results)), init_runtime('cpu'))
    # each set's OOD accuracy counted here, then their plain mean: cue-conflict: decision = shape category over all
    # its images (conflict-free ones too); edges: 16-class top-1; uniform-noise: the trials of its kept conditions
    cue_conflict = np.mean([decision(code) == shape for shape, _, code in CUE_CONFLICT])
    edge = np.mean([decision(code) == category for category, _, code in edges])
    noise = np.mean([decision(code) == category for _, condition, category, _, code in NOISE
                     if condition in ('0.10', '0.35')])
    assert (cue_conflict, edge, noise) == (pytest.approx(2 / 7), 0.5, 0.75)
    written = json.loads(results.read_text())
    assert list(written) == ['model', 'checkpoint', 'results', 'readme_row', 'summaries']
    summary = written['summaries']['model-vs-human']
    assert summary['ood_accuracy'] == pytest.approx(100 * (cue_conflict + edge + noise) / 3, abs=1e-4)
    assert summary['num_sets'] == 3 and summary['sets'] == ['edge', 'cue-conflict', 'uniform-noise']
    assert len(summary['missing_sets']) == 14 and 'human_likeness' not in summary
    text = results_to_markdown(payload)
    assert '## model-vs-human benchmark means (over 3 of its 17 sets)' in text
    assert f'| {100 * (cue_conflict + edge + noise) / 3:.2f} | – | – | – |' in text
    assert 'over edge, cue-conflict, uniform-noise.' in text and 'not comparable' in text
    assert 'model-vs-human' not in results_to_csv(payload)  # one row per dataset


def test_shape_bias_figure_draws_points_and_means() -> None:
    import matplotlib
    matplotlib.use('Agg', force=True)
    from matplotlib import pyplot as plt

    entry = {'shape_bias': 40.0, 'per_category': {'cat': 50.0, 'dog': 0.0, 'knife': None},
             'humans': {'shape_bias': 90.0, 'per_category': {'cat': 100.0, 'dog': 80.0, 'knife': 90.0}}}
    figure, axis = plt.subplots()
    draw_shape_bias(axis, entry, 'resnet')
    assert [label.get_text() for label in axis.get_yticklabels()] == list(CATEGORIES)
    humans, model = axis.collections
    rows = {name: row for row, name in enumerate(CATEGORIES)}
    assert model.get_offsets().tolist() == [[0.5, rows['cat']], [0.0, rows['dog']]]  # knife: no decision
    assert humans.get_offsets().tolist() == [[1.0, rows['cat']], [0.8, rows['dog']], [0.9, rows['knife']]]
    assert sorted(line.get_xdata()[0] for line in axis.lines) == [0.4, 0.9]
    assert {text.get_text() for text in axis.get_legend().get_texts()} >= {'resnet mean: 40.0%', 'humans mean: 90.0%'}
    plt.close(figure)
