"""Ctrl-C as a terminal sends it (SIGINT to the whole foreground process group) ends validate.py and train.py at the
next batch: exit 130, one line, no traceback, no loader worker or pool process left running.

The hard case is a library that catches the KeyboardInterrupt (over-broad handlers in loaders, decoders and attack
code did): the runs here use a model whose forward hook swallows it, and no forward may begin after that. The loader
workers must ignore SIGINT (the main process ends them), which /proc shows directly. Linux only (/proc, fork).
"""
from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dataset_trees import COLOR_MODEL_NAME, build_wnid_tree, save_color_checkpoint
from helpers_train import REPO_ROOT, TINY_FLAGS, make_image_folders, subprocess_env

pytestmark = pytest.mark.skipif(not Path('/proc/self/stat').exists(), reason='reads processes from /proc (Linux)')

# Runs a command line whose model waits in its 2nd forward until Ctrl-C comes and swallows it, as a library's
# over-broad handler would; every forward says on stderr that it began, and whether that was after the swallowing.
LAUNCHER = """
import sys
import time
sys.path.insert(0, {tests!r})
sys.path.insert(0, {repo!r})
import timm
import dataset_trees

dataset_trees.register_color_model()
forwards = 0
swallowed = False


def swallowing_hook(module, inputs):
    global forwards, swallowed
    forwards += 1
    late = ' after the swallowed interrupt' if swallowed else ''
    try:
        print(f'forward {{forwards}}{{late}}', file=sys.stderr, flush=True)
        time.sleep(30 if forwards == 2 else 0.3)
    except KeyboardInterrupt:
        swallowed = True


create_model = timm.create_model


def create_hooked_model(*args, **kwargs):
    model = create_model(*args, **kwargs)
    model.register_forward_pre_hook(swallowing_hook)
    return model


timm.create_model = create_hooked_model
from robustcnn.cli import run_cli
script = sys.argv[1]
main = __import__(script).main
run_cli(main, sys.argv[2:], prog=script + '.py')
"""
STARTUP_SECONDS = 180  # imports and the first batches on a loaded machine
STOP_SECONDS = 60  # from Ctrl-C to exit; the runs would take minutes longer (a forward of 0.3 s per image)


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (field 3, the state, comes first), or None if there is no such process."""
    try:
        text = Path(f'/proc/{pid}/stat').read_text()
    except OSError:
        return None
    return text[text.rindex(')') + 2:].split()


def _children(pid: int) -> dict[int, str]:
    """The processes whose parent is ``pid``, each with its start time (so that a reused PID is not mistaken)."""
    children = {}
    for entry in os.listdir('/proc'):
        fields = _stat_fields(int(entry)) if entry.isdigit() else None
        if fields is not None and int(fields[1]) == pid:
            children[int(entry)] = fields[19]
    return children


def _still_running(pid: int, start_time: str) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[19] == start_time and fields[0] not in ('Z', 'X')


def _ignores_sigint(pid: int) -> bool:
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('SigIgn:'):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    raise AssertionError(f'no SigIgn line for process {pid}')


def _ctrl_c_at_the_second_forward(tmp_path: Path, script: str, arguments: list[str]) -> tuple[int, str, dict]:
    """Run ``script`` in its own process group, send SIGINT to the group while the 2nd forward runs; return the exit
    status, stderr, and the children seen at that moment ({pid: (start time, ignores SIGINT)})."""
    launcher = tmp_path / 'launch.py'
    launcher.write_text(LAUNCHER.format(tests=str(REPO_ROOT / 'tests'), repo=str(REPO_ROOT)))
    process = subprocess.Popen([sys.executable, str(launcher), script, *arguments], cwd=tmp_path,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, env=subprocess_env(), start_new_session=True)
    lines: queue.Queue = queue.Queue()

    def read_stderr() -> None:
        for line in process.stderr:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    captured: list[str] = []
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not (captured and captured[-1].startswith('forward 2')):
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                pytest.fail(f'no second forward within {STARTUP_SECONDS} s:\n' + ''.join(captured)[-3000:])
            if line is None:
                pytest.fail('the run ended before its second forward:\n' + ''.join(captured)[-3000:])
            captured.append(line)
        children = {pid: (start, _ignores_sigint(pid)) for pid, start in _children(process.pid).items()}
        os.killpg(process.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        try:
            returncode = process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f'still running {STOP_SECONDS} s after Ctrl-C:\n' + ''.join(captured)[-3000:])
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    reader.join(timeout=30)
    while not lines.empty():
        line = lines.get()
        if line is not None:
            captured.append(line)
    return returncode, ''.join(captured), children


def _assert_stopped_cleanly(returncode: int, stderr: str, children: dict, prog: str) -> None:
    assert returncode == 130, stderr[-3000:]
    assert 'Traceback' not in stderr and 'Exception ignored' not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == f'{prog}: interrupted'
    assert 'after the swallowed interrupt' not in stderr, 'the run went on after Ctrl-C:\n' + stderr[-3000:]
    assert children, 'no loader workers were running: the test does not test them'
    assert all(ignores for _, ignores in children.values()), f'workers that take Ctrl-C themselves: {children}'
    left = [pid for pid, (start, _) in children.items() if _still_running(pid, start)]
    assert not left, f'processes left running after the exit: {left}'


def test_ctrl_c_stops_validation_at_the_next_batch_even_when_a_library_swallows_it(tmp_path):
    checkpoint = save_color_checkpoint(tmp_path / 'color.pth')
    build_wnid_tree(tmp_path / 'imagenet' / 'val', {7: [7] * 100, 8: [8] * 100})  # 200 batches of one image
    arguments = [str(tmp_path / 'imagenet'), '--dataset', 'imagenet', '--model', COLOR_MODEL_NAME,
                 '--checkpoint', str(checkpoint), '--workers', '2', '-b', '1', '--log-freq', '1', '--device', 'cpu',
                 '--results-file', str(tmp_path / 'results.json')]
    returncode, stderr, children = _ctrl_c_at_the_second_forward(tmp_path, 'validate', arguments)
    _assert_stopped_cleanly(returncode, stderr, children, 'validate.py')
    assert not (tmp_path / 'results.json').exists()


def test_ctrl_c_stops_training_at_the_next_batch_and_releases_its_run_folder(tmp_path):
    data = make_image_folders(tmp_path / 'data', train_per_class=16, val_per_class=2)  # 8 batches per epoch
    flags = [*TINY_FLAGS, '--workers', '2', '--epochs', '20', '--device', 'cpu']  # the last --workers counts
    arguments = [str(data), *flags, '--output', str(tmp_path / 'output'), '--experiment', 'run']
    returncode, stderr, children = _ctrl_c_at_the_second_forward(tmp_path, 'train', arguments)
    _assert_stopped_cleanly(returncode, stderr, children, 'train.py')
    run_dir = tmp_path / 'output' / 'run'
    assert not (run_dir / 'train.lock').exists(), 'the interrupted run kept its lock'
    assert not list(run_dir.glob('*.pth.tar')), 'an interrupted first epoch saved a checkpoint'


def _sleeping_task(config, root, task) -> int:
    """A part that takes long (in the pool's processes, forked with this module patched): it records its PID."""
    Path(root, f'pid-{os.getpid()}').write_text(str(os.getpid()))
    time.sleep(120)
    return 0


@pytest.mark.skipif('fork' not in multiprocessing.get_all_start_methods(), reason='the patched task needs fork')
def test_ctrl_c_during_synthetic_generation_ends_the_pool_at_once(tmp_path, monkeypatch):
    """The generator's pool processes ignore Ctrl-C; the main process cancels the queued parts and ends the running
    ones instead of waiting minutes for them (which leaving the pool's ``with`` block would do)."""
    from robustcnn.synthetic import benchmark

    monkeypatch.setattr(benchmark, '_run_task', _sleeping_task)
    config = benchmark.SyntheticConfig(train_per_class=1, val_per_class=1, shift_per_class=1, corruption_per_class=1)
    started: dict[int, tuple[str, bool]] = {}
    gave_up = threading.Event()

    def press_ctrl_c_when_both_parts_run() -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            partial = [*tmp_path.glob('.synthetic.partial-*')]
            pids = [int(path.read_text()) for path in partial[0].glob('pid-*')] if partial else []
            if len(pids) == 2:
                started.update({pid: (_stat_fields(pid)[19], _ignores_sigint(pid)) for pid in pids})
                break
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)  # the main thread gets the KeyboardInterrupt
        if not stopped.wait(STOP_SECONDS):  # the pool waited for its parts: end them so that the test ends
            gave_up.set()
            for pid in started:
                os.kill(pid, signal.SIGKILL)

    stopped = threading.Event()
    presser = threading.Thread(target=press_ctrl_c_when_both_parts_run, daemon=True)
    presser.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            benchmark.generate_benchmark(config, tmp_path / 'synthetic', workers=2)
    finally:
        stopped.set()
        presser.join()
    assert not gave_up.is_set(), f'Ctrl-C waited {STOP_SECONDS} s for the running parts'
    assert len(started) == 2 and all(ignores for _, ignores in started.values()), started
    left = [pid for pid, (start, _) in started.items() if _still_running(pid, start)]
    assert not left, f'pool processes left running: {left}'
    assert not (tmp_path / 'synthetic').exists()
