"""``python -m robustcnn`` / ``robustcnn``: list the models, convert or export a checkpoint, fetch released weights.

    robustcnn                          version and registered models (Robust-ResNet, the ResNet ablation)
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
import importlib
import json
import sys
from pathlib import Path
from typing import Sequence

from . import __version__
from .cli import DefaultsHelpFormatter, OneLineErrorParser, UsageError, run_cli

# Commands with a command line of their own: name -> (module whose main(argv, prog) runs it, one-line help).
# Everything after the name is handed over unparsed, so `robustcnn NAME --help` is that command's own help.
FORWARDED_COMMANDS: dict[str, tuple[str, str]] = {
    'demo': ('robustcnn.synthetic.demo', 'train and evaluate on the synthetic robustness benchmark (the same as '
                                         'scripts/demo.py; "robustcnn demo --help" lists its options)'),
    'study': ('robustcnn.study', 'compare models and design knobs over seeds on one benchmark (the same as '
                                 'scripts/study.py; "robustcnn study --help" lists its options)'),
    'speed': ('robustcnn.speed.cli', 'throughput and pipeline speed, the GPU device check (the same as '
                                     'scripts/speed.py; "robustcnn speed --help" lists its options)'),
}


def list_models(show_params: bool) -> int:
    import timm
    import torch

    from .models import MODEL_FAMILIES

    print(f'robustcnn {__version__} (timm {timm.__version__}, torch {torch.__version__})')
    print('registered models:')
    for family in MODEL_FAMILIES:
        print(f'  {family.title}:')
        for name in timm.list_models(family.pattern):
            if show_params:
                with torch.device('meta'):
                    model = timm.create_model(name)
                count = sum(parameter.numel() for parameter in model.parameters())
                print(f'    {name:40s} {count / 1e6:7.2f} M params')
            else:
                print(f'    {name}')
    return 0


def convert(checkpoint: Path, output: Path, use_ema: bool) -> int:
    """Write the weights of any checkpoint form as a ``.safetensors`` file (no pickle, safe to share).

    The training metadata (model name and arguments, class names, input size, normalization) goes into the file's
    header, so ``validate.py --checkpoint OUT.safetensors`` needs no more flags than with the original checkpoint.
    """
    if output.suffix != '.safetensors':
        raise UsageError(f'output {output} must end in .safetensors')
    import torch

    from .checkpoint import (SAFETENSORS_METADATA_KEY, CheckpointMetadata, extract_state_dict, load_checkpoint_file,
                             save_safetensors)
    loaded = load_checkpoint_file(checkpoint)
    state_dict = extract_state_dict(loaded, use_ema=use_ema)
    tensors = {key: value for key, value in state_dict.items() if isinstance(value, torch.Tensor)}
    header = {'source': checkpoint.name, 'robustcnn_version': __version__}
    metadata = CheckpointMetadata.from_checkpoint(loaded, checkpoint, complete=True).to_dict()
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
    import timm

    import robustcnn  # noqa: F401  (registers the robust_resnet_* models)
    for name in args.names:
        if not timm.is_model(name):
            raise UsageError(f'unknown model {name!r}; see `robustcnn models`')
    for name in args.names:
        path = download_weights(name, url=args.url, force=args.force, quiet=args.quiet)
        print(f'{name}: {path} (verified); timm.create_model({name!r}, pretrained=True) and validate.py '
              f'--model {name} --pretrained use it')
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog='robustcnn', description='Robust-ResNet models for timm: list them, convert or export checkpoints, fetch the '
        'released weights, run the demo, a study or the speed tool. '
        'Without a command: the version and the registered models.', formatter_class=DefaultsHelpFormatter)
    commands = parser.add_subparsers(dest='command', metavar='COMMAND')
    models = commands.add_parser('models', help='print the version and the registered models',
                                 formatter_class=DefaultsHelpFormatter)
    models.add_argument('--params', action='store_true', help='also print each model\'s parameter count')
    converter = commands.add_parser('convert', help='convert a .pth/.pth.tar checkpoint to .safetensors',
                                    formatter_class=DefaultsHelpFormatter)
    converter.add_argument('checkpoint', type=Path, help='checkpoint to read (.pth, .pth.tar)')
    converter.add_argument('output', type=Path, help='file to write (.safetensors)')
    converter.add_argument('--use-ema', action='store_true', help='take the EMA weights (state_dict_ema)')
    exporter = commands.add_parser('export', help='write a checkpoint as a folder in timm\'s Hugging Face Hub layout '
                                   '(model.safetensors, config.json, README.md model card)',
                                   formatter_class=DefaultsHelpFormatter)
    exporter.add_argument('checkpoint', type=Path, help='checkpoint to export (.pth, .pth.tar, .safetensors)')
    exporter.add_argument('output', type=Path, metavar='DIR', help='folder to write (created if missing)')
    exporter.add_argument('--model', default=None, help='timm model name (default: the checkpoint\'s metadata)')
    exporter.add_argument('--use-ema', action='store_true', help='take the EMA weights (state_dict_ema)')
    exporter.add_argument('--results', nargs='+', default=[], type=Path, metavar='FILE',
                          help='validate.py --results-file .json files: the model card\'s evaluation table')
    exporter.add_argument('--push-to-hub', default=None, metavar='USER/REPO',
                          help='then upload the folder to this Hugging Face Hub repository (needs network and login)')
    exporter.add_argument('--private', action='store_true', help='with --push-to-hub: create the repository private')
    downloader = commands.add_parser('download', help='fetch the authors\' released weights (Google Drive, via gdown), '
                                     'verify and cache them for timm.create_model(NAME, pretrained=True)',
                                     formatter_class=DefaultsHelpFormatter)
    downloader.add_argument('names', nargs='+', metavar='NAME',
                            help='robust_resnet_dw_small, robust_resnet_inverted_dw_small, '
                                 'robust_resnet_up_inverted_dw_small, robust_resnet_down_inverted_dw_small')
    downloader.add_argument('--url', default=None, help='fetch from this URL instead of the released link (one NAME)')
    downloader.add_argument('--force', action='store_true', help='download again even if a verified copy is cached')
    downloader.add_argument('--quiet', action='store_true', help='no progress bar')
    for name, (_, help_text) in FORWARDED_COMMANDS.items():
        commands.add_parser(name, add_help=False, help=help_text)
    parser.add_argument('--params', action='store_true', help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in FORWARDED_COMMANDS:  # everything after the word is that command's own command line
        module = importlib.import_module(FORWARDED_COMMANDS[argv[0]][0])
        return module.main(argv[1:], prog=f'robustcnn {argv[0]}')
    args = build_parser().parse_args(argv)
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
