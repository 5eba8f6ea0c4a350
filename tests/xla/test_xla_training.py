"""Training and evaluation through torch_xla, on XLA's CPU backend with 2 devices (``scripts/test_xla.sh``).

Run with ``PJRT_DEVICE=CPU CPU_NUM_DEVICES=2``: SPMD over 2 devices is the same code path as 8 TPU chips. Kept
tiny (32 px, the smallest model, a few dozen images) because every new graph costs seconds to compile on a CPU.

- the release's launcher command trains 2 epochs, validates, saves CPU tensors from the master;
- a run killed mid-epoch resumes from its recovery checkpoint and ends with the same weights;
- the same checkpoint scores the same on the XLA path and on the CPU eager path (validate.py, padded last batch);
- no recompilation after warm-up, in training and in evaluation (torch_xla's CompileTime metric).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip('torch_xla', reason='torch_xla is not installed (scripts/test_xla.sh builds its environment)')
if os.environ.get('PJRT_DEVICE') != 'CPU':
    pytest.skip('XLA tests run on the CPU backend: PJRT_DEVICE=CPU CPU_NUM_DEVICES=2 (scripts/test_xla.sh)',
                allow_module_level=True)

import torch  # noqa: E402

from helpers_train import REPO_ROOT, assert_same_weights, load_weights, make_image_folders, read_summary, \
    subprocess_env  # noqa: E402

NUM_DEVICES = 2
TINY = [
    '--model', 'robust_resnet_dw_pico', '--model-kwargs', 'patch_size=8', '--img-size', '32',
    '--batch-size', '4', '--workers', '0', '--log-interval', '2', '--warmup-epochs', '1', '--lr', '2e-3',
    '--aug-repeats', '0', '--aa', 'none', '--reprob', '0', '--seed', '3', '--epochs', '2',
    # the recipe's batch-level parts stay on: mixup/cutmix (on the host for XLA) and drop path (XLA's RNG)
    '--mixup', '0.8', '--cutmix', '1.0', '--smoothing', '0.1', '--drop-path', '0.1',
    '--recovery-interval', '2', '--checkpoint-interval', '1',
]


def _env(cache: Path, **extra: str) -> dict[str, str]:
    # the persistent compilation cache lets later processes reuse the first one's graphs (TPU users can set it too)
    return subprocess_env(PJRT_DEVICE='CPU', CPU_NUM_DEVICES=str(NUM_DEVICES), XLA_PERSISTENT_CACHE_PATH=str(cache),
                          **extra)


def _run(arguments: list[str], cache: Path, timeout: float = 600, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *arguments], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout, env=_env(cache, **extra))


@pytest.fixture(scope='module')
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp('xla')
    data = make_image_folders(root / 'data', train_per_class=8, val_per_class=5)
    return {'root': root, 'data': data, 'cache': root / 'xla_cache', 'output': root / 'output'}


@pytest.fixture(scope='module')
def trained(workspace: dict[str, Path]) -> Path:
    """The release's launcher usage: ``launch_xla.py --num-devices N train.py ...`` (SPMD over the 2 devices)."""
    result = _run(['scripts/launch_xla.py', '--num-devices', str(NUM_DEVICES), 'train.py', str(workspace['data']),
                   *TINY, '--output', str(workspace['output']), '--experiment', 'full'], workspace['cache'])
    assert result.returncode == 0, result.stderr[-4000:]
    assert '2 xla devices (SPMD, 1 host(s) x 2)' in result.stderr
    assert 'total batch 8 = 4 x 2 devices' in result.stderr
    return workspace['output'] / 'full'


def test_launcher_trains_two_epochs_validates_and_saves_cpu_checkpoints(trained: Path):
    rows = read_summary(trained)
    assert [row['epoch'] for row in rows] == ['0', '1']
    assert all(float(row['eval_top1']) >= 0 for row in rows)
    assert float(rows[-1]['train_loss']) < float(rows[0]['train_loss'])
    for name in ('last.pth.tar', 'model_best.pth.tar', 'checkpoint-1.pth.tar'):
        checkpoint = torch.load(trained / name, map_location='cpu', weights_only=True)
        devices = {tensor.device.type for tensor in checkpoint['state_dict'].values()}
        assert devices == {'cpu'}, name
    checkpoint = torch.load(trained / 'last.pth.tar', weights_only=True)
    assert checkpoint['metadata']['world_size'] == NUM_DEVICES
    assert checkpoint['metadata']['total_batch_size'] == 8
    assert checkpoint['epoch'] == 1 and checkpoint['epoch_complete']
    assert not list(trained.glob('recovery-*')), 'recovery files are removed when an epoch ends'
    # the checkpoint's weights load into a plain model on the CPU: same format as the GPU path
    import timm
    model = timm.create_model('robust_resnet_dw_pico', num_classes=4, patch_size=8)
    model.load_state_dict(checkpoint['state_dict'])


def test_killed_run_resumes_to_the_same_weights(trained: Path, workspace: dict[str, Path]):
    common = ['train.py', str(workspace['data']), *TINY, '--output', str(workspace['output']), '--experiment',
              'resumed', '--device', 'xla']
    # 4 updates per epoch: killed after update 6 = epoch 1, batch 2, right after recovery-1-2 was written
    killed = _run(common, workspace['cache'], ROBUSTCNN_KILL_AFTER_UPDATES='6')
    assert killed.returncode == -9, killed.stderr[-4000:]
    run_dir = workspace['output'] / 'resumed'
    assert (run_dir / 'recovery-1-2.pth.tar').is_file()
    resumed = _run([*common, '--resume', 'auto'], workspace['cache'])
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert 'resumed from' in resumed.stderr and 'epoch 1, batch 2' in resumed.stderr
    assert [row['epoch'] for row in read_summary(run_dir)] == ['0', '1']
    assert_same_weights(load_weights(trained / 'last.pth.tar'), load_weights(run_dir / 'last.pth.tar'))


def _validate(checkpoint: Path, data: Path, cache: Path, device: str, results: Path) -> dict:
    # 20 images in batches of 4 per device: the XLA path pads the last host batch of 4 up to 8
    result = _run(['validate.py', str(data / 'val'), '--dataset', 'folder', '--checkpoint', str(checkpoint),
                   '--device', device, '--batch-size', '4' if device == 'xla' else '8', '--workers', '0',
                   '--results-file', str(results)], cache)
    assert result.returncode == 0, result.stderr[-4000:]
    payload = json.loads(results.read_text())
    return payload


def _find_metrics(payload: object) -> dict:
    """The first results entry with a top-1 (the payload's layout belongs to the report module)."""
    if isinstance(payload, dict):
        if 'top1' in payload and 'num_samples' in payload:
            return payload
        for value in payload.values():
            found = _find_metrics(value)
            if found:
                return found
    if isinstance(payload, list):
        for value in payload:
            found = _find_metrics(value)
            if found:
                return found
    return {}


def test_same_checkpoint_scores_the_same_on_xla_and_cpu(trained: Path, workspace: dict[str, Path]):
    checkpoint = trained / 'last.pth.tar'
    on_xla = _find_metrics(_validate(checkpoint, workspace['data'], workspace['cache'], 'xla',
                                     workspace['root'] / 'xla.json'))
    on_cpu = _find_metrics(_validate(checkpoint, workspace['data'], workspace['cache'], 'cpu',
                                     workspace['root'] / 'cpu.json'))
    assert on_xla['num_samples'] == on_cpu['num_samples'] == 20, (on_xla, on_cpu)
    assert on_xla['top1'] == on_cpu['top1']
    assert on_xla['top5'] == on_cpu['top5']
    assert abs(on_xla['loss'] - on_cpu['loss']) < 1e-3


class _CountingLoader:
    """Wraps a loader and records torch_xla's compile count before each batch (= after the previous step)."""

    def __init__(self, loader: object) -> None:
        self.loader = loader
        self.batch_size = getattr(loader, 'batch_size', None)
        self.sampler = getattr(loader, 'sampler', None)
        self.counts: list[int] = []

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self):
        from robustcnn.engine.runtime import xla_compile_count
        for batch in self.loader:
            self.counts.append(xla_compile_count())
            yield batch
        self.counts.append(xla_compile_count())


def test_no_recompilation_after_warm_up(workspace: dict[str, Path], tmp_path: Path):
    """In process (no persistent cache, so every compilation is counted): train 3 epochs, evaluate twice."""
    assert not os.environ.get('XLA_PERSISTENT_CACHE_PATH'), 'the compile count would miss cached graphs'
    from robustcnn.config import parse_train_args
    from robustcnn.engine.runtime import init_runtime, xla_compile_count
    from robustcnn.engine.train_loop import train_one_epoch
    from robustcnn.engine.trainer import _Trainer

    runtime = init_runtime('xla')
    assert runtime.spmd and runtime.data_parallel_size == NUM_DEVICES
    # batch 2 per device: 8 steps per epoch; 20 validation images in host batches of 4: the last one is padded
    args = parse_train_args([str(workspace['data']), *TINY, '--batch-size', '2', '--epochs', '3',
                             '--output', str(tmp_path), '--experiment', 'compile', '--device', 'xla'])
    trainer = _Trainer(args, runtime)
    trainer.prepare()
    training = trainer.setup.training
    epochs = []
    for epoch in range(3):
        training.train_loader.sampler.set_epoch(epoch)
        counting = _CountingLoader(training.train_loader)
        train_one_epoch(dataclasses.replace(training, train_loader=counting), epoch,
                        num_updates=epoch * training.updates_per_epoch)
        epochs.append(counting.counts)
    assert len(epochs[0]) == training.num_batches + 1 == 9
    # warm-up: new graphs only in the first steps of the first epochs, none at all in the third
    assert epochs[0][3:] == [epochs[0][3]] * (len(epochs[0]) - 3), epochs
    assert epochs[1][2:] == [epochs[1][2]] * (len(epochs[1]) - 2), epochs
    assert epochs[2] == [epochs[1][-1]] * len(epochs[2]), epochs

    setup = trainer.setup
    eval_loader = setup.eval_loader
    assert len(eval_loader) == 5 and len(eval_loader.dataset) == 20
    passes = []
    for _ in range(2):
        counting = _CountingLoader(eval_loader)
        trainer.setup = dataclasses.replace(setup, eval_loader=counting)
        result = trainer.validate(training.model, 'eval')
        passes.append(counting.counts)
        assert result.num_samples == 20
    # the first batch compiles the step; the padded last batch and the second pass compile nothing
    assert passes[0][1:] == [passes[0][1]] * (len(passes[0]) - 1), passes
    assert passes[1] == [passes[0][-1]] * len(passes[1]) or max(passes[1]) - min(passes[1]) == 0, passes
    before = xla_compile_count()
    trainer.validate(training.model, 'eval')
    assert xla_compile_count() == before


def test_bfloat16_autocast_and_rejected_float16():
    from robustcnn.engine.runtime import init_runtime
    runtime = init_runtime('xla')
    layer = torch.nn.Linear(4, 2).to(runtime.device)
    images, _ = runtime.prepare_batch(torch.randn(4, 4), torch.zeros(4, dtype=torch.long))
    with runtime.autocast(torch.bfloat16):
        output = layer(images)
    assert output.dtype == torch.bfloat16
    with pytest.raises(ValueError, match='bfloat16'):
        runtime.check_amp_dtype(torch.float16)
