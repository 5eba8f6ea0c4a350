"""The speed tool's command line (``python scripts/speed.py`` / ``python -m robustcnn speed``).

Training and inference throughput of the Robust-ResNets next to timm's reference models, in one run:

    python scripts/speed.py                                  # 4 Robust-ResNets + DeiT-S, ResNet-50, ConvNeXt-T
    python scripts/speed.py --device cpu --threads 1 --timer cpu --modes infer --variants base,unfused
    python scripts/speed.py --device cuda -b 128 --variants base,amp,amp+channels_last,amp+channels_last+compile
    python scripts/speed.py imagenet-c --workers 0,2        # one pipeline vs a DataLoader per folder
    python scripts/speed.py train-loop                       # our train loop vs a bare step
    python scripts/speed.py device-check OUT_DIR             # everything a GPU loan should measure (device_check.sh)

Variants join flags with '+': base (float32), amp (bf16 autocast), channels_last, compile (torch.compile),
unfused (inference without BatchNorm folding). See BENCHMARKS.md for measured numbers.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import torch

from ..cli import UsageError, setup_logging
from ..engine.runtime import AMP_DTYPES, resolve_device_kind
from .throughput import (REFERENCE_MODELS, ROBUST_MODELS, SpeedSettings, add_reference_ratios, format_table,
                         machine_info, measure_models, parse_variant, write_results)

__all__ = ['build_parser', 'main']

SUBCOMMANDS = ('imagenet-c', 'train-loop', 'device-check')


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(',') if name.strip()]


def build_parser(prog: str = 'speed.py') -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split('\n')[2],
                                     epilog=f'sub-commands (each has its own --help): {", ".join(SUBCOMMANDS)}',
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--models', default=','.join(ROBUST_MODELS), help='comma-separated timm model names')
    parser.add_argument('--references', default=','.join(REFERENCE_MODELS),
                        help='reference models measured in the same run (ratios against each); "" for none')
    parser.add_argument('--modes', default='train,infer', help='train, infer or both')
    parser.add_argument('--variants', default=None,
                        help='comma-separated; default: base,unfused on CPU, base,amp+channels_last on CUDA')
    parser.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'))
    parser.add_argument('-b', '--batch-size', type=int, default=None, help='default: 8 on CPU, 128 on CUDA')
    parser.add_argument('--img-size', type=int, default=None, help='default: each model\'s own input size')
    parser.add_argument('--amp-dtype', default='bfloat16', choices=tuple(AMP_DTYPES))
    parser.add_argument('--warmup', type=int, default=2, help='untimed steps first')
    parser.add_argument('--iterations', type=int, default=5, help='timed steps per repeat')
    parser.add_argument('--repeats', type=int, default=3, help='timed blocks; the median block is reported')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch\'s choice)')
    parser.add_argument('--timer', default='wall', choices=('wall', 'cpu'),
                        help='cpu: process CPU seconds, much steadier on a shared CPU (CPU device only)')
    parser.add_argument('--results-file', default='', metavar='PATH', help='.json or .csv (written atomically)')
    return parser


def main(argv: Sequence[str] | None = None, prog: str = 'speed.py') -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == 'device-check':
        from .device_check import main as device_check_main
        return device_check_main(argv[1:])
    if argv and argv[0] in ('imagenet-c', 'train-loop'):
        from .pipelines import main as pipelines_main
        return pipelines_main(argv[0], argv[1:])
    args = build_parser(prog).parse_args(argv)
    setup_logging(True)
    device = resolve_device_kind(args.device)
    if args.timer == 'cpu' and device != 'cpu':
        raise UsageError('--timer cpu measures CPU seconds; use it with --device cpu')
    if args.threads is not None:
        if args.threads <= 0:
            raise UsageError(f'--threads must be positive, got {args.threads}')
        torch.set_num_threads(args.threads)
    for flag in ('warmup', 'iterations', 'repeats', 'batch_size', 'img_size'):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == 'warmup' else 1):
            raise UsageError(f'--{flag.replace("_", "-")} must be positive, got {value}')
    modes = _names(args.modes)
    if not modes or any(mode not in ('train', 'infer') for mode in modes):
        raise UsageError(f'--modes takes train and/or infer, got {args.modes!r}')
    variants = _names(args.variants) if args.variants else (
        ['base', 'unfused'] if device == 'cpu' else ['base', 'amp+channels_last'])
    for variant in variants:
        try:
            parse_variant(variant)
        except ValueError as error:
            raise UsageError(str(error)) from None
    if args.results_file and not args.results_file.lower().endswith(('.json', '.csv')):
        raise UsageError(f'--results-file must end in .json or .csv, got {args.results_file}')
    references = _names(args.references)
    models = _names(args.models) + [name for name in references if name not in _names(args.models)]
    import timm
    import robustcnn  # noqa: F401
    unknown = [name for name in models if not timm.is_model(name)]
    if unknown:
        raise UsageError(f'unknown model(s): {", ".join(unknown)} (see timm.list_models())')

    template = SpeedSettings(
        model='', batch_size=args.batch_size or (8 if device == 'cpu' else 128), img_size=args.img_size,
        device=device, amp_dtype=args.amp_dtype, warmup=args.warmup, iterations=args.iterations,
        repeats=args.repeats, timer=args.timer)
    machine = machine_info(device)
    print(' '.join(f'{key}={value}' for key, value in machine.items()), flush=True)

    def progress(result) -> None:
        state = f'error: {result.error}' if result.error else f'{result.images_per_second:.2f} img/s, ' \
                                                                f'{result.step_ms:.1f} ms/step'
        print(f'{result.model} {result.mode} {result.variant}: {state}', flush=True)

    results = measure_models(models, modes, variants, template, on_result=progress)
    add_reference_ratios(results, references)
    sys.stdout.write(format_table(results, references))
    if args.results_file:
        write_results(results, args.results_file, machine)
        print(f'results written to {os.path.abspath(args.results_file)}')
    return 1 if any(result.error for result in results) else 0
