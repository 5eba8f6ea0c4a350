"""ImageNet-C-bar and ImageNet-3DCC: ImageNet-C's module with their own corruption lists, scored on tiny trees."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from dataset_trees import build_imagenet_c_tree, register_color_model, save_color_checkpoint
from robustcnn.benchmarks import BENCHMARKS, SUITE_ORDER, DatasetLayoutError
from robustcnn.benchmarks.imagenet_3dcc import THREE_DCC_CORRUPTIONS
from robustcnn.benchmarks.imagenet_c_bar import C_BAR_CORRUPTIONS
from robustcnn.benchmarks.runner import ValidationRequest, infer_dataset, run_validation
from robustcnn.data.label_space import LabelSpace
from robustcnn.engine.runtime import init_runtime

MODEL = register_color_model()


def _contents(corruptions: tuple[str, ...]) -> tuple[dict, dict]:
    """Per folder two images of class 3; the first ``(position + severity) % 3`` of them miscoded."""
    contents, expected = {}, {}
    for position, corruption in enumerate(corruptions):
        for severity in range(1, 6):
            wrong = (position + severity) % 3
            codes = [5] * wrong + [3] * (3 - wrong)
            contents[(corruption, severity)] = {3: codes}
            expected.setdefault(corruption, {})[str(severity)] = 100.0 * wrong / 3
    return contents, expected


def _assert_errors(errors: dict, expected: dict) -> None:
    assert {name: set(by_severity) for name, by_severity in errors.items()} == {
        name: set(by_severity) for name, by_severity in expected.items()}
    for name, by_severity in expected.items():
        assert errors[name] == pytest.approx(by_severity), name


def _run(root: Path, dataset: str, tmp_path: Path, **options) -> dict:
    request = ValidationRequest(data_dir=str(root), dataset=dataset, model=MODEL,
                                checkpoint=str(save_color_checkpoint(tmp_path / 'color.pth')), workers=0,
                                batch_size=16, log_freq=0, **options)
    return run_validation(request, init_runtime('cpu'))


@pytest.mark.parametrize('dataset, corruptions', [('imagenet-c-bar', C_BAR_CORRUPTIONS),
                                                  ('imagenet-3dcc', THREE_DCC_CORRUPTIONS)])
def test_corruption_suite_errors_and_plain_mean(tmp_path: Path, dataset: str, corruptions: tuple[str, ...]) -> None:
    contents, expected = _contents(corruptions)
    root = build_imagenet_c_tree(tmp_path / dataset, contents)
    assert infer_dataset(root)[0] == dataset
    results = tmp_path / 'results.md'
    entry = _run(root, dataset, tmp_path, results_file=str(results))['results'][dataset]
    _assert_errors(entry['errors'], expected)
    assert list(entry['errors']) == list(corruptions)
    values = [value for by_severity in expected.values() for value in by_severity.values()]
    assert len(values) == 5 * len(corruptions)
    assert entry['mean_corruption_error'] == pytest.approx(sum(values) / len(values))
    assert entry['num_samples'] == 3 * len(values) and entry['partial'] is False
    assert 'mce' not in entry and 'relative_mce' not in entry  # no AlexNet baseline for these suites
    text = results.read_text()
    title = BENCHMARKS[dataset].title
    assert f'## {title} top-1 error (percent) by corruption and severity' in text
    assert f'| {corruptions[0]} | 33.33 | 66.67 | 0.00 | 33.33 | 66.67 | 40.00 |' in text


def test_c_bar_generator_layout_names_severities_by_parameter(tmp_path: Path) -> None:
    """make_imagenet_c_bar.py writes ``<corruption>/<parameter:.2f>``; severities come from the CSV order."""
    root = tmp_path / 'ImageNet-C-Bar'
    contents, expected = _contents(C_BAR_CORRUPTIONS)
    build_imagenet_c_tree(root, contents)
    renamed = {'blue_noise_sample': ('0.80', '1.60', '2.40', '4.00', '5.60'),
               'caustic_refraction': ('2.35', '3.20', '4.90', '6.60', '9.15')}
    for corruption, names in renamed.items():
        for severity, name in enumerate(names, start=1):
            (root / corruption / str(severity)).rename(root / corruption / name)
    entry = _run(root, 'imagenet-c-bar', tmp_path)['results']['imagenet-c-bar']
    _assert_errors(entry['errors'], expected)


def test_corruption_suite_missing_folders_one_line_or_partial(tmp_path: Path) -> None:
    contents, expected = _contents(THREE_DCC_CORRUPTIONS[:2])
    root = build_imagenet_c_tree(tmp_path / '3dcc', contents)
    benchmark = BENCHMARKS['imagenet-3dcc']
    with pytest.raises(DatasetLayoutError, match=r'ImageNet-3DCC under .* is missing 50 of 60 .*--allow-partial'):
        benchmark.prepare(root, LabelSpace.imagenet_1k())
    with pytest.raises(DatasetLayoutError, match='no ImageNet-3DCC folders under'):
        benchmark.prepare(tmp_path, LabelSpace.imagenet_1k())
    entry = _run(root, 'imagenet-3dcc', tmp_path, allow_partial=True, results_file=str(tmp_path / 'r.json'))
    entry = json.loads((tmp_path / 'r.json').read_text())['results']['imagenet-3dcc']
    values = [value for by_severity in expected.values() for value in by_severity.values()]
    assert entry['partial'] is True and len(entry['missing']) == 50
    assert entry['mean_corruption_error'] == pytest.approx(sum(values) / len(values), abs=1e-4)


def test_suites_list_the_new_sets_in_suite_order() -> None:
    assert SUITE_ORDER[-2:] == ('imagenet-c-bar', 'imagenet-3dcc') or {'imagenet-c-bar', 'imagenet-3dcc'} <= set(
        SUITE_ORDER)
    assert len(C_BAR_CORRUPTIONS) == 10 and len(THREE_DCC_CORRUPTIONS) == 12
