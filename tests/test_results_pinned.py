"""validate.py's results files on tiny trees, pinned byte for byte (timing fields aside) against stored copies.

Why: the evaluator's shape changes (issue 12: sets that score themselves, one loading path) must not change a
single number, key or key order of what it writes. The expected files in tests/data/pinned_results/ were written by
the code before that restructuring; ``ROBUSTCNN_WRITE_PINNED=1`` rewrites them (only when a change of output is
intended, and then say so in the commit).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from dataset_trees import (ColorCodeClassifier, build_imagenet_c_tree, build_wnid_tree, register_color_model,
                           save_color_checkpoint, write_broken_files)
from robustcnn.benchmarks.imagenet_c import CORRUPTIONS
from robustcnn.data.label_space import imagenet_r_indices, imagenet_wnids

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import validate  # noqa: E402

PINNED = REPO / 'tests' / 'data' / 'pinned_results'
MODEL = register_color_model()
TIMING_FIELDS = ('elapsed_seconds',)


def run_main(argv: list[str]) -> int:
    from robustcnn.cli import run_cli
    with pytest.raises(SystemExit) as exit_info:
        run_cli(validate.main, argv, prog='validate.py')
    return exit_info.value.code


def without_timing(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: without_timing(item) for key, item in value.items() if key not in TIMING_FIELDS}
    if isinstance(value, list):
        return [without_timing(item) for item in value]
    return value


def check_pinned(results: Path, name: str, checkpoint: Path) -> None:
    """The results file, the checkpoint's folder named ``<tmp>`` and timing removed, equals the stored one."""
    text = results.read_text(encoding='utf-8').replace(str(checkpoint.parent), '<tmp>')
    if results.suffix == '.json':
        text = json.dumps(without_timing(json.loads(text)), indent=2, ensure_ascii=False) + '\n'
    expected = PINNED / name
    if os.environ.get('ROBUSTCNN_WRITE_PINNED') == '1':
        expected.parent.mkdir(parents=True, exist_ok=True)
        expected.write_text(text, encoding='utf-8')
    assert text == expected.read_text(encoding='utf-8')


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return save_color_checkpoint(tmp_path / 'color.pth')


def common(checkpoint: Path, results: Path) -> list[str]:
    return ['--model', MODEL, '--checkpoint', str(checkpoint), '--workers', '0', '-b', '3', '--log-freq', '0',
            '--results-file', str(results)]


def test_class_folder_set_with_undecodable_files(tmp_path: Path, checkpoint: Path) -> None:
    root = build_wnid_tree(tmp_path / 'ImageNet' / 'val', {0: [0, 0, 3], 17: [17, 18, 600], 999: [999]})
    write_broken_files(root / imagenet_wnids()[17])
    for suffix in ('json', 'md', 'csv'):
        results = tmp_path / f'imagenet.{suffix}'
        assert run_main([str(tmp_path / 'ImageNet')] + common(checkpoint, results)) == 0
        check_pinned(results, f'imagenet.{suffix}', checkpoint)


def test_imagenet_r_subset(tmp_path: Path, checkpoint: Path) -> None:
    indices = list(imagenet_r_indices())
    build_wnid_tree(tmp_path / 'imagenet-r', {indices[0]: [indices[0], indices[0] + 1], indices[5]: [indices[5], 3]})
    results = tmp_path / 'imagenet-r.json'
    assert run_main([str(tmp_path / 'imagenet-r'), '--evaluate_imagenet_r'] + common(checkpoint, results)) == 0
    check_pinned(results, 'imagenet-r.json', checkpoint)


def test_imagenet_c_suite_after_a_resume(tmp_path: Path, checkpoint: Path) -> None:
    wnids = imagenet_wnids()
    contents = {(corruption, severity): {3: [3, 3 if severity < 4 else 9]} for corruption in CORRUPTIONS
                for severity in range(1, 6)}
    contents['speckle_noise', 2] = {4: [4, 5]}
    root = tmp_path / 'suite'
    build_imagenet_c_tree(root / 'ImageNet-C', contents)
    write_broken_files(root / 'ImageNet-C' / 'fog' / '2' / wnids[3])
    build_wnid_tree(root / 'imagenet' / 'val', {7: [7, 7, 7, 500]})
    results = tmp_path / 'suite.json'
    argv = [str(root), '--suite', '--extra-corruptions', '--allow-partial'] + common(checkpoint, results)
    ColorCodeClassifier.fail_after_batches = 20  # killed inside ImageNet-C, after some folders finished
    try:
        assert run_main(argv + ['--save-every', '1']) != 0
    finally:
        ColorCodeClassifier.fail_after_batches = None
    partial = tmp_path / 'suite.imagenet-c.partial.json'
    assert json.loads(partial.read_text())['units']
    assert run_main(argv) == 0
    assert not partial.exists()
    assert json.loads(results.read_text())['results']['imagenet-c']['resumed_folders'] > 0
    check_pinned(results, 'suite.json', checkpoint)
    markdown = tmp_path / 'suite.md'
    assert run_main(argv[:-1] + [str(markdown)]) == 0
    check_pinned(markdown, 'suite.md', checkpoint)
