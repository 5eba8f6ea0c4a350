"""``python -m robustcnn`` / ``robustcnn``: list the models, convert or export a checkpoint, fetch released weights.

    robustcnn                          version and registered models
    robustcnn models [--params]        the same, optionally with parameter counts
    robustcnn convert CKPT OUT.safetensors [--use-ema]
    robustcnn export CKPT DIR [--results FILE...] [--push-to-hub USER/REPO]   a folder timm / the Hub load
    robustcnn download NAME... [--url URL] [--force]   the released weights, into the cache timm then reads
    robustcnn demo [DEMO OPTIONS]      the synthetic shape-vs-texture demo (same as scripts/demo.py)
    robustcnn study [STUDY OPTIONS]    a grid of models and design knobs on one benchmark (scripts/study.py)
    robustcnn speed [SPEED OPTIONS]    throughput, pipeline speed, the GPU device check (same as scripts/speed.py)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import timm
import torch

from . import __version__
from .checkpoint import (SAFETENSORS_METADATA_KEY, extract_state_dict, load_checkpoint_file, portable_metadata,
                         save_safetensors)
from .cli import UsageError, run_cli


def list_models(show_params: bool) -> int:
    print(f'robustcnn {__version__} (timm {timm.__version__}, torch {torch.__version__})')
    print('registered models:')
    for name in timm.list_models('robust_resnet*'):
        if show_params:
            with torch.device('meta'):
                model = timm.create_model(name)
            count = sum(parameter.numel() for parameter in model.parameters())
            print(f'  {name:40s} {count / 1e6:7.2f} M params')
        else:
            print(f'  {name}')
    return 0


def convert(checkpoint: Path, output: Path, use_ema: bool) -> int:
    """Write the weights of any checkpoint form as a ``.safetensors`` file (no pickle, safe to share).

    The training metadata (model name and arguments, class names, input size, normalization) goes into the file's
    header, so ``validate.py --checkpoint OUT.safetensors`` needs no more flags than with the original checkpoint.
    """
    if output.suffix != '.safetensors':
        raise UsageError(f'output {output} must end in .safetensors')
    loaded = load_checkpoint_file(checkpoint)
    state_dict = extract_state_dict(loaded, use_ema=use_ema)
    tensors = {key: value for key, value in state_dict.items() if isinstance(value, torch.Tensor)}
    header = {'source': checkpoint.name, 'robustcnn_version': __version__}
    metadata = portable_metadata(loaded)
    if metadata:
        header[SAFETENSORS_METADATA_KEY] = json.dumps(metadata, default=str)
    save_safetensors(tensors, output, metadata=header)
    kept = f' and its metadata ({", ".join(sorted(metadata))})' if metadata else ''
    print(f'wrote {len(tensors)} tensors{kept} to {output}')
    return 0


def export(args: argparse.Namespace) -> int:
    from .export import export_for_hub, push_folder_to_hub
    folder = export_for_hub(args.checkpoint, args.output, model_name=args.model, use_ema=args.use_ema,
                            results_files=args.results)
    print(f'wrote {folder} (model.safetensors, config.json, README.md); load it with '
          f"timm.create_model('local-dir:{folder}', pretrained=True)")
    if args.push_to_hub:
        print(f'pushed to {push_folder_to_hub(folder, args.push_to_hub, private=args.private)}')
    return 0


def download(args: argparse.Namespace) -> int:
    from .models.released import download_weights
    if args.url and len(args.names) > 1:
        raise UsageError('--url is the source of one model; give one NAME with it')
    for name in args.names:
        if not timm.is_model(name):
            raise UsageError(f'unknown model {name!r}; see `robustcnn models`')
    for name in args.names:
        path = download_weights(name, url=args.url, force=args.force, quiet=args.quiet)
        print(f'{name}: {path} (verified); timm.create_model({name!r}, pretrained=True) and validate.py '
              f'--model {name} --pretrained use it')
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='robustcnn', description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest='command')
    models = commands.add_parser('models', help='print the version and the registered models')
    models.add_argument('--params', action='store_true', help='also print each model\'s parameter count')
    converter = commands.add_parser('convert', help='convert a .pth/.pth.tar checkpoint to .safetensors')
    converter.add_argument('checkpoint', type=Path)
    converter.add_argument('output', type=Path)
    converter.add_argument('--use-ema', action='store_true', help='take the EMA weights (state_dict_ema)')
    exporter = commands.add_parser('export', help='write a checkpoint as a folder in timm\'s Hugging Face Hub layout '
                                   '(model.safetensors, config.json, README.md model card)')
    exporter.add_argument('checkpoint', type=Path)
    exporter.add_argument('output', type=Path, metavar='DIR')
    exporter.add_argument('--model', default=None, help='timm model name (default: the checkpoint\'s metadata)')
    exporter.add_argument('--use-ema', action='store_true', help='take the EMA weights (state_dict_ema)')
    exporter.add_argument('--results', nargs='+', default=[], type=Path, metavar='FILE',
                          help='validate.py --results-file .json files: the model card\'s evaluation table')
    exporter.add_argument('--push-to-hub', default=None, metavar='USER/REPO',
                          help='then upload the folder to this Hugging Face Hub repository (needs network and login)')
    exporter.add_argument('--private', action='store_true', help='with --push-to-hub: create the repository private')
    downloader = commands.add_parser('download', help='fetch the authors\' released weights (Google Drive, via gdown), '
                                     'verify and cache them for timm.create_model(NAME, pretrained=True)')
    downloader.add_argument('names', nargs='+', metavar='NAME',
                            help='robust_resnet_dw_small, robust_resnet_inverted_dw_small, '
                                 'robust_resnet_up_inverted_dw_small, robust_resnet_down_inverted_dw_small')
    downloader.add_argument('--url', default=None, help='fetch from this URL instead of the released link (one NAME)')
    downloader.add_argument('--force', action='store_true', help='download again even if a verified copy is cached')
    downloader.add_argument('--quiet', action='store_true', help='no progress bar')
    commands.add_parser('demo', add_help=False, help='train and evaluate on the synthetic robustness benchmark '
                        '(scripts/demo.py; `robustcnn demo --help` lists its options)')
    commands.add_parser('study', add_help=False, help='compare models and design knobs over seeds on one benchmark '
                        '(scripts/study.py; `robustcnn study --help` lists its options)')
    commands.add_parser('speed', add_help=False, help='throughput and pipeline speed, the GPU device check '
                        '(scripts/speed.py; `robustcnn speed --help` lists its options)')
    parser.add_argument('--params', action='store_true', help=argparse.SUPPRESS)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ['demo']:  # everything after the word is the demo's own command line
        from .synthetic.demo import main as demo_main
        return demo_main(argv[1:])
    if argv[:1] == ['study']:  # the same for the study
        from .study import main as study_main
        return study_main(argv[1:])
    if argv[:1] == ['speed']:  # likewise the speed tool's
        from .speed.cli import main as speed_main
        return speed_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == 'convert':
        return convert(args.checkpoint, args.output, args.use_ema)
    if args.command == 'export':
        return export(args)
    if args.command == 'download':
        return download(args)
    return list_models(args.params)


def console_main() -> None:
    run_cli(main, prog='robustcnn')


if __name__ == '__main__':
    console_main()
