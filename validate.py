#!/usr/bin/env python3
"""Evaluate a model on ImageNet and the out-of-distribution suite (Stylized-ImageNet, ImageNet-C, -R, -Sketch, -A,
-V2) with the literature's exact metrics. See TEST.md.

    python validate.py DATA_DIR --dataset imagenet-r --model robust_resnet_dw_small --checkpoint ckpt.pth \\
        --results-file results.json
    python validate.py ROOT --suite --model robust_resnet_dw_small --checkpoint ckpt.pth --results-file table.md
    torchrun --nproc_per_node 8 validate.py ...   (each image counted exactly once)
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from typing import TYPE_CHECKING, Sequence

# Only what parsing needs: torch and timm are loaded after the arguments are checked (see robustcnn/__init__.py).
from robustcnn.adversarial.spec import add_attack_arguments, attack_spec_from_args
from robustcnn.benchmarks import BENCHMARK_NAMES, SUITE_ORDER
from robustcnn.cli import (DefaultsHelpFormatter, OneLineErrorParser, UsageError, pretrained_download, run_cli,
                           setup_logging)
from robustcnn.config import INTERPOLATIONS, RESIZE_MODES, check_normalization

if TYPE_CHECKING:
    from robustcnn.benchmarks.runner import ValidationRequest

AMP_DTYPE_NAMES = ('bfloat16', 'float16')  # robustcnn.engine.runtime.AMP_DTYPES' keys (a test checks they agree)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        description='Evaluate a timm / Robust-ResNet model on ImageNet and its robustness benchmarks.',
        formatter_class=DefaultsHelpFormatter)
    parser.add_argument('data', metavar='DATA_DIR', help='dataset folder (with --suite: the folder holding them all)')
    parser.add_argument('--dataset', '-d', choices=BENCHMARK_NAMES, default=None,
                        help='evaluation set; inferred from the release flags or the folder when omitted')
    group = parser.add_argument_group('model')
    group.add_argument('--model', '-m', default=None, help='timm model name (default: the checkpoint\'s metadata)')
    group.add_argument('--checkpoint', default='', metavar='PATH', help='.pth/.pth.tar/.safetensors weights')
    group.add_argument('--pretrained', action='store_true', help='use timm\'s released weights instead')
    group.add_argument('--use-ema', action='store_true', help='evaluate the EMA weights of a training checkpoint')
    group.add_argument('--num-classes', type=int, default=None, help='classifier outputs (default: from the labels)')
    group.add_argument('--class-map', default='', metavar='FILE',
                       help='class names in classifier order (.txt one per line, or .json)')
    group.add_argument('--no-fuse', dest='fuse', action='store_false',
                       help='do not fold BatchNorm into convolutions for inference')
    group = parser.add_argument_group('preprocessing (defaults: the model\'s cfg and the dataset\'s resize mode)')
    group.add_argument('--resize_mode', '--resize-mode', dest='resize_mode', choices=RESIZE_MODES, default=None,
                       help='resize_center_crop (ImageNet, -R, -A, -Sketch, -V2), none (Stylized-ImageNet, '
                            'ImageNet-C, cue-conflict and the model-vs-human sets: already 224x224), resize (squash '
                            'to the input size)')
    group.add_argument('--img-size', type=int, default=None, metavar='N', help='input image size')
    group.add_argument('--input-size', type=int, nargs=3, default=None, metavar=('C', 'H', 'W'),
                       help='input size C H W (default: the checkpoint\'s or model cfg\'s)')
    group.add_argument('--crop-pct', type=float, default=None, help='center crop fraction (resize_center_crop)')
    group.add_argument('--interpolation', default='', help='resize interpolation (default: model cfg, bicubic)')
    group.add_argument('--mean', type=float, nargs='+', default=None, metavar='MEAN',
                       help='normalization mean per channel (default: the checkpoint\'s or model cfg\'s)')
    group.add_argument('--std', type=float, nargs='+', default=None, metavar='STD',
                       help='normalization std per channel (default: the checkpoint\'s or model cfg\'s)')
    group.add_argument('--normalize', action='store_true',
                       help='accepted for the original release\'s commands; normalization with the model\'s '
                            'mean/std is always applied')
    group = parser.add_argument_group('datasets')
    group.add_argument('--evaluate_imagenet_c', '--evaluate-imagenet-c', action='store_true',
                       help='release flag: same as --dataset imagenet-c')
    group.add_argument('--evaluate_imagenet_r', '--evaluate-imagenet-r', action='store_true',
                       help='release flag: same as --dataset imagenet-r')
    group.add_argument('--suite', action='store_true',
                       help='evaluate every standard dataset folder found under DATA_DIR, loading the model once')
    group.add_argument('--datasets', default=None,
                       help=f'suite: comma-separated subset of {",".join(SUITE_ORDER)}')
    group.add_argument('--dataset-dir', action='append', default=[], metavar='NAME=PATH',
                       help='suite: folder of one dataset when it is not under its standard name (repeatable)')
    group.add_argument('--allow-partial', action='store_true',
                       help='ImageNet-C: score the folders present, marking aggregates partial')
    group.add_argument('--extra-corruptions', action='store_true',
                       help='ImageNet-C: also the 4 held-out corruptions (reported, not in the aggregates)')
    group.add_argument('--clean-error', type=float, default=None, metavar='PERCENT',
                       help='clean ImageNet top-1 error for ImageNet-C relative_mce (suite: measured)')
    group.add_argument('--partial-results', default=None, metavar='PATH',
                       help='ImageNet-C resume file (default: beside --results-file)')
    group.add_argument('--save-every', type=int, default=50, metavar='N',
                       help='ImageNet-C: record finished folders for resuming every N batches')
    group.add_argument('--real-labels', default=None, metavar='FILE',
                       help='ImageNet-ReaL: real.json of google-research/reassessed-imagenet (default: timm\'s copy)')
    group.add_argument('--in-distribution', default=None, metavar='DIR',
                       help='ImageNet-O: the ImageNet val folder scored as in-distribution (suite: its ImageNet)')
    group.add_argument('--objectnet-pooling', default='max', choices=('max', 'template'),
                       help='ObjectNet: max of the mapped logits over the 113 classes (wise-ft), or the 1000-way '
                            'top-1 mapped to ObjectNet classes (ObjectNet\'s template)')
    group.add_argument('--human-data', default=None, metavar='DIR',
                       help='cue-conflict, edges, silhouettes and model-vs-human sets: model-vs-human\'s raw-data/ '
                            'folder; adds accuracy difference, observed and error consistency with the humans')
    add_attack_arguments(parser)
    group = parser.add_argument_group('running')
    group.add_argument('-b', '--batch-size', type=int, default=64, help='images per batch and device')
    group.add_argument('-j', '--workers', type=int, default=None,
                       help='loader processes (default: min(8, usable cores))')
    group.add_argument('--threads', type=int, default=None, metavar='N',
                       help='torch threads per process (default on a CPU: the usable cores, i.e. affinity and cgroup '
                            'quota, divided by the processes on this machine)')
    group.add_argument('--pin-mem', action='store_true', help='pin host memory for faster copies to the GPU')
    group.add_argument('--decode-on-device', action='store_true',
                       help='decode JPEGs in batches on the device (nvJPEG on CUDA) and resize there; workers only '
                            'read files; other formats are decoded by the workers as usual')
    group.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda', 'xla'),
                       help='xla: every TPU chip of this host (SPMD); auto picks it when PJRT_DEVICE is set')
    group.add_argument('--amp', action=argparse.BooleanOptionalAction, default=None,
                       help='mixed precision (autocast) with --amp-dtype (default: on for CUDA, off on CPU)')
    group.add_argument('--amp-dtype', default='bfloat16', choices=AMP_DTYPE_NAMES, help='autocast dtype with --amp')
    group.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=None,
                       help='channels-last memory format (default: on for CUDA, off on CPU)')
    group.add_argument('--log-freq', type=int, default=50, help='progress line every N batches')
    group = parser.add_argument_group('output')
    group.add_argument('--results-file', default='', metavar='PATH', help='results as .json, .csv or .md')
    group.add_argument('--figure', default='', metavar='PATH.png',
                       help='PNG: ImageNet-C heat map (corruption x severity) and top-1 bars across the sets')
    from robustcnn.tracking import add_tracking_arguments
    add_tracking_arguments(parser, default_place='beside --results-file (else in the current folder)')
    return parser


def request_from_args(args: argparse.Namespace) -> ValidationRequest:
    """Map the command line (release flags included) onto one request."""
    from robustcnn.benchmarks.runner import ValidationRequest
    dataset = args.dataset
    for flag, implied in (('evaluate_imagenet_c', 'imagenet-c'), ('evaluate_imagenet_r', 'imagenet-r')):
        if getattr(args, flag):
            if dataset not in (None, implied):
                raise UsageError(f'--{flag} contradicts --dataset {dataset}')
            dataset = implied
    if args.suite and dataset is not None:
        raise UsageError('--suite evaluates every dataset found; do not combine it with --dataset')
    dataset_dirs = {}
    for item in args.dataset_dir:
        name, separator, path = item.partition('=')
        if not separator or name not in BENCHMARK_NAMES:
            raise UsageError(f'--dataset-dir expects NAME=PATH with NAME in {", ".join(SUITE_ORDER)}, got {item!r}')
        dataset_dirs[name] = path
    suite_datasets = None
    if args.datasets:
        suite_datasets = [name.strip() for name in args.datasets.split(',') if name.strip()]
        unknown = [name for name in suite_datasets if name not in SUITE_ORDER]
        if unknown:
            raise UsageError(f'--datasets: unknown {", ".join(unknown)}; choose from {", ".join(SUITE_ORDER)}')
    if args.workers is not None and args.workers < 0:
        raise UsageError(f'--workers must be 0 or more, got {args.workers}')
    if args.threads is not None and args.threads < 1:
        raise UsageError(f'--threads must be at least 1, got {args.threads}')
    if args.save_every <= 0:
        raise UsageError(f'--save-every must be positive, got {args.save_every}')
    if args.log_freq < 0:
        raise UsageError(f'--log-freq must be 0 or more, got {args.log_freq}')
    if args.interpolation and args.interpolation not in INTERPOLATIONS:
        raise UsageError(f'--interpolation must be one of {", ".join(INTERPOLATIONS)}, got {args.interpolation!r}')
    if args.input_size is not None and args.input_size[0] != 3:
        raise UsageError(f'--input-size C H W: C must be 3 (images are read as RGB), got {args.input_size[0]}')
    check_normalization(args.mean, args.std, args.crop_pct)
    for flag in ('img_size', 'num_classes'):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise UsageError(f'--{flag.replace("_", "-")} must be positive, got {value}')
    return ValidationRequest(
        data_dir=args.data, dataset=dataset, model=args.model, checkpoint=args.checkpoint or None,
        pretrained=args.pretrained, use_ema=args.use_ema, num_classes=args.num_classes,
        class_map=args.class_map or None, suite=args.suite, suite_datasets=suite_datasets, dataset_dirs=dataset_dirs,
        resize_mode=args.resize_mode, img_size=args.img_size, input_size=args.input_size, crop_pct=args.crop_pct,
        interpolation=args.interpolation or None, mean=args.mean, std=args.std, batch_size=args.batch_size,
        workers=args.workers, pin_memory=args.pin_mem, decode_on_device=args.decode_on_device,
        amp_dtype=args.amp_dtype if args.amp else None,
        channels_last=bool(args.channels_last), fuse=args.fuse, log_freq=args.log_freq,
        results_file=args.results_file or None, figure=args.figure or None, partial_results=args.partial_results,
        allow_partial=args.allow_partial, extra_corruptions=args.extra_corruptions, clean_error=args.clean_error,
        group_sync_every=args.save_every,
        real_labels=args.real_labels, in_distribution=args.in_distribution, objectnet_pooling=args.objectnet_pooling,
        human_data=args.human_data, attack=attack_spec_from_args(args),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.figure and not args.figure.lower().endswith('.png'):
        raise UsageError(f'--figure must end in .png, got {args.figure}')
    from robustcnn.tracking import check_tracking_args
    check_tracking_args(args)
    request = request_from_args(args)
    with pretrained_download(args.pretrained):  # offline: one line instead of a minute of retries
        return _run(args, request)


def _run(args: argparse.Namespace, request: ValidationRequest) -> int:
    """Everything after parsing: torch and timm load here."""
    from robustcnn.benchmarks.runner import run_validation
    from robustcnn.engine.runtime import AMP_DTYPES, init_runtime
    from robustcnn.report import check_output_file, results_to_markdown

    for flag, path in (('--results-file', args.results_file), ('--figure', args.figure),
                       ('--partial-results', args.partial_results)):
        if path:  # before any work: a finished evaluation must have somewhere to go
            check_output_file(path, flag)

    try:
        runtime = init_runtime(args.device)
    except (RuntimeError, ValueError) as error:
        raise UsageError(str(error)) from None
    setup_logging(runtime.is_main)
    runtime.configure_threads(args.threads, log_level=logging.DEBUG)  # before its data checks' one-line errors
    # --batch-size is per device, as in train.py: an XLA host feeds all its chips from one loader
    request.batch_size = runtime.process_batch_size(request.batch_size)
    # Speed defaults: bf16 autocast and channels-last on CUDA unless --no-amp / --no-channels-last say otherwise.
    on_cuda = runtime.kind == 'cuda'
    request = dataclasses.replace(
        request, amp_dtype=args.amp_dtype if (args.amp if args.amp is not None else on_cuda) else None,
        channels_last=args.channels_last if args.channels_last is not None else on_cuda)
    try:
        runtime.check_amp_dtype(AMP_DTYPES[request.amp_dtype] if request.amp_dtype else None)
    except ValueError as error:
        raise UsageError(str(error)) from None
    with runtime.session():
        payload = run_validation(request, runtime)
    if runtime.is_main:
        sys.stdout.write(results_to_markdown(payload))
        from robustcnn.tracking import track_validation_run
        track_validation_run(args, payload)  # --log-tensorboard / --log-wandb
    return 0


if __name__ == '__main__':
    run_cli(main)
