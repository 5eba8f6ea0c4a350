#!/usr/bin/env python3
"""Compare models and design knobs on one benchmark, over seeds: the paper's section-4 table in one command.

    python scripts/study.py --models resnet_ablation_nano --vary kernel_size=3,7 --seeds 0,1 --epochs 4
    python scripts/study.py --output ./output/study --report-only     # rebuild study.md/.json/.png from the runs

The work is done by robustcnn.study (the demo's, train.py's and validate.py's library code underneath).
"""
from __future__ import annotations

import sys
from pathlib import Path

if __name__ == '__main__':
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
    from robustcnn.cli import run_cli
    from robustcnn.study import main
    run_cli(main, prog='study.py')
