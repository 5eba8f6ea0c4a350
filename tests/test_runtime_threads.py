"""The usable core count (affinity, cgroup v1/v2 quota), the torch threads and loader workers sized from it, and the
load-aware choice the demo makes."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from robustcnn.engine import runtime as runtime_module
from robustcnn.engine.runtime import (cgroup_cpu_limit, cpu_threads, init_runtime, runnable_elsewhere,
                                      usable_cpu_count)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_along_the_path_the_tightest_wins(tmp_path: Path) -> None:
    root, membership = tmp_path / 'cgroup', tmp_path / 'self-cgroup'
    _write(root / 'cpu.max', 'max 100000\n')
    _write(root / 'jobs' / 'cpu.max', '300000 100000\n')
    _write(root / 'jobs' / 'mine' / 'cpu.max', '150000 100000\n')
    _write(membership, '0::/jobs/mine\n')
    assert cgroup_cpu_limit(root, membership) == 1.5
    _write(root / 'jobs' / 'mine' / 'cpu.max', 'max 100000\n')
    assert cgroup_cpu_limit(root, membership) == 3.0  # the parent's limit binds the child
    _write(membership, '0::/\n')
    assert cgroup_cpu_limit(root, membership) is None  # unlimited


def test_cgroup_v1_quota_and_a_host_path_missing_inside_the_container(tmp_path: Path) -> None:
    root, membership = tmp_path / 'cgroup', tmp_path / 'self-cgroup'
    _write(root / 'cpu,cpuacct' / 'cpu.cfs_quota_us', '200000\n')
    _write(root / 'cpu,cpuacct' / 'cpu.cfs_period_us', '100000\n')
    _write(membership, '4:memory:/x\n3:cpu,cpuacct:/docker/0123abcd\n')  # the host's path; the mount is ours
    assert cgroup_cpu_limit(root, membership) == 2.0
    _write(root / 'cpu,cpuacct' / 'cpu.cfs_quota_us', '-1\n')
    assert cgroup_cpu_limit(root, membership) is None
    assert cgroup_cpu_limit(tmp_path / 'nothing', tmp_path / 'no-file') is None


def test_usable_cores_are_the_affinity_lowered_to_the_quota(monkeypatch) -> None:
    affinity = len(os.sched_getaffinity(0))
    monkeypatch.setattr(runtime_module, 'cgroup_cpu_limit', lambda: None)
    assert usable_cpu_count() == affinity
    monkeypatch.setattr(runtime_module, 'cgroup_cpu_limit', lambda: 0.5)
    assert usable_cpu_count() == 1  # rounded up: half a core is still a core to run on
    monkeypatch.setattr(runtime_module, 'cgroup_cpu_limit', lambda: affinity + 7.0)
    assert usable_cpu_count() == affinity


def test_threads_are_the_share_of_each_torchrun_process_and_adapt_to_load_only_when_asked(
        monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(runtime_module, 'usable_cpu_count', lambda: 8)
    monkeypatch.delenv('LOCAL_WORLD_SIZE', raising=False)
    assert cpu_threads()[0] == 8
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '3')
    assert cpu_threads()[0] == 2  # 8 // 3
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '16')
    assert cpu_threads()[0] == 1
    monkeypatch.delenv('LOCAL_WORLD_SIZE')

    stat = tmp_path / 'stat'
    _write(stat, 'cpu  1 2 3\nprocs_running 6\nprocs_blocked 0\n')
    assert runnable_elsewhere(samples=3, interval=0.0, stat=stat) == 5  # less the reader itself
    assert runnable_elsewhere(stat=tmp_path / 'missing') is None
    monkeypatch.setattr(runtime_module, 'runnable_elsewhere', lambda: 5)
    monkeypatch.setattr(os, 'cpu_count', lambda: 8)
    assert cpu_threads()[0] == 8  # the default ignores the load (same threads, same numbers, every run)
    threads, reason = cpu_threads(adapt_to_load=True)
    assert threads == 3 and '5 other runnable thread(s) on 8 cores' in reason
    monkeypatch.setattr(runtime_module, 'runnable_elsewhere', lambda: 30)
    assert cpu_threads(adapt_to_load=True)[0] == 1  # at least one


def test_configure_threads_and_loader_workers_on_a_cpu(monkeypatch) -> None:
    before = torch.get_num_threads()
    monkeypatch.setattr(runtime_module, 'usable_cpu_count', lambda: 2)
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    monkeypatch.delenv('LOCAL_WORLD_SIZE', raising=False)
    runtime = init_runtime('cpu')
    try:
        assert runtime.configure_threads(3) == 3 and torch.get_num_threads() == 3
        assert runtime.configure_threads() == 2 and torch.get_num_threads() == 2
        monkeypatch.setenv('OMP_NUM_THREADS', '1')
        assert runtime.configure_threads() == 1  # the user's environment, outside torchrun
        assert runtime.loader_workers(6) == 2 and runtime.loader_workers(1) == 1 and runtime.loader_workers(0) == 0
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize('value', ['0', '-2', 'two'])
def test_bad_threads_flag_is_a_one_line_error(value: str) -> None:
    from robustcnn.config import ConfigError, parse_train_args
    with pytest.raises(ConfigError, match='--threads'):
        parse_train_args(['/data', '--threads', value])
