"""timm's own model test-suite, run on every robust_resnet* model (see scripts/run_timm_model_tests.py).

It needs the package index once, to fetch timm's source release (cached afterwards); set
ROBUSTCNN_SKIP_TIMM_SUITE=1 to skip it when offline.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm

SCRIPT = Path(__file__).parents[1] / 'scripts' / 'run_timm_model_tests.py'


@pytest.mark.slow
@pytest.mark.skipif(bool(os.environ.get('ROBUSTCNN_SKIP_TIMM_SUITE')), reason='ROBUSTCNN_SKIP_TIMM_SUITE is set')
def test_timm_model_suite_passes_for_every_robust_resnet():
    result = subprocess.run([sys.executable, str(SCRIPT), '-W', 'ignore'], capture_output=True, text=True)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr
    assert result.returncode == 0, f'timm suite failed:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}'
    passed = int(re.search(r'(\d+) passed', summary).group(1))
    models = len(timm.list_models('robust_resnet*'))
    assert 'failed' not in summary and 'error' not in summary
    # forward, backward, cfgs, features, intermediates, torchscript, fx, pruning: at least 10 tests per model
    assert passed >= 10 * models, summary
