"""validate.py's command line: its flags, their checks, and the mapping onto a ValidationRequest.

Beside train.py's (:mod:`robustcnn.config`) and built the same way: every value is checked by a typed checker of
:mod:`robustcnn.arguments` as it is parsed, what only the whole request can check is checked by
``ValidationRequest`` itself, and nothing here imports torch, so ``--help`` and every argument error answer at once.
Kept as its own module rather than folded into ``config.py`` (train.py's flags and YAML configs, which many
modules import): the two command lines share their checkers, not their flags.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from .adversarial.spec import add_attack_arguments, attack_spec_from_args
from .arguments import (AMP_DTYPE_NAMES, RESIZE_MODES, check_output_file, crop_fraction, finite_float, interpolation,
                        non_negative_int, percent, positive_float, positive_int)
from .benchmarks import BENCHMARK_NAMES, SUITE_ORDER
from .benchmarks.request import ValidationRequest
from .cli import DefaultsHelpFormatter, OneLineErrorParser, UsageError
from .tracking import add_tracking_arguments, check_tracking_args

__all__ = ['build_validate_parser', 'parse_validate_args', 'request_from_args']


def _dataset_dir(text: str) -> tuple[str, str]:
    """``--dataset-dir NAME=PATH``: the folder of one set of a suite run."""
    name, separator, path = text.partition('=')
    if not separator or name not in BENCHMARK_NAMES:
        raise argparse.ArgumentTypeError(f'expects NAME=PATH with NAME in {", ".join(SUITE_ORDER)}, got {text!r}')
    return name, path


def _dataset_list(text: str) -> list[str]:
    """``--datasets imagenet,imagenet-c``: a subset of the suite."""
    names = [name.strip() for name in text.split(',') if name.strip()]
    unknown = [name for name in names if name not in SUITE_ORDER]
    if unknown:
        raise argparse.ArgumentTypeError(f'unknown {", ".join(unknown)}; choose from {", ".join(SUITE_ORDER)}')
    return names


_dataset_dir.__name__ = 'NAME=PATH'
_dataset_list.__name__ = 'list of datasets'


def build_validate_parser() -> argparse.ArgumentParser:
    """All of validate.py's flags (the original release's TEST.md flags included), each value checked by its type."""
    parser = OneLineErrorParser(
        prog='validate.py',
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
    group.add_argument('--num-classes', type=positive_int, default=None,
                       help='classifier outputs (default: from the labels)')
    group.add_argument('--class-map', default='', metavar='FILE',
                       help='class names in classifier order (.txt one per line, or .json)')
    group.add_argument('--no-fuse', dest='fuse', action='store_false',
                       help='do not fold BatchNorm into convolutions for inference')
    group = parser.add_argument_group('preprocessing (defaults: the model\'s cfg and the dataset\'s resize mode)')
    group.add_argument('--resize_mode', '--resize-mode', dest='resize_mode', choices=RESIZE_MODES, default=None,
                       help='resize_center_crop (ImageNet, -R, -A, -Sketch, -V2), none (Stylized-ImageNet, '
                            'ImageNet-C, cue-conflict and the model-vs-human sets: already 224x224), resize (squash '
                            'to the input size)')
    group.add_argument('--img-size', type=positive_int, default=None, metavar='N', help='input image size')
    group.add_argument('--input-size', type=positive_int, nargs=3, default=None, metavar=('C', 'H', 'W'),
                       help='input size C H W (default: the checkpoint\'s or model cfg\'s)')
    group.add_argument('--crop-pct', type=crop_fraction, default=None, help='center crop fraction (resize_center_crop)')
    group.add_argument('--interpolation', type=interpolation, default='',
                       help='resize interpolation (default: model cfg, bicubic)')
    group.add_argument('--mean', type=finite_float, nargs='+', default=None, metavar='MEAN',
                       help='normalization mean per channel (default: the checkpoint\'s or model cfg\'s)')
    group.add_argument('--std', type=positive_float, nargs='+', default=None, metavar='STD',
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
    group.add_argument('--datasets', type=_dataset_list, default=None,
                       help=f'suite: comma-separated subset of {",".join(SUITE_ORDER)}')
    group.add_argument('--dataset-dir', type=_dataset_dir, action='append', default=[], metavar='NAME=PATH',
                       help='suite: folder of one dataset when it is not under its standard name (repeatable)')
    group.add_argument('--allow-partial', action='store_true',
                       help='ImageNet-C: score the folders present, marking aggregates partial')
    group.add_argument('--extra-corruptions', action='store_true',
                       help='ImageNet-C: also the 4 held-out corruptions (reported, not in the aggregates)')
    group.add_argument('--clean-error', type=percent, default=None, metavar='PERCENT',
                       help='clean ImageNet top-1 error for ImageNet-C relative_mce (suite: measured)')
    group.add_argument('--partial-results', default=None, metavar='PATH',
                       help='resume file of ImageNet-C and --attack (default: beside --results-file); with --suite, '
                            'each set that resumes gets its own file, PATH with the set\'s name before the suffix')
    group.add_argument('--save-every', type=positive_int, default=50, metavar='N',
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
    group.add_argument('-b', '--batch-size', type=positive_int, default=64, help='images per batch and device')
    group.add_argument('-j', '--workers', type=non_negative_int, default=None,
                       help='loader processes (default: min(8, usable cores))')
    group.add_argument('--threads', type=positive_int, default=None, metavar='N',
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
    group.add_argument('--log-freq', type=non_negative_int, default=50, help='progress line every N batches')
    group = parser.add_argument_group('output')
    group.add_argument('--results-file', default='', metavar='PATH', help='results as .json, .csv or .md')
    group.add_argument('--figure', default='', metavar='PATH.png',
                       help='PNG: ImageNet-C heat map (corruption x severity) and top-1 bars across the sets')
    add_tracking_arguments(parser, default_place='beside --results-file (else in the current folder)')
    return parser


def parse_validate_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check every argument, the output paths included (their suffixes: ValidationRequest), before torch
    loads: a finished evaluation must have somewhere to go, and a typo must cost a second."""
    args = build_validate_parser().parse_args(argv)
    for flag, path in (('--results-file', args.results_file), ('--figure', args.figure),
                       ('--partial-results', args.partial_results)):
        if path:
            check_output_file(path, flag)
    check_tracking_args(args)
    return args


def request_from_args(args: argparse.Namespace) -> ValidationRequest:
    """Map the command line (release flags included) onto one request; the request checks itself."""
    dataset = args.dataset
    for flag, implied in (('evaluate_imagenet_c', 'imagenet-c'), ('evaluate_imagenet_r', 'imagenet-r')):
        if getattr(args, flag):
            if dataset not in (None, implied):
                raise UsageError(f'--{flag} contradicts --dataset {dataset}')
            dataset = implied
    return ValidationRequest(
        data_dir=args.data, dataset=dataset, model=args.model, checkpoint=args.checkpoint or None,
        pretrained=args.pretrained, use_ema=args.use_ema, num_classes=args.num_classes,
        class_map=args.class_map or None, suite=args.suite, suite_datasets=args.datasets,
        dataset_dirs=dict(args.dataset_dir),
        resize_mode=args.resize_mode, img_size=args.img_size, input_size=args.input_size, crop_pct=args.crop_pct,
        interpolation=args.interpolation or None, mean=args.mean, std=args.std, batch_size=args.batch_size,
        workers=args.workers, pin_memory=args.pin_mem, decode_on_device=args.decode_on_device,
        amp=args.amp, amp_dtype=args.amp_dtype, channels_last=args.channels_last, fuse=args.fuse,
        log_freq=args.log_freq, results_file=args.results_file or None, figure=args.figure or None,
        partial_results=args.partial_results, allow_partial=args.allow_partial,
        extra_corruptions=args.extra_corruptions, clean_error=args.clean_error, group_sync_every=args.save_every,
        real_labels=args.real_labels, in_distribution=args.in_distribution, objectnet_pooling=args.objectnet_pooling,
        human_data=args.human_data, attack=attack_spec_from_args(args),
    )
