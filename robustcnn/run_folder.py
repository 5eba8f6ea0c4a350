"""A training run's folder: where it may be, who may write it, and what happens to an older run already in it.

Rules, so that no ordinary mistake loses a run:

* ``--experiment`` names a folder *under* ``--output``: no absolute paths, no ``..``, no over-long names (checked
  before any work by :func:`check_experiment_path`).
* A folder that already holds a run (checkpoints or ``summary.csv``) is continued only on request (``--resume``);
  a new run refuses it, or with ``--fresh`` first moves it aside to ``NAME.old-TIMESTAMP`` (never deletes).
* One writer per folder: :class:`RunLock` keeps a ``train.lock`` file with the owner's PID; a lock whose process is
  gone (killed, crashed) is taken over, a live one refuses the second process.

No torch import: :mod:`robustcnn.config` uses the path checks while parsing.
"""
from __future__ import annotations

import atexit
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path, PurePath

from .cli import UsageError

__all__ = ['LOCK_NAME', 'RunFolderClaim', 'RunLock', 'check_experiment_path', 'claim_run_folder', 'holds_run',
           'set_aside']

_logger = logging.getLogger(__name__)

LOCK_NAME = 'train.lock'
# Files a failed start may leave in a folder it created; anything else there is kept.
_START_FILES = frozenset({'train.log', 'args.yaml', LOCK_NAME})
_MAX_NAME_BYTES = 255  # NAME_MAX of Linux/macOS file systems: a longer component fails deep inside a write
_held_locks: set[str] = set()  # lock files this process holds (a lock with our own PID but not here is stale)


def check_experiment_path(output: str, experiment: str) -> None:
    """Raise :class:`UsageError` unless ``output/experiment`` is a folder (to be) inside ``output``."""
    flag = f'--experiment {experiment!r}'
    if '\0' in experiment:
        raise UsageError(f'{flag} contains a NUL character; use a plain folder name')
    if os.path.isabs(experiment):
        raise UsageError(f'{flag} is an absolute path; give a folder name, which goes under --output ({output})')
    parts = PurePath(experiment).parts
    if not parts or '..' in parts or all(part == '.' for part in parts):
        raise UsageError(f'{flag} must name a folder under --output ({output}), without ".." components')
    too_long = [part for part in parts if len(os.fsencode(part)) > _MAX_NAME_BYTES]
    if too_long:
        raise UsageError(f'{flag}: the name {too_long[0][:40]}... is {len(os.fsencode(too_long[0]))} bytes long, '
                         f'more than the {_MAX_NAME_BYTES} a file system allows; use a shorter name')
    check_folder_path(Path(output) / experiment, flag)


def check_folder_path(path: Path, flag: str) -> None:
    """``path`` is a folder or can be made one: neither it nor any parent is a file."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            if not candidate.is_dir():
                where = 'is a file' if candidate == path else f'is under {candidate}, which is a file'
                raise UsageError(f'{flag}: the run folder {path} {where}; choose another --output or --experiment')
            return


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds what a new run would overwrite: checkpoints or an epoch summary."""
    if not folder.is_dir():
        return False
    return any(path.name.endswith('.pth.tar') or path.name == 'summary.csv' for path in folder.iterdir())


def set_aside(path: Path, tag: str) -> Path:
    """Rename ``path`` to ``NAME.TAG-TIMESTAMP`` beside it (a number added if that exists too); never deletes."""
    stamp = time.strftime('%Y%m%d-%H%M%S')
    target = path.with_name(f'{path.name}.{tag}-{stamp}')
    number = 1
    while target.exists() or target.is_symlink():
        number += 1
        target = path.with_name(f'{path.name}.{tag}-{stamp}-{number}')
    os.rename(path, target)
    return target


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    try:  # a zombie has finished: it holds nothing any more
        with open(f'/proc/{pid}/stat', encoding='ascii', errors='replace') as status:
            return status.read().rsplit(')', 1)[-1].split()[0] != 'Z'
    except (OSError, IndexError):
        return True


class RunLock:
    """An exclusive ``train.lock`` in a run folder holding ``PID HOSTNAME``; released on any normal exit.

    Why not ``fcntl.flock``: it is silently per-host (or a no-op) on many network file systems that run folders
    live on, while a file created with ``O_EXCL`` is exclusive there too, and its PID says who holds it.
    """

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.held = False

    def acquire(self) -> RunLock:
        content = f'{os.getpid()} {socket.gethostname()}\n'
        for _ in range(5):
            try:
                descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(descriptor, 'w') as file:
                file.write(content)
                file.flush()
                os.fsync(file.fileno())
            self.held = True
            _held_locks.add(str(self.path.resolve()))
            atexit.register(self.release)
            return self
        raise UsageError(f'cannot lock {self.path}: another process keeps creating it')

    def _take_over_if_stale(self) -> None:
        try:
            fields = self.path.read_text(encoding='utf-8', errors='replace').split()
        except FileNotFoundError:
            return
        pid = int(fields[0]) if fields and fields[0].isdigit() else None
        host = fields[1] if len(fields) > 1 else ''
        folder = self.path.parent
        if pid is not None and host and host != socket.gethostname():
            raise UsageError(f'{folder} is in use by process {pid} on host {host} ({self.path}); wait for it, or '
                             f'delete {self.path} if no run is going on there')
        mine = pid == os.getpid() and str(self.path.resolve()) in _held_locks
        if pid is not None and (mine or (pid != os.getpid() and _process_alive(pid))):
            raise UsageError(f'{folder} is in use by another train.py (process {pid}); one run folder takes one '
                             f'writer: wait for it, or choose another --experiment')
        _logger.warning('taking over the lock %s of process %s, which is no longer running', self.path, pid)
        self.path.unlink(missing_ok=True)

    def forget(self) -> None:
        """Stop holding without touching the file (it moved away with its folder)."""
        self.held = False
        _held_locks.discard(str(self.path.resolve()))

    def release(self) -> None:
        if not self.held:
            return
        self.forget()
        try:
            fields = self.path.read_text(encoding='utf-8', errors='replace').split()
            if fields and fields[0] == str(os.getpid()):
                self.path.unlink()
        except FileNotFoundError:
            pass


@dataclass
class RunFolderClaim:
    """This process's hold on its run folder: the lock, and whether this start created the folder."""

    folder: Path
    lock: RunLock
    created: bool
    previous_run: Path | None = None   # where --fresh moved an older run

    def release(self) -> None:
        self.lock.release()

    def abandon(self) -> None:
        """A start that failed before training: release the lock and remove the folder if this start created it
        and left nothing in it but its log and arguments (the error was printed, so nothing is lost)."""
        self.release()
        if not self.created or not self.folder.is_dir():
            return
        names = {path.name for path in self.folder.iterdir()}
        if not names <= _START_FILES:
            return
        for handler in list(logging.getLogger().handlers):  # stop logging into the folder before it goes
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == self.folder.resolve():
                logging.getLogger().removeHandler(handler)
                handler.close()
        for name in names:
            (self.folder / name).unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:
            pass


def claim_run_folder(folder: Path, *, continuing: bool, fresh: bool) -> RunFolderClaim:
    """Make and lock ``folder``; refuse a new run into a folder holding one unless ``fresh`` moves that aside.

    ``continuing``: the run resumes from this folder (``--resume auto`` or a checkpoint inside it).
    """
    folder = Path(folder)
    check_folder_path(folder, '--experiment')
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = RunLock(folder).acquire()
    previous = None
    if holds_run(folder) and not continuing:
        if not fresh:
            lock.release()
            raise UsageError(
                f'{folder} already holds a run (checkpoints / summary.csv) that this new run would overwrite: '
                f'continue it with --resume auto, start over with --fresh (moves the old run to '
                f'{folder.name}.old-TIMESTAMP), or choose another --experiment')
        lock.forget()
        previous = set_aside(folder, 'old')
        folder.mkdir()
        lock = RunLock(folder).acquire()
        (previous / LOCK_NAME).unlink(missing_ok=True)  # ours, moved along with the old run
        created = True
    return RunFolderClaim(folder=folder, lock=lock, created=created, previous_run=previous)
