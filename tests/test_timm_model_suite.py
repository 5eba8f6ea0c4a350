"""timm's own model test-suite, run on every robust_resnet* and resnet_ablation* model (see
scripts/run_timm_model_tests.py).

It needs the package index once, to fetch timm's source release (cached afterwards); set
ROBUSTCNN_SKIP_TIMM_SUITE=1 to skip it when offline.
"""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm

from robustcnn.models import MODEL_FAMILIES

SCRIPT = Path(__file__).parents[1] / 'scripts' / 'run_timm_model_tests.py'


PROGRESS_SECONDS = 30.0


def run_with_progress(command: list[str], say) -> subprocess.CompletedProcess:
    """Run ``command``, keeping its output, and ``say`` how far pytest's ``[ 42%]`` marks have got every
    :data:`PROGRESS_SECONDS` (the suite runs for many minutes on a small machine; silence looks like a hang)."""
    started = last = time.monotonic()
    lines = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            percent = re.search(r'\[\s*(\d+)%\]\s*$', line)
            now = time.monotonic()
            if percent and now - last >= PROGRESS_SECONDS:
                last = now
                say(f'timm model suite: {percent.group(1)}% done after {(now - started) / 60:.0f} min')
    output = ''.join(lines)
    return subprocess.CompletedProcess(command, process.returncode, output, '')


@pytest.mark.slow
@pytest.mark.skipif(bool(os.environ.get('ROBUSTCNN_SKIP_TIMM_SUITE')), reason='ROBUSTCNN_SKIP_TIMM_SUITE is set')
def test_timm_model_suite_passes_for_every_model_we_register(capsys):
    def say(message: str) -> None:
        with capsys.disabled():  # to the terminal, past pytest's capture
            print(f'\n{message}', flush=True)

    say('timm model suite: fetching timm\'s source release (once) and running its model tests on every '
        'robust_resnet* and resnet_ablation* model; tens of minutes on a 2-core machine '
        '(ROBUSTCNN_SKIP_TIMM_SUITE=1 skips it)')
    result = run_with_progress([sys.executable, str(SCRIPT), '-W', 'ignore'], say)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ''
    assert result.returncode == 0, f'timm suite failed:\n{result.stdout[-6000:]}'
    passed = int(re.search(r'(\d+) passed', summary).group(1))
    models = sum(len(timm.list_models(family.pattern)) for family in MODEL_FAMILIES)
    assert 'failed' not in summary and 'error' not in summary
    # forward, backward, cfgs, features, intermediates, torchscript, fx, pruning: at least 10 tests per model
    assert passed >= 10 * models, summary


def test_progress_lines_follow_the_percent_marks(monkeypatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], 'PROGRESS_SECONDS', 0.0)
    said = []
    script = 'print(".....  [ 10%]"); print("x"); print("......  [100%]"); print("5 passed in 1.00s")'
    result = run_with_progress([sys.executable, '-c', script], said.append)
    assert result.returncode == 0 and result.stdout.strip().splitlines()[-1] == '5 passed in 1.00s'
    assert [line.split(' done')[0] for line in said] == ['timm model suite: 10%', 'timm model suite: 100%']
