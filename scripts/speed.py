#!/usr/bin/env python3
"""Training and inference throughput, ImageNet-C pipeline speed and the GPU device check (see BENCHMARKS.md).

    python scripts/speed.py --help                  # throughput of the Robust-ResNets next to the references
    python scripts/speed.py imagenet-c --help       # one pipeline vs a DataLoader per folder
    python scripts/speed.py train-loop --help       # our train loop vs a bare step
    python scripts/speed.py device-check --help     # what scripts/device_check.sh runs

The work is done by robustcnn.speed (the same as ``python -m robustcnn speed``).
"""
from __future__ import annotations

import sys
from pathlib import Path

if __name__ == '__main__':
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
    from robustcnn.cli import run_cli
    from robustcnn.speed.cli import main
    run_cli(main, prog='speed.py')
