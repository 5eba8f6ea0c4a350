"""``python -m robustcnn`` / ``robustcnn``: print the version and the registered Robust-ResNet models."""
from __future__ import annotations

import argparse
from typing import Sequence

import timm
import torch

from . import __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='robustcnn', description=__doc__)
    parser.add_argument('--params', action='store_true', help='also build each model and print its parameter count')
    args = parser.parse_args(argv)
    print(f'robustcnn {__version__} (timm {timm.__version__}, torch {torch.__version__})')
    print('registered models:')
    for name in timm.list_models('robust_resnet*'):
        if args.params:
            with torch.device('meta'):
                model = timm.create_model(name)
            count = sum(parameter.numel() for parameter in model.parameters())
            print(f'  {name:40s} {count / 1e6:7.2f} M params')
        else:
            print(f'  {name}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
