"""A set with its own metric is one Benchmark subclass: scored and reported with no edit of the runner or report."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import pytest

from dataset_trees import (ColorCodeClassifier, build_imagenet_c_tree, build_wnid_tree, register_color_model,
                           save_color_checkpoint)
from robustcnn import benchmarks
from robustcnn.benchmarks.base import ClassFolderBenchmark, PreparedData
from robustcnn.benchmarks.context import EvaluationContext
from robustcnn.benchmarks.imagenet_c import CORRUPTIONS
from robustcnn.benchmarks.runner import ValidationRequest, run_validation
from robustcnn.engine.runtime import init_runtime

MODEL = register_color_model()


class EvenShare(ClassFolderBenchmark):
    """A toy metric over every sample's prediction: percent of images whose top-1 class is an even index."""

    name = 'even-share'
    title = 'Even share'
    headline_metric = 'even_share'

    def score(self, context: EvaluationContext, prepared: PreparedData) -> dict[str, Any]:
        preprocessing = context.preprocessing(self)
        predictions = context.predict(prepared, preprocessing, self.name,
                                      reduce=lambda logits: logits.argmax(dim=1, keepdim=True).float())
        classes = predictions.outputs[predictions.scored, 0]
        return {'even_share': 100.0 * float((classes % 2 == 0).float().mean()),
                'num_samples': int(predictions.scored.sum()), 'skipped_files': predictions.skipped_files}

    def summary(self, entry: Mapping[str, Any]) -> dict[str, float | None]:
        return {'even_share': entry.get('even_share')}


def test_a_set_with_its_own_metric_needs_no_runner_or_report_edit(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(benchmarks.BENCHMARKS, 'even-share', EvenShare())
    build_wnid_tree(tmp_path / 'data', {2: [2, 4, 5], 7: [7]})  # top-1 classes 2, 4, 5, 7: half even
    checkpoint = save_color_checkpoint(tmp_path / 'color.pth')
    results = tmp_path / 'results.md'
    request = ValidationRequest(data_dir=str(tmp_path / 'data'), dataset='even-share', model=MODEL,
                                checkpoint=str(checkpoint), workers=0, batch_size=3, log_freq=0,
                                results_file=str(results))
    payload = run_validation(request, init_runtime('cpu'))
    assert payload['results']['even-share'] == {'even_share': 50.0, 'num_samples': 4, 'skipped_files': 0}
    text = results.read_text()
    assert '| images | skipped files | even share |' in text
    assert '| even-share | – | – | – | – | – | – | 4 | 0 | 50.00 |' in text


def test_imagenet_c_resume_identity_follows_the_preprocessing_record(tmp_path: Path) -> None:
    """A flag that changes the preprocessing record (here --interpolation) invalidates saved folders by itself."""
    root = build_imagenet_c_tree(tmp_path / 'c', {(name, severity): {3: [3, 3]} for name in CORRUPTIONS
                                                  for severity in range(1, 6)})
    checkpoint = save_color_checkpoint(tmp_path / 'color.pth')
    request = ValidationRequest(data_dir=str(root), dataset='imagenet-c', model=MODEL, checkpoint=str(checkpoint),
                                workers=0, batch_size=2, log_freq=0, results_file=str(tmp_path / 'c.json'),
                                group_sync_every=1)
    runtime = init_runtime('cpu')
    partial = tmp_path / 'c.imagenet-c.partial.json'

    def killed_run(request: ValidationRequest) -> None:
        ColorCodeClassifier.fail_after_batches = 10
        try:
            with pytest.raises(KeyboardInterrupt):
                run_validation(request, runtime)
        finally:
            ColorCodeClassifier.fail_after_batches = None
        assert json.loads(partial.read_text())['units']

    killed_run(request)
    other = ValidationRequest(**{**request.__dict__, 'interpolation': 'bicubic'})
    assert run_validation(other, runtime)['results']['imagenet-c']['resumed_folders'] == 0
    killed_run(request)
    resumed = run_validation(request, runtime)['results']['imagenet-c']
    assert resumed['resumed_folders'] >= 8 and resumed['num_samples'] == 150 and not partial.exists()
