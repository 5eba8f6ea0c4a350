"""Writing a file so that a crash, a kill or a full disk never leaves half of it: temp file, fsync, rename.

Every file the project writes (results, reports, checkpoints, run records) goes through :func:`atomic_write`; a
reader sees the old file or the new one, never a mix. A leaf: no torch, and of the project only the leaves
:mod:`robustcnn.errors` and :mod:`robustcnn.faults` (the kill point inside every write), so the torch-free tools
write through it too; ``checkpoint.atomic_save`` passes ``torch.save`` in as the writer.
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import raised_by_interrupt
from .faults import kill_point

__all__ = ['atomic_write', 'atomic_write_bytes', 'atomic_write_text']

# Below this many free bytes after a failed write, the failure is reported as a full disk: torch.save reports
# ENOSPC as '[enforce fail at inline_container.cc] unexpected pos', without the errno.
_FULL_DISK_BYTES = 64 * 2 ** 20


def _creation_mode() -> int:
    """The permissions ``open()`` would give a new file (0o666 less the umask): mkstemp makes 0600 files."""
    try:  # Linux names the umask without changing it (os.umask must set one to read it, racing other threads)
        with open('/proc/self/status', encoding='ascii') as status:
            for line in status:
                if line.startswith('Umask:'):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _is_disk_full(error: BaseException, directory: Path) -> bool:
    if getattr(error, 'errno', None) in (errno.ENOSPC, errno.EDQUOT):
        return True
    if not isinstance(error, RuntimeError):
        return False
    try:
        stats = os.statvfs(directory)
    except (OSError, AttributeError):
        return False
    return stats.f_bavail * stats.f_frsize < _FULL_DISK_BYTES


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Write through ``write(file)`` into a temp file beside ``path``, fsync, then rename over ``path``.

    The file gets the permissions a plain ``open()`` would give it (those of the file it replaces, else 0o666 less
    the umask), so results and checkpoints can be shared as the user's umask says. A failed write raises an
    ``OSError`` that says the previous file is unchanged (a full disk named as such); Ctrl-C stays an interrupt.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        try:
            mode = path.stat().st_mode & 0o777
        except OSError:
            mode = _creation_mode()
        os.fchmod(fd, mode)
        with os.fdopen(fd, 'wb') as file:
            write(file)
            file.flush()
            kill_point('file-write')
            os.fsync(file.fileno())
        os.replace(tmp_name, path)
    except BaseException as error:
        disk_full = isinstance(error, (OSError, RuntimeError)) and _is_disk_full(error, path.parent)
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        if raised_by_interrupt(error):  # Ctrl-C inside torch.save comes out as a RuntimeError: keep it an interrupt
            raise KeyboardInterrupt from error
        # e.g. disk full (torch.save reports it as a RuntimeError): say that nothing the user had was lost
        if isinstance(error, (OSError, RuntimeError)):
            previous = 'the previous file there is unchanged' if path.exists() else 'no file was written'
            reason = 'No space left on device' if disk_full else (
                getattr(error, 'strerror', None) or str(error).splitlines()[0])
            message = f'could not write {path} ({reason}); {previous}'
            errno_value = errno.ENOSPC if disk_full else getattr(error, 'errno', None)
            raise (OSError(errno_value, message) if errno_value else OSError(message)) from error
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda file: file.write(data))


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    return atomic_write_bytes(text.encode('utf-8'), path)
