"""The 16-class task of model-vs-human: category lists, the mean-probability decision, file-name parsing of every
set (real file names from bethgelab/model-vs-human's raw-data and rgeirhos/texture-vs-shape's stimuli), the
metrics on hand-counted examples, and the sets' prepare()/results on tiny trees in the released layouts."""
from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from robustcnn.benchmarks.base import DatasetLayoutError
from robustcnn.benchmarks.model_vs_human import (CATEGORIES, CATEGORY_CLASS_INDICES, MODEL_VS_HUMAN_SETS,
                                                 PARAMETRIC_BENCHMARKS, SKETCH, STYLIZED, CueConflict, Edges,
                                                 Silhouettes, SixteenClassReduce, Trial, benchmark_means, consistency,
                                                 decide, human_likeness, read_human_trials, shape_bias_results,
                                                 sixteen_class_probabilities, sixteen_class_probabilities_numpy)
from robustcnn.benchmarks.model_vs_human.filenames import (canonical_condition, parse_cue_conflict_name,
                                                           parse_session_name, short_image_name, texture_category)
from robustcnn.benchmarks.model_vs_human.metrics import HumanDataError, per_condition_accuracy
from robustcnn.data.label_space import LabelSpace, imagenet_wnids

from dataset_trees import write_image

IMAGENET = LabelSpace.imagenet_1k()

# ------------------------------------------------------------------------------------------------ categories


def test_category_lists_match_model_vs_human():
    counts = {name: len(indices) for name, indices in CATEGORY_CLASS_INDICES.items()}
    assert counts == {'airplane': 1, 'bear': 4, 'bicycle': 2, 'bird': 49, 'boat': 5, 'bottle': 7, 'car': 3,
                      'cat': 6, 'chair': 4, 'clock': 3, 'dog': 109, 'elephant': 2, 'keyboard': 2, 'knife': 1,
                      'oven': 1, 'truck': 8}
    every = [index for indices in CATEGORY_CLASS_INDICES.values() for index in indices]
    assert len(every) == 207 and len(set(every)) == 207 and all(0 <= index < 1000 for index in every)
    assert CATEGORIES == tuple(sorted(CATEGORIES)) and len(CATEGORIES) == 16
    wnids = imagenet_wnids()
    # A few classes by wnid (human_categories.py's WNID sets): airliner, cleaver, rotisserie, hen, Mexican hairless
    assert [wnids[index] for index in CATEGORY_CLASS_INDICES['airplane']] == ['n02690373']
    assert [wnids[index] for index in CATEGORY_CLASS_INDICES['knife']] == ['n03041632']
    assert [wnids[index] for index in CATEGORY_CLASS_INDICES['oven']] == ['n04111531']
    assert wnids[CATEGORY_CLASS_INDICES['bird'][0]] == 'n01514859' and CATEGORY_CLASS_INDICES['bird'][0] == 8
    assert CATEGORY_CLASS_INDICES['dog'][-1] == 268 and wnids[268] == 'n02113978'
    for missing in (192, 204, 227, 242, 251, 258, 260, 264):  # dog breeds model-vs-human leaves out
        assert missing not in CATEGORY_CLASS_INDICES['dog']
    assert CATEGORY_CLASS_INDICES['truck'] == (555, 569, 656, 675, 717, 734, 864, 867)


def _softmax(logits: np.ndarray) -> np.ndarray:
    exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def test_decision_is_softmax_then_mean_not_sum():
    # Each of the 109 dog classes gets logit 2, the single knife class 4, everything else 0: the dog classes
    # together hold far more probability (sum wins 'dog'), but their mean is below the knife's (mean wins 'knife').
    logits = np.zeros((1, 1000))
    logits[0, list(CATEGORY_CLASS_INDICES['dog'])] = 2.0
    logits[0, CATEGORY_CLASS_INDICES['knife'][0]] = 4.0
    probabilities = _softmax(logits)
    dog = probabilities[0, list(CATEGORY_CLASS_INDICES['dog'])]
    knife = probabilities[0, CATEGORY_CLASS_INDICES['knife'][0]]
    assert dog.sum() > knife > dog.mean()
    scores = sixteen_class_probabilities(torch.tensor(logits, dtype=torch.float32))
    assert scores.dtype == torch.float32 and scores.shape == (1, 16)
    assert decide(scores.numpy()) == ['knife']
    assert scores[0, CATEGORIES.index('dog')].item() == pytest.approx(dog.mean(), rel=1e-5)
    assert scores[0, CATEGORIES.index('knife')].item() == pytest.approx(knife, rel=1e-5)
    np.testing.assert_allclose(sixteen_class_probabilities_numpy(probabilities), scores.numpy(), rtol=1e-5)


def test_reduce_on_low_precision_logits_and_bad_shapes():
    torch.manual_seed(0)
    logits = torch.randn(3, 1000)
    reduced = SixteenClassReduce()(logits.to(torch.bfloat16))
    assert reduced.dtype == torch.float32 and reduced.shape == (3, 16)
    np.testing.assert_allclose(reduced.numpy(), sixteen_class_probabilities(logits.to(torch.bfloat16).float()))
    with pytest.raises(ValueError, match=r'\[batch, 1000\]'):
        sixteen_class_probabilities(torch.zeros(2, 10))
    with pytest.raises(ValueError, match='1000 ImageNet probabilities'):
        sixteen_class_probabilities_numpy(np.zeros((2, 16)))


# ------------------------------------------------------------------------------------------------ file names


def test_cue_conflict_names_from_the_released_stimuli():
    # texture-vs-shape stimuli/style-transfer-preprocessed-512/airplane/...
    assert parse_cue_conflict_name('airplane', 'airplane1-bicycle2.png').texture == 'bicycle'
    conflict_free = parse_cue_conflict_name('airplane', 'airplane10-airplane1.png')
    assert conflict_free.shape == conflict_free.texture == 'airplane' and not conflict_free.has_conflict
    assert parse_cue_conflict_name('dog', 'dog10-bicycle1.png').has_conflict
    # model-vs-human's human trial names carry a prefix; the texture and the pairing id ignore it
    assert texture_category('0002_s5n_s01_0_bird_00_bird2-clock3.png') == 'clock'
    assert short_image_name('0002_s5n_s01_0_bird_00_bird2-clock3.png') == 'bird2-clock3.png'
    assert short_image_name('airplane1-bicycle2.png') == 'airplane1-bicycle2.png'
    with pytest.raises(ValueError, match="shape 'cat' but the file is in folder 'dog'"):
        parse_cue_conflict_name('dog', 'cat1-bird2.png')
    with pytest.raises(ValueError, match="'zebra' is not one of the 16"):
        parse_cue_conflict_name('dog', 'dog1-zebra2.png')
    with pytest.raises(ValueError, match='<shape><n>-<texture><m>'):
        parse_cue_conflict_name('dog', 'dog1.png')


# (set, real human-trial file name from model-vs-human raw-data/, condition as the set spells it, category, id)
SESSION_NAMES = [
    ('colour', '0001_cl_s01_cr_oven_40_n04111531_14126.png', 'cr', 'oven', 'n04111531_14126.png'),
    ('contrast', '0002_cop_s01_c100_bicycle_10_n03792782_5966.png', 'c100', 'bicycle', 'n03792782_5966.png'),
    ('high-pass', '0001_hp_s01_0.7_boat_10_n03662601_12531.png', '0.7', 'boat', 'n03662601_12531.png'),
    ('high-pass', '0001_hp_s01_1_boat_10_n03662601_12531.png', '1.0', 'boat', 'n03662601_12531.png'),
    ('high-pass', '0001_hp_s01_inf_boat_10_n03662601_12531.png', 'inf', 'boat', 'n03662601_12531.png'),
    ('low-pass', '0003_lp_s01_5_truck_10_n04467665_34253.png', '5', 'truck', 'n04467665_34253.png'),
    ('phase-scrambling', '0001_ps_s01_30_truck_10_n03417042_14861.png', '30', 'truck', 'n03417042_14861.png'),
    ('power-equalisation', '0002_pow_s01_pow_dog_35_n02091467_7264.png', 'pow', 'dog', 'n02091467_7264.png'),
    ('false-colour', '0001_fc_s01_true_knife_35_n03041632_86251.png', 'True', 'knife', 'n03041632_86251.png'),
    ('false-colour', '0002_fc_s01_false_car_35_n03100240_16866.png', 'False', 'car', 'n03100240_16866.png'),
    ('rotation', '0002_rot_s01_180_car_20_n02814533_29367.png', '180', 'car', 'n02814533_29367.png'),
    ('eidolonI', '0002_eid_s01_16-10-10_airplane_10_n02690373_4183.png', '16-10-10', 'airplane',
     'n02690373_4183.png'),
    ('eidolonII', '0001_eid_s01_64-3-10_car_10_n04285008_8113.png', '64-3-10', 'car', 'n04285008_8113.png'),
    ('eidolonIII', '0002_eid_s01_4-0-10_car_10_n03100240_5570.png', '4-0-10', 'car', 'n03100240_5570.png'),
    ('uniform-noise', '0002_nse_s01_0.90_knife_10_n03041632_82878.png', '0.9', 'knife', 'n03041632_82878.png'),
    # a model's file name from model-vs-human's uniform-noise download (dnn/session-1/)
    ('uniform-noise', '0571_nse_dnn_0.00_bicycle_10_n03792782_1418.png', '0.0', 'bicycle', 'n03792782_1418.png'),
    ('sketch', '0001_ske_s01_0_boat_00_boat-0068-sketch-23.png', None, 'boat', 'boat-0068-sketch-23.png'),
    ('stylized', '0001_sty_s01_0_bicycle_00_bicycle-0011-ILSVRC2012-val-00011821.png', None, 'bicycle',
     'bicycle-0011-ILSVRC2012-val-00011821.png'),
    ('edge', '0001_edg_s01_0_oven_00_oven10.png', None, 'oven', 'oven10.png'),
    ('silhouette', '0001_sif_s01_0_boat_00_boat5.png', None, 'boat', 'boat5.png'),
]


@pytest.mark.parametrize('set_name, file_name, condition, category, image_id', SESSION_NAMES)
def test_session_names_of_every_set(set_name, file_name, condition, category, image_id):
    spec = MODEL_VS_HUMAN_SETS[set_name]
    parsed = parse_session_name(file_name)
    assert parsed.category == category
    if condition is None:
        assert parsed.condition == '0' and not spec.conditions
    else:
        assert canonical_condition(parsed.condition, spec.conditions) == condition
    assert short_image_name(file_name) == image_id


def test_condition_matching_rejects_other_conditions():
    assert canonical_condition('0.25', MODEL_VS_HUMAN_SETS['uniform-noise'].conditions) is None
    assert canonical_condition('c20', MODEL_VS_HUMAN_SETS['contrast'].conditions) is None
    assert canonical_condition('0', MODEL_VS_HUMAN_SETS['power-equalisation'].conditions) == '0'
    with pytest.raises(ValueError, match="'zebra' is not one of the 16"):
        parse_session_name('0001_cl_dnn_cr_zebra_40_n04111531_14126.png')
    with pytest.raises(ValueError, match='file name'):
        parse_session_name('oven10.png')


def test_excluded_conditions_are_model_vs_humans():
    kept = {name: spec.kept_conditions for name, spec in MODEL_VS_HUMAN_SETS.items() if spec.conditions}
    assert kept['contrast'] == ('c50', 'c30', 'c15', 'c10', 'c05')
    assert kept['uniform-noise'] == ('0.03', '0.05', '0.1', '0.2', '0.35')
    assert kept['eidolonIII'] == ('2-0-10', '4-0-10', '8-0-10')
    assert kept['false-colour'] == ('False',) and kept['colour'] == ('bw',)
    for spec in MODEL_VS_HUMAN_SETS.values():
        assert set(spec.excluded_conditions) <= set(spec.conditions)
        assert len(spec.condition_labels) == len(spec.conditions)


# ------------------------------------------------------------------------------------------------ metrics


def test_shape_bias_counted_by_hand():
    shapes = ['cat', 'cat', 'cat', 'cat', 'dog', 'bear']
    textures = ['dog', 'dog', 'dog', 'cat', 'bird', 'car']
    decisions = ['cat', 'dog', 'car', 'cat', 'dog', 'knife']
    # conflict images: 5 (the cat/cat one is excluded); shape decisions 2 (cat, dog), texture 1 (dog for a cat)
    result = shape_bias_results(decisions, shapes, textures)
    assert result['shape_bias'] == pytest.approx(100 * 2 / 3)
    assert result['shape_match'] == pytest.approx(40.0) and result['texture_match'] == pytest.approx(20.0)
    assert (result['num_samples'], result['num_excluded'], result['num_trials']) == (5, 1, 6)
    assert result['shape_match_of_all_trials'] == pytest.approx(100 * 2 / 6)
    assert result['texture_match_of_all_trials'] == pytest.approx(100 * 1 / 6)
    assert result['per_category'] == {'bear': None, 'cat': pytest.approx(50.0), 'dog': pytest.approx(100.0)}
    # model-vs-human's 16-class accuracy on cue-conflict: decision == shape over all 6 trials (cat, cat, dog)
    assert result['ood_accuracy'] == pytest.approx(50.0)
    empty = shape_bias_results(['knife'], ['cat'], ['dog'])
    assert empty['shape_bias'] is None and empty['per_category'] == {'cat': None}


def test_consistency_by_hand():
    same = consistency([True, False, True], [True, False, True])
    assert same['error_consistency'] == 1.0 and same['accuracy_difference'] == 0.0
    chance = consistency([True, True, False, False], [True, False, False, True])
    assert chance['expected_consistency'] == pytest.approx(0.5) and chance['error_consistency'] == pytest.approx(0.0)
    # p1 = 3/4, p2 = 1/2: expected = 3/8 + 1/8 = 1/2; observed 3/4; kappa = (3/4 - 1/2) / (1/2) = 1/2
    some = consistency([True, True, True, False], [True, True, False, False])
    assert some['observed_consistency'] == pytest.approx(0.75) and some['error_consistency'] == pytest.approx(0.5)
    assert some['accuracy_difference'] == pytest.approx(0.0625)
    opposite = consistency([True, False], [False, True])
    assert opposite['error_consistency'] == pytest.approx(-1.0)


def write_raw_data(folder: Path, set_name: str, subject: str, rows: list[tuple[str, str, str, str]],
                   session_column: str = 'Session') -> Path:
    """model-vs-human raw-data CSV: rows of (object_response, category, condition, imagename)."""
    path = folder / set_name / f'{set_name}_{subject}_session_1.csv'
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'w', newline='') as handle:
        writer = csv.writer(handle)
        writer.writerow(['subj', session_column, 'trial', 'rt', 'object_response', 'category', 'condition',
                         'imagename'])
        for trial, (response, category, condition, image) in enumerate(rows, start=1):
            writer.writerow([subject, 1, trial, 0.8, response, category, condition, image])
    return path


def _noise_name(subject: str, trial: int, condition: str, category: str, image: str) -> str:
    return f'{trial:04d}_nse_{subject}_{condition}_{category}_10_{image}'


def test_human_likeness_per_subject_then_mean(tmp_path):
    spec = MODEL_VS_HUMAN_SETS['uniform-noise']
    images = ['n02504458_1.png', 'n02504458_2.png', 'n03041632_3.png', 'n03041632_4.png']
    categories = ['elephant', 'elephant', 'knife', 'knife']
    # condition 0.10 (kept) and 0.90 (excluded): same four pictures in each
    model_trials = [Trial(image, category, condition) for condition in ('0.1', '0.9')
                    for image, category in zip(images, categories)]
    model_decisions = ['elephant', 'elephant', 'knife', 'dog'] + ['dog'] * 4   # 0.1: T T T F ; 0.9: F F F F
    subject_one = ['elephant', 'elephant', 'dog', 'dog']                         # 0.1: T T F F
    subject_two = ['elephant', 'na', 'knife', 'dog']                             # 0.1: T F T F (na is wrong)
    for subject, responses in (('subject-01', subject_one), ('subject-02', subject_two)):
        rows = [(response, category, '0.10', _noise_name('s01', index, '0.10', category, image))
                for index, (response, category, image) in enumerate(zip(responses, categories, images))]
        rows += [('dog', category, '0.90', _noise_name('s01', 9 + index, '0.90', category, image))
                 for index, (category, image) in enumerate(zip(categories, images))]
        write_raw_data(tmp_path, 'uniform-noise', subject, rows)
    write_raw_data(tmp_path, 'uniform-noise', 'resnet50', [('knife', 'knife', '0.10', 'x_n03041632_3.png')])
    human = read_human_trials(tmp_path, spec)
    assert {trial.subject for trial in human} == {'subject-01', 'subject-02'} and len(human) == 16
    assert {trial.condition for trial in human} == {'0.1', '0.9'}
    result = human_likeness(model_trials, model_decisions, human, spec)
    # model vs subject-01 at 0.1: p1 = 3/4, p2 = 1/2 -> kappa 1/2 (see test_consistency_by_hand), diff 1/16
    # model vs subject-02 at 0.1: T T T F vs T F T F: p2 = 1/2, observed 3/4 -> kappa 1/2, diff 1/16
    assert result['error_consistency'] == pytest.approx(0.5)
    assert result['accuracy_difference'] == pytest.approx(0.0625)
    assert result['observed_consistency'] == pytest.approx(0.75)
    assert result['num_subjects'] == 2 and result['unpaired_trials'] == 0
    # 0.9 is excluded from the set's values but reported per condition: everyone wrong everywhere -> kappa 1
    assert result['per_condition']['0.9']['error_consistency'] == 1.0
    assert result['per_condition']['0.05']['error_consistency'] is None


def test_human_data_errors(tmp_path):
    spec = MODEL_VS_HUMAN_SETS['edge']
    with pytest.raises(HumanDataError, match='--human-data folder not found'):
        read_human_trials(tmp_path / 'nowhere', spec)
    (tmp_path / 'edge').mkdir()
    with pytest.raises(HumanDataError, match='no human .subject-.. trials for edge'):
        read_human_trials(tmp_path, spec)
    (tmp_path / 'edge' / 'broken.csv').write_text('subj,response\nsubject-01,cat\n')
    with pytest.raises(HumanDataError, match='no column.s. object_response, category, condition, imagename'):
        read_human_trials(tmp_path, spec)
    noise = MODEL_VS_HUMAN_SETS['uniform-noise']
    write_raw_data(tmp_path, 'uniform-noise', 'subject-01', [('cat', 'cat', '0.25', 'a_b_n02123045_1.png')])
    with pytest.raises(HumanDataError, match="condition '0.25' is not one of uniform-noise's"):
        read_human_trials(tmp_path, noise)


def test_per_condition_accuracy_in_experiment_order():
    trials = [Trial('a', 'cat', '0.1'), Trial('b', 'dog', '0.1'), Trial('c', 'dog', '0.9')]
    result = per_condition_accuracy(['cat', 'cat', 'dog'], trials, ('0.9', '0.1', '0.2'))
    assert list(result) == ['0.9', '0.1', '0.2']
    assert result == {'0.9': 100.0, '0.1': 50.0, '0.2': None}


# ------------------------------------------------------------------------------------------------ sets


def one_hot(categories: list[str]) -> np.ndarray:
    """16-class scores that decide each listed category."""
    scores = np.full((len(categories), 16), 0.01, dtype=np.float32)
    for row, category in enumerate(categories):
        scores[row, CATEGORIES.index(category)] = 0.5
    return scores


def build_cue_conflict_tree(root: Path, names: dict[str, list[str]]) -> Path:
    for folder, files in names.items():
        for file_name in files:
            write_image(root / folder / file_name, (10, 20, 30))
    return root


def test_cue_conflict_prepare_and_results(tmp_path):
    tree = build_cue_conflict_tree(tmp_path / 'texture-vs-shape' / 'style-transfer-preprocessed-512', {
        'cat': ['cat1-dog2.png', 'cat2-cat1.png', 'cat3-elephant1.png'],
        'dog': ['dog1-bird2.png'],
        'bear': ['bear1-car3.png'],
    })
    (tree / 'cat' / 'notes.txt').write_text('not an image')
    benchmark = CueConflict()
    assert benchmark.default_resize_mode == 'none'
    prepared = benchmark.prepare(tmp_path / 'texture-vs-shape', IMAGENET, SimpleNamespace(human_data=None))
    assert prepared.root == tree and len(prepared.samples) == 5
    assert [Path(path).name for path, _ in prepared.samples] == [
        'bear1-car3.png', 'cat1-dog2.png', 'cat2-cat1.png', 'cat3-elephant1.png', 'dog1-bird2.png']
    assert [label for _, label in prepared.samples] == [CATEGORIES.index(name)
                                                        for name in ('bear', 'cat', 'cat', 'cat', 'dog')]
    assert [trial.texture for trial in prepared.trials] == ['car', 'dog', 'cat', 'elephant', 'bird']
    # bear -> knife (neither), cat1-dog2 -> dog (texture), cat2-cat1 -> cat (excluded), cat3-elephant1 -> cat
    # (shape) but its file failed to decode, dog1-bird2 -> dog (shape)
    scores = one_hot(['knife', 'dog', 'cat', 'cat', 'dog'])
    entry = benchmark.results(prepared, scores, np.array([True, True, True, False, True]))
    assert entry['num_samples'] == 3 and entry['num_excluded'] == 1 and entry['num_trials'] == 4
    assert entry['shape_bias'] == pytest.approx(50.0)
    assert entry['shape_match'] == pytest.approx(100 / 3) and entry['texture_match'] == pytest.approx(100 / 3)
    assert entry['per_category'] == {'bear': None, 'cat': pytest.approx(0.0), 'dog': pytest.approx(100.0)}
    assert benchmark.summary(entry) == {'shape_bias': entry['shape_bias'], 'shape_match': entry['shape_match'],
                                        'texture_match': entry['texture_match']}


def test_cue_conflict_layout_errors(tmp_path):
    benchmark = CueConflict()
    build_cue_conflict_tree(tmp_path / 'wrong', {'zebra': ['zebra1-cat1.png']})
    with pytest.raises(DatasetLayoutError, match='zebra under .* are not among the 16 categories'):
        benchmark.prepare(tmp_path / 'wrong', IMAGENET)
    build_cue_conflict_tree(tmp_path / 'moved', {'dog': ['cat1-dog2.png']})
    with pytest.raises(DatasetLayoutError, match="Cue-conflict: dog/cat1-dog2.png: the name says shape 'cat'"):
        benchmark.prepare(tmp_path / 'moved', IMAGENET)
    (tmp_path / 'empty' / 'cat').mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match='no Cue-conflict images under'):
        benchmark.prepare(tmp_path / 'empty', IMAGENET)
    (tmp_path / 'sessions' / 'dnn' / 'session-1').mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match='session folders'):
        benchmark.prepare(tmp_path / 'sessions', IMAGENET)
    with pytest.raises(DatasetLayoutError, match='folder not found'):
        benchmark.prepare(tmp_path / 'nowhere', IMAGENET)
    other = LabelSpace(('a', 'b'), 'class map classes.txt')
    with pytest.raises(ValueError, match='maps ImageNet-1k outputs .* 2 classes from class map classes.txt'):
        benchmark.prepare(tmp_path / 'moved', other)


@pytest.mark.parametrize('benchmark, folder', [(Edges(), 'edges'), (Silhouettes(), 'filled-silhouettes')])
def test_edges_and_silhouettes(tmp_path, benchmark, folder):
    for category, number in (('oven', 10), ('oven', 2), ('boat', 5)):
        write_image(tmp_path / 'stimuli' / folder / category / f'{category}{number}.png', (0, 0, 0))
    prepared = benchmark.prepare(tmp_path / 'stimuli', IMAGENET)
    assert [trial.image_id for trial in prepared.trials] == ['boat5.png', 'oven10.png', 'oven2.png']
    entry = benchmark.results(prepared, one_hot(['boat', 'oven', 'clock']))
    assert entry['top1'] == pytest.approx(200 / 3) and entry['num_samples'] == 3
    assert benchmark.summary(entry) == {'top1': entry['top1']} and benchmark.default_resize_mode == 'none'


def build_session_tree(root: Path, names: list[str], session: str = 'session-1') -> Path:
    for file_name in names:
        write_image(root / 'dnn' / session / file_name, (0, 0, 0))
    return root


def test_parametric_set_prepare_results_and_human_likeness(tmp_path):
    benchmark = next(item for item in PARAMETRIC_BENCHMARKS if item.name == 'uniform-noise')
    images = ['n02504458_1.png', 'n03041632_3.png']
    names = [_noise_name('dnn', 1, '0.10', 'elephant', images[0]), _noise_name('dnn', 2, '0.10', 'knife', images[1]),
             _noise_name('dnn', 3, '0.90', 'elephant', images[0]), _noise_name('dnn', 4, '0.00', 'knife', images[1])]
    build_session_tree(tmp_path / 'uniform-noise', names)
    rows = [('elephant', 'elephant', '0.10', _noise_name('s01', 1, '0.10', 'elephant', images[0])),
            ('elephant', 'knife', '0.10', _noise_name('s01', 2, '0.10', 'knife', images[1]))]
    write_raw_data(tmp_path / 'raw-data', 'uniform-noise', 'subject-01', rows)
    prepared = benchmark.prepare(tmp_path / 'uniform-noise', IMAGENET,
                                 SimpleNamespace(human_data=str(tmp_path / 'raw-data')))
    assert [trial.condition for trial in prepared.trials] == ['0.1', '0.1', '0.9', '0.0']
    entry = benchmark.results(prepared, one_hot(['elephant', 'knife', 'elephant', 'dog']))
    assert entry['top1'] == pytest.approx(75.0) and entry['num_samples'] == 4
    assert entry['ood_accuracy'] == pytest.approx(100.0)  # 0.0 and 0.9 are excluded conditions
    assert entry['per_condition']['0.1'] == 100.0 and entry['per_condition']['0.0'] == 0.0
    assert entry['per_condition']['0.05'] is None and entry['excluded_conditions'] == ['0.0', '0.6', '0.9']
    # model right on both at 0.1, the human on one: observed 1/2, p = 1 and 1/2 -> expected 1/2, kappa 0
    likeness = entry['human_likeness']
    assert likeness['observed_consistency'] == pytest.approx(0.5) and likeness['error_consistency'] == 0.0
    assert likeness['accuracy_difference'] == pytest.approx(0.25)
    # the human saw nothing at 0.9 and 0.0: the model's trials there are unpaired (counted, not scored)
    assert likeness['unpaired_trials'] == 2


def test_session_set_layout_errors(tmp_path):
    benchmark = next(item for item in PARAMETRIC_BENCHMARKS if item.name == 'contrast')
    build_session_tree(tmp_path / 'contrast', ['0001_cop_dnn_c20_knife_10_n03041632_7380.png'])
    with pytest.raises(DatasetLayoutError, match="condition 'c20' is not one of contrast's"):
        benchmark.prepare(tmp_path / 'contrast', IMAGENET)
    write_image(tmp_path / 'classes' / 'knife' / 'knife1.png', (0, 0, 0))
    with pytest.raises(DatasetLayoutError, match="not model-vs-human's dnn/ folder"):
        benchmark.prepare(tmp_path / 'classes', IMAGENET)
    assert SKETCH.name == 'mvh-sketch' and STYLIZED.name == 'mvh-stylized'
    build_session_tree(tmp_path / 'sketch', ['0001_ske_dnn_0_boat_00_boat-0068-sketch-23.png'])
    prepared = SKETCH.prepare(tmp_path / 'sketch' / 'dnn', IMAGENET)
    assert prepared.trials == [Trial('boat-0068-sketch-23.png', 'boat', None)]
    entry = SKETCH.results(prepared, one_hot(['boat']))
    assert entry['top1'] == 100.0 and entry['ood_accuracy'] == 100.0 and 'per_condition' not in entry


class FakeContext:
    """What score() may use of EvaluationContext; predict runs the reduce on given logits like the runner does."""

    def __init__(self, logits: torch.Tensor, scored: list[bool]) -> None:
        self.logits, self.scored, self.calls = logits, scored, []

    def preprocessing(self, benchmark):
        return ('preprocessing for', benchmark.name, benchmark.default_resize_mode)

    def preprocessing_record(self, preprocessing):
        return {'record': list(preprocessing)}

    def predict(self, prepared, preprocessing, description, reduce=None):
        self.calls.append((description, preprocessing, repr(reduce)))
        outputs = reduce(self.logits) if reduce is not None else self.logits
        return SimpleNamespace(outputs=outputs.float().cpu(), scored=torch.tensor(self.scored),
                               skipped_files=[path for (path, _), kept in zip(prepared.samples, self.scored)
                                              if not kept], elapsed_seconds=1.5)


def test_score_predicts_sixteen_class_probabilities(tmp_path):
    write_image(tmp_path / 'edges' / 'knife' / 'knife1.png', (0, 0, 0))
    write_image(tmp_path / 'edges' / 'oven' / 'oven1.png', (0, 0, 0))
    write_image(tmp_path / 'edges' / 'oven' / 'oven2.png', (0, 0, 0))
    benchmark = Edges()
    prepared = benchmark.prepare(tmp_path, IMAGENET)
    logits = torch.zeros(3, 1000)
    logits[0, CATEGORY_CLASS_INDICES['knife'][0]] = 5.0   # knife1 -> knife (right)
    logits[1, CATEGORY_CLASS_INDICES['car'][0]] = 5.0     # oven1 -> car (wrong)
    logits[2, CATEGORY_CLASS_INDICES['oven'][0]] = 5.0    # oven2: failed to decode
    context = FakeContext(logits, [True, True, False])
    entry = benchmark.score(context, prepared)
    assert entry['top1'] == pytest.approx(50.0) and entry['num_samples'] == 2 and entry['skipped_files'] == 1
    assert entry['preprocessing'] == {'record': ['preprocessing for', 'edges', 'none']}
    assert entry['elapsed_seconds'] == 1.5
    assert context.calls == [('edges', ('preprocessing for', 'edges', 'none'), repr(SixteenClassReduce()))]


def test_cue_conflict_with_human_data_reports_both(tmp_path):
    tree = build_cue_conflict_tree(tmp_path / 'cue-conflict', {'cat': ['cat1-dog2.png', 'cat2-cat1.png'],
                                                              'dog': ['dog1-bird2.png']})
    rows = {'subject-01': ['cat', 'cat', 'bird'], 'subject-02': ['dog', 'cat', 'dog']}
    for subject, responses in rows.items():
        write_raw_data(tmp_path / 'raw-data', 'cue-conflict', subject, [
            (responses[0], 'cat', '0', f'0001_s5n_{subject[-2:]}_0_cat_00_cat1-dog2.png'),
            (responses[1], 'cat', '0', f'0002_s5n_{subject[-2:]}_0_cat_00_cat2-cat1.png'),
            (responses[2], 'dog', '0', f'0003_s5n_{subject[-2:]}_0_dog_00_dog1-bird2.png'),
        ], session_column='session')
    prepared = CueConflict().prepare(tree, IMAGENET, SimpleNamespace(human_data=tmp_path / 'raw-data'))
    entry = CueConflict().results(prepared, one_hot(['cat', 'cat', 'dog']))  # all shape / correct
    # humans pooled over the two conflict images each: shape cat (s01), dog (s02 for dog1); texture dog (s02 for
    # cat1), bird (s01 for dog1) -> 2 shape, 2 texture
    assert entry['humans']['shape_bias'] == pytest.approx(50.0) and entry['humans']['num_trials'] == 6
    assert entry['humans']['per_category'] == {'cat': pytest.approx(50.0), 'dog': pytest.approx(50.0)}
    # consistency on all three trials (shape category counts as right): model T T T; s01 T T F; s02 F T T
    likeness = entry['human_likeness']
    assert likeness['observed_consistency'] == pytest.approx(2 / 3)
    assert likeness['accuracy_difference'] == pytest.approx((1 - 2 / 3) ** 2)
    # expected = 1 * 2/3 = 2/3 = observed -> kappa 0 against each subject
    assert likeness['error_consistency'] == pytest.approx(0.0)
    assert 'per_condition' not in likeness


def test_benchmark_means_over_the_seventeen_sets():
    likeness = {'edge': (0.01, 0.6, 0.2), 'colour': (0.03, 0.8, 0.4)}
    entries = {name: {'ood_accuracy': value} for name, value in (('edge', 50.0), ('cue-conflict', 20.0),
                                                                 ('colour', 80.0), ('sketch', None))}
    for name, values in likeness.items():
        entries[name]['human_likeness'] = dict(zip(('accuracy_difference', 'observed_consistency',
                                                    'error_consistency'), values))
    entries['cue-conflict']['human_likeness'] = {'accuracy_difference': None, 'observed_consistency': None,
                                                 'error_consistency': None}  # no trial paired with a human's
    entries['my-own-set'] = {'ood_accuracy': 99.0}  # not one of the 17: never averaged
    result = benchmark_means(entries)
    # each set weighs the same; percent like the sets' ood_accuracy; sketch has no score and counts as missing
    assert result['ood_accuracy'] == pytest.approx((50 + 20 + 80) / 3) and result['num_sets'] == 3
    assert result['sets'] == ['edge', 'cue-conflict', 'colour']  # model-vs-human's order
    assert len(result['missing_sets']) == 14 and 'sketch' in result['missing_sets']
    humans = result['human_likeness']
    assert humans['num_sets'] == 2 and humans['sets'] == ['edge', 'colour']
    assert humans['error_consistency'] == pytest.approx(0.3) and humans['accuracy_difference'] == pytest.approx(0.02)
    assert humans['observed_consistency'] == pytest.approx(0.7)
    assert 'human_likeness' not in benchmark_means({'edge': {'ood_accuracy': 50.0}})


def test_one_summary_hook_for_the_family_over_the_sets_of_the_run():
    """The runner asks any set of the family once; the entries come by dataset name (edges, mvh-sketch, ...)."""
    results = {'imagenet': {'top1': 70.0}, 'edges': {'top1': 40.0, 'ood_accuracy': 40.0},
               'mvh-sketch': {'top1': 60.0, 'ood_accuracy': 60.0},
               'uniform-noise': {'top1': 10.0, 'ood_accuracy': 30.0}}
    keys = {benchmark.suite_summary_key for benchmark in (Edges(), CueConflict(), SKETCH, STYLIZED,
                                                          *PARAMETRIC_BENCHMARKS)}
    assert keys == {'model-vs-human'}
    summary = PARAMETRIC_BENCHMARKS[0].suite_summary(results)
    assert summary == Edges().suite_summary(results)  # whichever set is asked
    assert summary['ood_accuracy'] == pytest.approx((40 + 60 + 30) / 3)  # uniform-noise: ood_accuracy, not top1
    assert summary['sets'] == ['edge', 'uniform-noise', 'sketch'] and summary['num_sets'] == 3
    assert Edges().suite_summary({'imagenet': {'top1': 70.0}}) is None
    assert Edges().suite_summary({'edges': {'top1': None, 'ood_accuracy': None}}) is None  # nothing scored
    lines = '\n'.join(Edges().suite_summary_details(summary))
    assert '## model-vs-human benchmark means (over 3 of its 17 sets)' in lines
    assert '| 43.33 | – | – | – |' in lines and 'over edge, uniform-noise, sketch.' in lines
    assert 'Not in this run: silhouette, cue-conflict, colour' in lines and 'not comparable' in lines
    complete = benchmark_means({name: {'ood_accuracy': 50.0} for name in MODEL_VS_HUMAN_SETS})
    assert 'All 17 sets: comparable' in '\n'.join(Edges().suite_summary_details(complete))
