#!/usr/bin/env python3
"""Evaluate a model on ImageNet and the out-of-distribution suite (Stylized-ImageNet, ImageNet-C, -R, -Sketch, -A,
-V2) with the literature's exact metrics. See TEST.md.

    python validate.py DATA_DIR --dataset imagenet-r --model robust_resnet_dw_small --checkpoint ckpt.pth \\
        --results-file results.json
    python validate.py ROOT --suite --model robust_resnet_dw_small --checkpoint ckpt.pth --results-file table.md
    torchrun --nproc_per_node 8 validate.py ...   (each image counted exactly once)
"""
from __future__ import annotations

from typing import Sequence

# Only what parsing needs: torch and timm are loaded after the arguments are checked (see robustcnn/__init__.py).
from robustcnn.cli import pretrained_download, run_cli
from robustcnn.validate_config import build_validate_parser as build_parser, parse_validate_args, request_from_args

__all__ = ['build_parser', 'request_from_args', 'main']


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_validate_args(argv)  # before torch and timm are loaded: --help and argument errors answer at once
    request = request_from_args(args)
    with pretrained_download(args.pretrained):  # offline: one line instead of a minute of retries
        from robustcnn.benchmarks.runner import run_validation_command
        return run_validation_command(request, args)


if __name__ == '__main__':
    run_cli(main)
