"""End-to-end pipeline speed: ImageNet-C evaluation and the training loop's overhead.

- ``imagenet-c``: a small generated ImageNet-C tree scored by our one-pipeline path (``run_validation``) and by the
  straightforward loop of the original release (a torchvision ``ImageFolder`` and a new ``DataLoader`` for each
  of the 75 corruption/severity folders, float normalization in the workers). Both use the same fused model, so
  the ratio is the pipeline's alone.
- ``train-loop``: ``train_one_epoch`` (logging, loss bookkeeping, finiteness checks, seeding) against a bare
  forward/backward/optimizer step over the same in-memory batches.
"""
from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..cli import UsageError
from ..engine.runtime import resolve_device_kind
from ..models.fuse import fuse_for_inference
from .throughput import machine_info

__all__ = ['build_imagenet_c_tree', 'save_random_checkpoint', 'time_one_pipeline', 'time_per_folder_loop',
           'time_train_loop_overhead', 'InMemoryBatch', 'build_parser', 'main']

_logger = logging.getLogger(__name__)


def build_imagenet_c_tree(root: str | Path, num_classes: int = 2, images_per_class: int = 2, image_size: int = 224,
                          seed: int = 0) -> Path:
    """``root/<corruption>/<1..5>/<wnid>/*.JPEG`` for the 15 corruptions, noise images (JPEG, like the real set)."""
    from PIL import Image
    from timm.data import ImageNetInfo

    from ..benchmarks.imagenet_c import CORRUPTIONS, SEVERITIES

    root = Path(root)
    wnids = [ImageNetInfo().index_to_label_name(index) for index in range(num_classes)]
    generator = np.random.default_rng(seed)
    for corruption in CORRUPTIONS:
        for severity in SEVERITIES:
            for wnid in wnids:
                folder = root / corruption / str(severity) / wnid
                folder.mkdir(parents=True, exist_ok=True)
                for index in range(images_per_class):
                    pixels = generator.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(folder / f'image_{index}.JPEG', quality=85)
    return root


def _clock(timer: str) -> Callable[[], float]:
    return time.process_time if timer == 'cpu' else time.perf_counter


def save_random_checkpoint(model_name: str, path: Path, seed: int = 0) -> Path:
    """Weights for both paths (validate.py insists on a checkpoint; speed does not depend on the values)."""
    import timm
    torch.manual_seed(seed)
    torch.save(timm.create_model(model_name).state_dict(), path)
    return path


def time_one_pipeline(root: Path, model_name: str, checkpoint: Path, batch_size: int, workers: int,
                      device: str = 'cpu', decode_on_device: bool = False, amp_dtype: str | None = None,
                      channels_last: bool = False) -> tuple[float, dict[str, Any]]:
    """Wall seconds of ``run_validation`` on the tree, model loading included (as for the loop).

    ``amp_dtype``/``channels_last`` are validate.py's ``--amp``/``--channels-last``; its defaults on CUDA are
    ``'bfloat16'`` and ``True``, which a GPU measurement of validate.py's path should pass.
    """
    from ..benchmarks.runner import ValidationRequest, run_validation
    from ..engine.runtime import init_runtime

    runtime = init_runtime(device)
    request = ValidationRequest(data_dir=str(root), dataset='imagenet-c', model=model_name,
                                checkpoint=str(checkpoint), batch_size=batch_size,
                                workers=workers, log_freq=0, allow_partial=False, decode_on_device=decode_on_device,
                                pin_memory=device == 'cuda', amp=amp_dtype is not None,
                                amp_dtype=amp_dtype or 'bfloat16', channels_last=channels_last)
    start = time.perf_counter()
    payload = run_validation(request, runtime)
    return time.perf_counter() - start, payload


def time_per_folder_loop(root: Path, model_name: str, checkpoint: Path, batch_size: int,
                         workers: int, device: str = 'cpu') -> tuple[float, float]:
    """The release's way: for every corruption and severity a new ImageFolder + DataLoader; returns (seconds,
    mean top-1 error). Labels are the folder order, as the release assumed (fine for the generated tree)."""
    import timm
    from torchvision import datasets, transforms

    from ..benchmarks.imagenet_c import CORRUPTIONS, SEVERITIES

    start = time.perf_counter()
    model = timm.create_model(model_name)
    model.load_state_dict(torch.load(checkpoint, map_location='cpu', weights_only=True))
    model.eval()
    model = fuse_for_inference(model)
    model.to(device)
    config = model.pretrained_cfg
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(config['mean'], config['std'])])
    errors = []
    with torch.inference_mode():
        for corruption in CORRUPTIONS:
            for severity in SEVERITIES:
                dataset = datasets.ImageFolder(str(root / corruption / str(severity)), transform=transform)
                loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                                     num_workers=workers, pin_memory=device == 'cuda')
                correct = total = 0
                for images, targets in loader:
                    predictions = model(images.to(device, non_blocking=True)).argmax(1).cpu()
                    correct += int((predictions == targets).sum())
                    total += targets.numel()
                errors.append(100.0 * (1 - correct / max(total, 1)))
    return time.perf_counter() - start, statistics.fmean(errors)


@dataclass
class InMemoryBatch:
    """What ``train_one_epoch`` reads from a loader batch."""

    images: torch.Tensor
    targets: torch.Tensor
    num_failed: int = 0


def time_train_loop_overhead(model_name: str = 'robust_resnet_dw_nano', batch_size: int = 16, img_size: int = 64,
                             steps: int = 10, repeats: int = 3, timer: str = 'cpu', seed: int = 0) -> dict[str, Any]:
    """Median seconds per step of our ``train_one_epoch`` and of a bare step loop, same model/data/optimizer."""
    import timm

    from ..engine.runtime import init_runtime
    from ..engine.train_loop import TrainingSetup, train_one_epoch

    torch.manual_seed(seed)
    runtime = init_runtime('cpu')
    template = timm.create_model(model_name, num_classes=10)
    generator = torch.Generator().manual_seed(seed)
    batches = [InMemoryBatch(torch.randn(batch_size, 3, img_size, img_size, generator=generator),
                             torch.randint(0, 10, (batch_size,), generator=generator)) for _ in range(steps)]
    clock = _clock(timer)

    def ours() -> float:
        model = copy.deepcopy(template)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        start = clock()
        train_one_epoch(TrainingSetup(model, batches, optimizer, F.cross_entropy, runtime, num_batches=steps,
                                      log_interval=max(1, steps // 2)), epoch=0)
        return (clock() - start) / steps

    def bare() -> float:
        model = copy.deepcopy(template)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        start = clock()
        for batch in batches:
            loss = F.cross_entropy(model(batch.images), batch.targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return (clock() - start) / steps

    ours(), bare()  # warm-up: allocator, oneDNN primitive caches
    ours_seconds, bare_seconds = [], []
    for _ in range(repeats):  # interleaved, so drifting machine load affects both alike
        ours_seconds.append(ours())
        bare_seconds.append(bare())
    ours_median, bare_median = statistics.median(ours_seconds), statistics.median(bare_seconds)
    return {'model': model_name, 'batch_size': batch_size, 'img_size': img_size, 'steps': steps, 'timer': timer,
            'train_loop_step_ms': 1000 * ours_median, 'bare_step_ms': 1000 * bare_median,
            'overhead_percent': 100.0 * (ours_median / bare_median - 1.0),
            'train_loop_step_ms_all': [1000 * value for value in ours_seconds],
            'bare_step_ms_all': [1000 * value for value in bare_seconds]}


def build_parser(command: str) -> argparse.ArgumentParser:
    """The command line of ``speed.py imagenet-c`` or ``speed.py train-loop``."""
    if command == 'imagenet-c':
        return _imagenet_c_parser()
    if command == 'train-loop':
        return _train_loop_parser()
    raise UsageError(f'unknown speed measurement {command!r}; expected imagenet-c or train-loop')


def _imagenet_c_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='speed.py imagenet-c', description=__doc__.split('\n')[0])
    parser.add_argument('--model', default='robust_resnet_dw_pico')
    parser.add_argument('--data', default='', help='an ImageNet-C tree (default: generate a small one)')
    parser.add_argument('--classes', type=int, default=2, help='generated tree: classes per folder')
    parser.add_argument('--images-per-class', type=int, default=2, help='generated tree: images per class')
    parser.add_argument('--workers', default='0,2', help='comma-separated worker counts to measure')
    parser.add_argument('-b', '--batch-size', type=int, default=32)
    parser.add_argument('--repeats', type=int, default=1)
    parser.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    parser.add_argument('--decode-on-device', action='store_true',
                        help="our pipeline decodes JPEGs on --device (validate.py's --decode-on-device)")
    return parser


def _imagenet_c_main(argv: Sequence[str]) -> int:
    args = _imagenet_c_parser().parse_args(argv)
    resolve_device_kind(args.device)  # no GPU visible: a UsageError
    try:
        worker_counts = [int(value) for value in args.workers.split(',') if value.strip()]
    except ValueError:
        raise UsageError(f'--workers takes comma-separated integers, got {args.workers!r}') from None
    if not worker_counts or min(worker_counts) < 0:
        raise UsageError(f'--workers takes counts of 0 or more, got {args.workers!r}')
    # validate.py's defaults on CUDA (bf16 autocast, channels-last), so its path is measured as it runs there
    amp_dtype, channels_last = ('bfloat16', True) if args.device == 'cuda' else (None, False)
    print(' '.join(f'{key}={value}' for key, value in machine_info(args.device).items()), flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.data) if args.data else build_imagenet_c_tree(
            Path(scratch) / 'imagenet-c', args.classes, args.images_per_class)
        checkpoint = save_random_checkpoint(args.model, Path(scratch) / 'weights.pth')
        for workers in worker_counts:
            ours, theirs = [], []
            for _ in range(args.repeats):
                seconds, payload = time_one_pipeline(root, args.model, checkpoint, args.batch_size, workers,
                                                     args.device, args.decode_on_device, amp_dtype, channels_last)
                ours.append(seconds)
                seconds, _ = time_per_folder_loop(root, args.model, checkpoint, args.batch_size, workers,
                                                  args.device)
                theirs.append(seconds)
            result = payload['results']['imagenet-c']
            images = result['num_samples']
            ours_median, theirs_median = statistics.median(ours), statistics.median(theirs)
            print(f'device={args.device} decode_on_device={args.decode_on_device} workers={workers} images={images} '
                  f'one_pipeline={ours_median:.2f}s ({images / ours_median:.1f} '
                  f'img/s) per_folder_loaders={theirs_median:.2f}s ({images / theirs_median:.1f} img/s) '
                  f'speedup={theirs_median / ours_median:.2f}x', flush=True)
    return 0


def _train_loop_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='speed.py train-loop', description=__doc__.split('\n')[0])
    parser.add_argument('--model', default='robust_resnet_dw_nano')
    parser.add_argument('-b', '--batch-size', type=int, default=16)
    parser.add_argument('--img-size', type=int, default=64)
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--timer', default='cpu', choices=('cpu', 'wall'))
    return parser


def _train_loop_main(argv: Sequence[str]) -> int:
    args = _train_loop_parser().parse_args(argv)
    if args.threads or args.timer == 'cpu':  # CPU seconds of spinning OpenMP threads would count as work
        torch.set_num_threads(args.threads or 1)
    print(' '.join(f'{key}={value}' for key, value in machine_info('cpu').items()), flush=True)
    result = time_train_loop_overhead(args.model, args.batch_size, args.img_size, args.steps, args.repeats,
                                      args.timer)
    print(f"{result['model']} b={result['batch_size']} {result['img_size']}px: train_one_epoch "
          f"{result['train_loop_step_ms']:.1f} ms/step, bare step {result['bare_step_ms']:.1f} ms/step, "
          f"overhead {result['overhead_percent']:+.1f}% ({args.timer} time)", flush=True)
    return 0


def main(command: str, argv: Sequence[str]) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if command == 'imagenet-c':
        return _imagenet_c_main(argv)
    if command == 'train-loop':
        return _train_loop_main(argv)
    raise UsageError(f'unknown speed measurement {command!r}; expected imagenet-c or train-loop')
