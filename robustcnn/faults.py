"""Fault injection for the kill-anywhere tests: SIGKILL this process at a named point of the work.

``ROBUSTCNN_KILL_AT="validation-batch:2"`` kills the process when it reaches that point for the 2nd time
(counted per process); several points may be given, comma-separated. Points: ``validation-batch`` (after a batch
of evaluation), ``file-write`` (inside an atomic write, after the data went to the temp file and before the rename
that publishes it), ``study-run`` (after a study run's record is written).
``ROBUSTCNN_KILL_AFTER_UPDATES=N`` kills right after optimizer update N counted from the start
of training (so across resumes), after any recovery checkpoint of that update was written. With ``ROBUSTCNN_KILL_RANK=R`` only the process of that torchrun ``RANK`` is killed. Unset,
:func:`kill_point` costs one dictionary lookup.
"""
from __future__ import annotations

import os
import signal
from collections import Counter

__all__ = ['KILL_AT_ENV', 'KILL_RANK_ENV', 'KILL_AFTER_UPDATES_ENV', 'kill_point', 'kill_after_update']

KILL_AT_ENV = 'ROBUSTCNN_KILL_AT'
KILL_RANK_ENV = 'ROBUSTCNN_KILL_RANK'
KILL_AFTER_UPDATES_ENV = 'ROBUSTCNN_KILL_AFTER_UPDATES'
_targets: dict[str, int] | None = None
_reached: Counter = Counter()


def _parse(spec: str) -> dict[str, int]:
    targets = {}
    for item in filter(None, (part.strip() for part in spec.split(','))):
        name, _, count = item.partition(':')
        targets[name] = int(count or 1)
    return targets


def kill_point(name: str) -> None:
    """SIGKILL this process if ``ROBUSTCNN_KILL_AT`` names this point and its count is reached."""
    global _targets
    if _targets is None:
        rank = os.environ.get(KILL_RANK_ENV)
        applies = rank is None or rank == os.environ.get('RANK', '0')
        _targets = _parse(os.environ.get(KILL_AT_ENV, '')) if applies else {}
    if name in _targets:
        _reached[name] += 1
        if _reached[name] == _targets[name]:
            os.kill(os.getpid(), signal.SIGKILL)


def kill_after_update(num_updates: int) -> None:
    """SIGKILL this process if ``ROBUSTCNN_KILL_AFTER_UPDATES`` equals ``num_updates`` (absolute update count)."""
    target = os.environ.get(KILL_AFTER_UPDATES_ENV)
    if target and num_updates == int(target):
        os.kill(os.getpid(), signal.SIGKILL)
