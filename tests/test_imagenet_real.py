"""ImageNet-ReaL: top-1 in each image's reassessed label set, images with an empty set left out of real_top1."""
from __future__ import annotations

import json
import pkgutil
from pathlib import Path

import pytest

from dataset_trees import class_color, register_color_model, save_color_checkpoint, write_image
from robustcnn.benchmarks import BENCHMARKS, DatasetLayoutError
from robustcnn.benchmarks.runner import ValidationRequest, run_validation
from robustcnn.data.label_space import LabelSpace, imagenet_wnids
from robustcnn.engine.runtime import init_runtime

MODEL = register_color_model()

# (val file number, folder class, class the picture shows, ReaL set)
IMAGES = [(1, 3, 3, [3]), (2, 3, 5, [5, 3]), (7, 7, 7, []), (11, 7, 9, [7]), (50000, 7, 2, [])]


def _tree(root: Path) -> Path:
    wnids = imagenet_wnids()
    for number, folder, code, _ in IMAGES:
        write_image(root / 'val' / wnids[folder] / f'ILSVRC2012_val_{number:08d}.JPEG', class_color(code))
    return root


def _real_json(path: Path) -> Path:
    labels: list[list[int]] = [[] for _ in range(50000)]
    for number, _, _, real in IMAGES:
        labels[number - 1] = real
    path.write_text(json.dumps(labels))
    return path


def _request(tmp_path: Path, **options) -> ValidationRequest:
    return ValidationRequest(data_dir=str(tmp_path / 'imagenet'), dataset='imagenet-real', model=MODEL,
                             checkpoint=str(save_color_checkpoint(tmp_path / 'color.pth')), workers=0, batch_size=2,
                             log_freq=0, **options)


def test_real_top1_over_non_empty_sets_and_original_top1_over_all(tmp_path: Path) -> None:
    _tree(tmp_path / 'imagenet')
    request = _request(tmp_path, real_labels=str(_real_json(tmp_path / 'real.json')),
                       results_file=str(tmp_path / 'results.md'))
    entry = run_validation(request, init_runtime('cpu'))['results']['imagenet-real']
    with_set = [(code, real) for _, _, code, real in IMAGES if real]
    assert entry['real_top1'] == pytest.approx(100.0 * sum(code in real for code, real in with_set) / len(with_set))
    assert entry['real_top1'] == pytest.approx(200.0 / 3)  # images 1 and 2 right, 11 wrong; 7 and 50000 not counted
    assert entry['top1'] == pytest.approx(100.0 * sum(code == folder for _, folder, code, _ in IMAGES) / len(IMAGES))
    assert (entry['num_samples'], entry['num_real_samples']) == (5, 3)
    assert '| imagenet-real |' in (tmp_path / 'results.md').read_text()


def test_timm_copy_is_the_default_labels_file(tmp_path: Path) -> None:
    labels = json.loads(pkgutil.get_data('timm.data', '_info/imagenet_real_labels.json'))
    _tree(tmp_path / 'imagenet')
    entry = run_validation(_request(tmp_path), init_runtime('cpu'))['results']['imagenet-real']
    assert entry['real_labels'] == 'timm'
    assert entry['num_real_samples'] == sum(bool(labels[number - 1]) for number, *_ in IMAGES)


def test_bad_labels_file_and_foreign_file_names_are_one_line(tmp_path: Path) -> None:
    benchmark = BENCHMARKS['imagenet-real']
    root = _tree(tmp_path / 'imagenet')
    short = tmp_path / 'short.json'
    short.write_text('[[1], []]')
    request = _request(tmp_path, real_labels=str(short))
    with pytest.raises(DatasetLayoutError, match=r"short.json is not ReaL's real.json: expected a list of 50000"):
        benchmark.prepare(root, LabelSpace.imagenet_1k(), request)
    write_image(root / 'val' / imagenet_wnids()[3] / 'photo.JPEG', class_color(3))
    request = _request(tmp_path, real_labels=str(_real_json(tmp_path / 'real.json')))
    with pytest.raises(DatasetLayoutError, match='photo.JPEG is not an ImageNet val file'):
        benchmark.prepare(root, LabelSpace.imagenet_1k(), request)
