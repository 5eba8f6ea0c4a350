#!/usr/bin/env python3
"""Train a Robust-ResNet (or any timm model) with the DeiT recipe; see TRAIN.md.

    python train.py /data/imagenet --config configs/robust_resnet_dw_small.yaml
    torchrun --nproc_per_node 8 train.py /data/imagenet --config configs/robust_resnet_dw_small.yaml
"""
from __future__ import annotations

import logging
import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from robustcnn.cli import pretrained_download
    from robustcnn.config import parse_train_args

    args = parse_train_args(argv)  # before torch and timm are loaded: --help and flag errors answer at once
    with pretrained_download(args.pretrained):  # offline: one line instead of a minute of retries
        from robustcnn.engine.train_loop import NonFiniteLossError
        from robustcnn.engine.trainer import run_training

        try:
            run_training(args)
        except NonFiniteLossError as error:
            logging.getLogger('train').error('%s', error)
            print(f'train.py: error: {error}', file=sys.stderr)
            return 3
    return 0


if __name__ == '__main__':
    from robustcnn.cli import run_cli
    run_cli(main, prog='train.py')
