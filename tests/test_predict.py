"""EvaluationContext.predict: every sample's output once, in dataset order, gathered over processes (torchrun)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision.transforms import functional as tv_functional

from dataset_trees import (TEST_MEAN, TEST_STD, ColorCodeClassifier, build_wnid_tree, write_broken_files)
from robustcnn.benchmarks import get_benchmark
from robustcnn.benchmarks.context import EvaluationContext
from robustcnn.benchmarks.runner import ValidationRequest
from robustcnn.data.folder import load_rgb_image
from robustcnn.data.label_space import LabelSpace, imagenet_wnids
from robustcnn.engine.runtime import DeviceSettings, init_runtime

REPO = Path(__file__).resolve().parents[1]


def build_tree(root: Path) -> Path:
    """7 images of 3 classes (shards of 4 and 3 over 2 processes) and 3 undecodable files among them."""
    build_wnid_tree(root, {7: [7, 7, 500], 8: [8, 1, 8, 8]})
    write_broken_files(root / imagenet_wnids()[8])
    return root


def predict_tree(root: Path, batch_size: int, reduce=None):
    runtime = init_runtime('cpu')
    request = ValidationRequest(data_dir=str(root), workers=0, batch_size=batch_size, log_freq=0)
    context = EvaluationContext(request=request, runtime=runtime, model=ColorCodeClassifier(), model_name='color',
                                settings=DeviceSettings(amp_dtype=None, channels_last=False, batch_size=batch_size),
                                workers=0)
    benchmark = get_benchmark('imagenet')
    prepared = benchmark.prepare(root, LabelSpace.imagenet_1k())
    return prepared, context.predict(prepared, context.preprocessing(benchmark), 'predict', reduce=reduce)


def direct_logits(path: str) -> torch.Tensor:
    """The model called on the file by hand: RGB, 0..1, normalized with the model's mean/std (32 px: no resize)."""
    image = tv_functional.normalize(tv_functional.to_tensor(load_rgb_image(path)), TEST_MEAN, TEST_STD)
    return ColorCodeClassifier()(image.unsqueeze(0))[0]


def test_predict_matches_direct_model_calls_in_dataset_order(tmp_path: Path) -> None:
    prepared, predictions = predict_tree(build_tree(tmp_path / 'data'), batch_size=3)
    broken = {'zz_empty.JPEG', 'zz_truncated.png', 'zz_text.jpg'}
    assert predictions.outputs.shape == (10, 1000) and predictions.outputs.dtype == torch.float32
    assert predictions.skipped_files == 3
    for row, (path, _) in enumerate(prepared.samples):
        if Path(path).name in broken:
            assert not predictions.scored[row] and not predictions.outputs[row].any()
        else:
            assert predictions.scored[row]
            torch.testing.assert_close(predictions.outputs[row], direct_logits(path), rtol=0, atol=1e-4)
    # the colour model's top-1 is the coded class: 7, 7, 500 then 8, 1, 8, 8 among the readable files
    codes = predictions.outputs[predictions.scored].argmax(dim=1).tolist()
    assert sorted(codes) == sorted([7, 7, 500, 8, 1, 8, 8])


def test_predict_reduce_runs_per_batch(tmp_path: Path) -> None:
    subset = [7, 8, 500]
    _, predictions = predict_tree(build_tree(tmp_path / 'data'), batch_size=2,
                                  reduce=lambda logits: logits[:, subset].softmax(dim=1))
    assert predictions.outputs.shape == (10, 3)
    scored = predictions.outputs[predictions.scored]
    torch.testing.assert_close(scored.sum(dim=1), torch.ones(7))
    assert scored.argmax(dim=1).tolist().count(2) == 1  # only the image coded 500


LAUNCHER = """
import sys
sys.path.insert(0, {tests!r})
sys.path.insert(0, {repo!r})
import torch
from test_predict import predict_tree
from pathlib import Path
prepared, predictions = predict_tree(Path(sys.argv[1]), batch_size=1)
import torch.distributed as dist
if not dist.is_initialized() or dist.get_rank() == 0:
    torch.save({{'outputs': predictions.outputs, 'scored': predictions.scored,
                'skipped': predictions.skipped_files}}, sys.argv[2])
if dist.is_initialized():
    dist.destroy_process_group()
"""


@pytest.mark.distributed
@pytest.mark.slow
def test_predict_under_torchrun_gives_each_image_once_in_order(tmp_path: Path) -> None:
    root = build_tree(tmp_path / 'data')
    launcher = tmp_path / 'launch.py'
    launcher.write_text(LAUNCHER.format(tests=str(REPO / 'tests'), repo=str(REPO)))
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    saved = {}
    for processes in (1, 2):
        output = tmp_path / f'p{processes}.pt'
        command = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', str(processes),
                   '--master_port', str(29600 + processes + os.getpid() % 1000), str(launcher), str(root), str(output)]
        completed = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
        assert completed.returncode == 0, completed.stderr[-3000:]
        saved[processes] = torch.load(output)
    _, single = predict_tree(root, batch_size=4)
    for processes in (1, 2):
        assert torch.equal(saved[processes]['outputs'], single.outputs)
        assert torch.equal(saved[processes]['scored'], single.scored) and saved[processes]['skipped'] == 3
