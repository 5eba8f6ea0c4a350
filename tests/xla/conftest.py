"""XLA tests run only where torch_xla is installed and ``PJRT_DEVICE`` is set (``scripts/test_xla.sh``).

Elsewhere (the main suite, the main environment) every module here that needs torch_xla is skipped at collection,
never collected as a failure. The shared helpers of ``tests/`` are importable from here too.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parents[1]
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

if os.environ.get('PJRT_DEVICE'):
    # The XLA runtime (SPMD over the devices) must exist before autograd's first backward in this process: the
    # engine sizes its device queues then, and the CPU-only tests here run backward before the XLA ones.
    try:
        import torch_xla  # noqa: F401
    except ImportError:
        pass
    else:
        from robustcnn.engine.runtime import init_runtime
        init_runtime('xla')
