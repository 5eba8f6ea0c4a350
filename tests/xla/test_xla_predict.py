"""predict() (the loop under ``EvaluationContext.predict``: shape bias, calibration) under XLA SPMD, 2 CPU devices.

There every batch is padded to one shape (padding rows carry IGNORE_TARGET): no padding row may become an output,
and every readable sample must come back once, in dataset order, with the outputs the model gives on the CPU.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip('torch_xla', reason='torch_xla is not installed (scripts/test_xla.sh builds its environment)')
if os.environ.get('PJRT_DEVICE') != 'CPU':
    pytest.skip('XLA tests run on the CPU backend: PJRT_DEVICE=CPU CPU_NUM_DEVICES=2 (scripts/test_xla.sh)',
                allow_module_level=True)

import torch  # noqa: E402

from dataset_trees import ColorCodeClassifier  # noqa: E402
from robustcnn.benchmarks import get_benchmark  # noqa: E402
from robustcnn.benchmarks.context import EvaluationContext  # noqa: E402
from robustcnn.benchmarks.runner import ValidationRequest  # noqa: E402
from robustcnn.data.label_space import LabelSpace  # noqa: E402
from robustcnn.engine.runtime import DeviceSettings, init_runtime  # noqa: E402
from test_predict import build_tree, direct_logits  # noqa: E402

KEPT_CLASSES = [7, 8, 500, 1]  # what the reduce keeps of the 1000 logits


def test_predict_under_spmd_gives_each_readable_sample_once_in_dataset_order(tmp_path: Path) -> None:
    runtime = init_runtime('xla')
    assert runtime.spmd and runtime.data_parallel_size == 2
    root = build_tree(tmp_path / 'data')  # 10 files, 3 of them undecodable: batches of 4 keep 2..4, padded to 4
    request = ValidationRequest(data_dir=str(root), workers=0, batch_size=4, log_freq=0)
    model = ColorCodeClassifier().eval().to(runtime.device)
    context = EvaluationContext(request=request, runtime=runtime, model=model, model_name='color',
                                settings=DeviceSettings(amp_dtype=None, channels_last=False, batch_size=4), workers=0)
    benchmark = get_benchmark('imagenet')
    prepared = benchmark.prepare(root, LabelSpace.imagenet_1k())
    predictions = context.predict(prepared, context.preprocessing(benchmark), 'predict',
                                  reduce=lambda logits: logits[:, KEPT_CLASSES])

    assert predictions.outputs.shape == (10, len(KEPT_CLASSES)) and predictions.outputs.device.type == 'cpu'
    assert predictions.skipped_files == 3
    broken = {'zz_empty.JPEG', 'zz_truncated.png', 'zz_text.jpg'}
    for row, (path, _) in enumerate(prepared.samples):
        if Path(path).name in broken:
            assert not predictions.scored[row] and not predictions.outputs[row].any(), row
        else:
            assert predictions.scored[row], row
            torch.testing.assert_close(predictions.outputs[row], direct_logits(path)[KEPT_CLASSES], rtol=0,
                                       atol=1e-4)
