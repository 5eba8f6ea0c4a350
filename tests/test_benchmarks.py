"""Evaluation sets: label spaces, layouts, 200-class masks, and ImageNet-C's metrics against hand-computed values."""
from __future__ import annotations

from pathlib import Path

import pytest

from dataset_trees import build_imagenet_c_tree, build_wnid_tree, correct_tree, write_class_folder
from robustcnn.benchmarks import BENCHMARKS, DatasetLayoutError, get_benchmark
from robustcnn.benchmarks.imagenet_c import (ALEXNET_CLEAN_ERROR, ALEXNET_ERRORS, CORRUPTIONS, EXTRA_CORRUPTIONS,
                                             aggregate_corruption_errors)
from robustcnn.benchmarks.runner import ValidationRequest, infer_dataset
from robustcnn.data.label_space import (LabelSpace, imagenet_a_indices, imagenet_a_wnids, imagenet_r_indices,
                                        imagenet_r_wnids, imagenet_wnids, load_class_map)


def _timm_lines(name: str) -> list[str]:
    import timm.data
    return (Path(timm.data.__file__).parent / '_info' / name).read_text().split()


def test_imagenet_label_space_is_timms_synset_list() -> None:
    wnids = imagenet_wnids()
    assert len(wnids) == 1000 and wnids[0] == 'n01440764' and wnids[-1] == 'n15075141'
    assert list(wnids) == _timm_lines('imagenet_synsets.txt') == sorted(wnids)


def test_r_and_a_masks_equal_timms_lists() -> None:
    assert list(imagenet_r_indices()) == [int(line) for line in _timm_lines('imagenet_r_indices.txt')]
    assert list(imagenet_a_indices()) == [int(line) for line in _timm_lines('imagenet_a_indices.txt')]
    assert len(imagenet_r_indices()) == len(imagenet_a_indices()) == 200
    assert set(imagenet_r_indices()) != set(imagenet_a_indices())  # different subsets
    wnids = imagenet_wnids()
    assert [wnids[index] for index in imagenet_r_indices()] == list(imagenet_r_wnids())
    assert [wnids[index] for index in imagenet_a_indices()] == list(imagenet_a_wnids())
    space = LabelSpace.imagenet_1k()
    r_data = BENCHMARKS['imagenet-r']
    assert space.indices_of(r_data.subset_class_names, 'R') == list(imagenet_r_indices())


def test_partial_tree_labels_come_from_folder_names(tmp_path: Path) -> None:
    root = build_wnid_tree(tmp_path / 'val', correct_tree([3, 999, 500], per_class=1))
    prepared = get_benchmark('imagenet').prepare(tmp_path, LabelSpace.imagenet_1k())
    assert prepared.root == root  # val/ found under the dataset folder
    # enumerating the 3 folders present would give labels 0, 1, 2: the label space gives the real indices
    assert sorted(label for _, label in prepared.samples) == [3, 500, 999]


def test_imagenet_v2_integer_folders_are_class_indices(tmp_path: Path) -> None:
    # sorted as strings: '100' < '11' < '2'; the labels must be the integers themselves
    build_wnid_tree(tmp_path, {2: [2], 11: [11], 100: [100]}, folder_names='index')
    prepared = get_benchmark('imagenet-v2').prepare(tmp_path, LabelSpace.imagenet_1k())
    by_folder = {Path(path).parent.name: label for path, label in prepared.samples}
    assert by_folder == {'2': 2, '11': 11, '100': 100}
    # a model with its own class order: V2 folder -> ImageNet wnid -> that model's index
    wnids = imagenet_wnids()
    custom = LabelSpace((wnids[100], wnids[11], wnids[2]), 'test')
    prepared = get_benchmark('imagenet-v2').prepare(tmp_path, custom)
    assert {Path(path).parent.name: label for path, label in prepared.samples} == {'2': 2, '11': 1, '100': 0}


def test_imagenet_v2_rejects_wnid_folders(tmp_path: Path) -> None:
    build_wnid_tree(tmp_path, correct_tree([1], 1))
    with pytest.raises(DatasetLayoutError, match='0..999'):
        get_benchmark('imagenet-v2').prepare(tmp_path, LabelSpace.imagenet_1k())


def test_sketch_under_sketch_folder(tmp_path: Path) -> None:
    build_wnid_tree(tmp_path / 'sketch', correct_tree([7, 8], 2))
    prepared = get_benchmark('imagenet-sketch').prepare(tmp_path, LabelSpace.imagenet_1k())
    assert prepared.root == tmp_path / 'sketch' and len(prepared.samples) == 4
    assert infer_dataset(tmp_path) == ('imagenet-sketch', 'sketch/ sub-folder')


def test_imagenet_r_targets_are_positions_in_the_subset(tmp_path: Path) -> None:
    r_indices = imagenet_r_indices()
    build_wnid_tree(tmp_path, {r_indices[0]: [r_indices[0]], r_indices[150]: [r_indices[150]]})
    prepared = get_benchmark('imagenet-r').prepare(tmp_path, LabelSpace.imagenet_1k())
    assert sorted(label for _, label in prepared.samples) == [0, 150]
    assert prepared.label_subset == list(r_indices)


def test_imagenet_a_rejects_a_class_outside_its_200(tmp_path: Path) -> None:
    outside = next(index for index in range(1000) if index not in set(imagenet_a_indices()))
    build_wnid_tree(tmp_path, {outside: [outside]})
    with pytest.raises(DatasetLayoutError, match='not ImageNet-A classes'):
        get_benchmark('imagenet-a').prepare(tmp_path, LabelSpace.imagenet_1k())


def test_unknown_folder_is_named(tmp_path: Path) -> None:
    write_class_folder(tmp_path / 'n99999999', [1])
    with pytest.raises(DatasetLayoutError, match='n99999999'):
        get_benchmark('imagenet').prepare(tmp_path, LabelSpace.imagenet_1k())


def test_folder_dataset_sorted_or_class_map(tmp_path: Path) -> None:
    data = tmp_path / 'data'
    for name in ('zebra', 'apple', 'mango'):
        write_class_folder(data / name, [0])
    benchmark = get_benchmark('folder')
    space = benchmark.default_label_space(data)
    assert space.class_names == ('apple', 'mango', 'zebra')
    class_map = tmp_path / 'classes.txt'
    class_map.write_text('zebra\nmango\napple\nkiwi\n')
    mapped = benchmark.prepare(data, load_class_map(class_map))
    assert {Path(path).parent.name: label for path, label in mapped.samples} == {'zebra': 0, 'mango': 1, 'apple': 2}
    json_map = tmp_path / 'classes.json'
    json_map.write_text('{"apple": 1, "zebra": 0}')
    assert load_class_map(json_map).class_names == ('zebra', 'apple')


# AlexNet's errors as the issue (and Hendrycks & Dietterich's table) give them, transcribed independently.
ALEXNET_TEXT = """
gaussian_noise .69528 .82542 .93554 .98138 .99452; shot_noise .71224 .85108 .93574 .98182 .99146;
impulse_noise .78374 .89808 .94870 .98720 .99548; defocus_blur .65624 .73202 .85036 .91364 .94714;
glass_blur .64308 .75054 .88806 .91622 .93344; motion_blur .58430 .70048 .82108 .89750 .92638;
zoom_blur .70008 .76992 .80784 .84198 .87198; snow .71726 .88392 .86468 .91870 .94952;
frost .61390 .79734 .88790 .89942 .93430; fog .67474 .76050 .84378 .87260 .94500;
brightness .45140 .48502 .54048 .62166 .72440; contrast .64548 .76150 .88874 .97760 .99270;
elastic_transform .52596 .70116 .55686 .64076 .80554; pixelate .52218 .54620 .73728 .87092 .91262;
jpeg_compression .51002 .54718 .57294 .65458 .74778
"""


def test_alexnet_table_matches_the_imagenet_c_paper() -> None:
    assert CORRUPTIONS == ('gaussian_noise', 'shot_noise', 'impulse_noise', 'defocus_blur', 'glass_blur',
                           'motion_blur', 'zoom_blur', 'snow', 'frost', 'fog', 'brightness', 'contrast',
                           'elastic_transform', 'pixelate', 'jpeg_compression')
    transcribed = {}
    for entry in ALEXNET_TEXT.replace('\n', ' ').split(';'):
        name, *values = entry.split()
        transcribed[name] = tuple(float(value) for value in values)
    assert ALEXNET_ERRORS == transcribed
    assert list(ALEXNET_ERRORS) == list(CORRUPTIONS) and not set(EXTRA_CORRUPTIONS) & set(CORRUPTIONS)
    assert ALEXNET_CLEAN_ERROR == 0.435
    assert sum(sum(row) for row in ALEXNET_ERRORS.values()) == pytest.approx(59.17448, abs=1e-9)


def test_mce_of_alexnet_itself_is_100() -> None:
    errors = {name: {severity: 100 * value for severity, value in zip(range(1, 6), row)}
              for name, row in ALEXNET_ERRORS.items()}
    result = aggregate_corruption_errors(errors, clean_error=43.5)
    assert result['mce'] == pytest.approx(100.0)
    assert result['relative_mce'] == pytest.approx(100.0)
    assert result['mean_corruption_error'] == pytest.approx(100 * 59.17448 / 75)
    assert not result['partial'] and result['missing'] == []


def test_mce_hand_computed_on_a_partial_table() -> None:
    errors = {'gaussian_noise': {1: 50.0, 2: 50.0, 3: 50.0, 4: 50.0, 5: 50.0},
              'brightness': {1: 10.0, 2: 20.0, 3: 30.0, 4: 40.0, 5: 50.0},
              'speckle_noise': {1: 99.0}}  # an extra corruption never enters the aggregates
    result = aggregate_corruption_errors(errors, clean_error=20.0)
    # AlexNet sums by hand: gaussian 0.69528+0.82542+0.93554+0.98138+0.99452 = 4.43214,
    # brightness 0.45140+0.48502+0.54048+0.62166+0.72440 = 2.82296
    ce_gaussian = 2.5 / 4.43214 * 100        # 56.406...
    ce_brightness = 1.5 / 2.82296 * 100      # 53.135...
    assert result['corruption_errors']['gaussian_noise'] == pytest.approx(ce_gaussian)
    assert result['mce'] == pytest.approx((ce_gaussian + ce_brightness) / 2)
    assert result['mce'] == pytest.approx(54.7710, abs=1e-3)
    assert result['mean_corruption_error'] == pytest.approx(40.0)  # (5 * 50 + 150) / 10
    # relative: (sum E - 5 * 0.20) / (sum AlexNet - 5 * 0.435)
    relative_gaussian = (2.5 - 1.0) / (4.43214 - 2.175) * 100   # 66.456...
    relative_brightness = (1.5 - 1.0) / (2.82296 - 2.175) * 100  # 77.165...
    assert result['relative_mce'] == pytest.approx((relative_gaussian + relative_brightness) / 2)
    assert result['relative_mce'] == pytest.approx(71.8104, abs=1e-3)
    assert result['partial'] and len(result['missing']) == 65 and 'snow/3' in result['missing']
    assert aggregate_corruption_errors(errors)['relative_mce'] is None


def test_imagenet_c_one_dataset_grouped_by_folder(tmp_path: Path) -> None:
    contents = {(name, severity): correct_tree([severity], per_class=1) for name in CORRUPTIONS
                for severity in range(1, 6)}
    build_imagenet_c_tree(tmp_path, contents, category_level=True)  # the download's noise/, blur/ ... level
    prepared = get_benchmark('imagenet-c').prepare(tmp_path, LabelSpace.imagenet_1k())
    assert len(prepared.group_names) == 75 and prepared.group_names[0] == 'gaussian_noise/1'
    assert prepared.group_sizes == [1] * 75 and len(prepared.samples) == 75
    assert prepared.sample_groups == list(range(75))
    assert infer_dataset(tmp_path)[0] == 'imagenet-c'
    skipped = prepared.without_groups(['gaussian_noise/1', 'fog/5'])
    assert len(skipped.samples) == 73 and skipped.group_sizes[0] == 0 and skipped.group_names == prepared.group_names
    assert 0 not in skipped.sample_groups and len(skipped.sample_groups) == 73


def test_imagenet_c_missing_folders_listed_or_partial(tmp_path: Path) -> None:
    contents = {(name, severity): correct_tree([0], 1) for name in CORRUPTIONS for severity in range(1, 6)
                if not (name == 'snow' and severity in (2, 4)) and name != 'fog'}
    build_imagenet_c_tree(tmp_path, contents)
    with pytest.raises(DatasetLayoutError) as error:
        get_benchmark('imagenet-c').prepare(tmp_path, LabelSpace.imagenet_1k())
    message = str(error.value)
    assert 'snow/2' in message and 'snow/4' in message and 'fog/1' in message and '--allow-partial' in message
    prepared = get_benchmark('imagenet-c').prepare(tmp_path, LabelSpace.imagenet_1k(),
                                                   ValidationRequest(data_dir=str(tmp_path), allow_partial=True))
    assert len(prepared.group_names) == 68 and prepared.notes['missing_groups'][:2] == ['snow/2', 'snow/4']


def test_infer_dataset_from_names_and_layout(tmp_path: Path) -> None:
    build_wnid_tree(tmp_path / 'ImageNet-R', correct_tree([1], 1))
    build_wnid_tree(tmp_path / 'stylized_imagenet' / 'val', correct_tree([1], 1))
    build_wnid_tree(tmp_path / 'v2', {5: [5]}, folder_names='index')
    build_wnid_tree(tmp_path / 'whatever', correct_tree([1], 1))
    assert infer_dataset(tmp_path / 'ImageNet-R')[0] == 'imagenet-r'
    assert infer_dataset(tmp_path / 'stylized_imagenet' / 'val')[0] == 'stylized-imagenet'
    assert infer_dataset(tmp_path / 'v2')[0] == 'imagenet-v2'
    assert infer_dataset(tmp_path / 'whatever')[0] == 'imagenet'


def test_the_lazy_set_table_names_every_set_once_in_its_own_name():
    """validate.py takes --dataset choices from BENCHMARK_NAMES before torch loads; they must be the real sets."""
    import robustcnn.benchmarks as benchmarks

    assert tuple(benchmarks.BENCHMARKS) == benchmarks.BENCHMARK_NAMES
    assert all(benchmark.name == name for name, benchmark in benchmarks.BENCHMARKS.items())
    assert set(benchmarks.SUITE_ORDER) <= set(benchmarks.BENCHMARK_NAMES) and 'folder' not in benchmarks.SUITE_ORDER
