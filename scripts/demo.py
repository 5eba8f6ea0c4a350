#!/usr/bin/env python3
"""Train and evaluate a small Robust-ResNet on the built-in synthetic robustness benchmark, on a CPU, in minutes.

    python scripts/demo.py                      # generate (once), train, evaluate, write report.md/.json/.png
    python scripts/demo.py --model resnet18     # the same benchmark for another timm model, to compare

The work is done by robustcnn.synthetic.demo (train.py's and validate.py's library code underneath).
"""
from __future__ import annotations

import sys
from pathlib import Path

if __name__ == '__main__':
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
    from robustcnn.cli import run_cli
    from robustcnn.synthetic.demo import main
    run_cli(main, prog='demo.py')
