"""Shared behaviour of the command lines: user mistakes become one line on stderr and exit status 2."""
from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
from typing import Callable, NoReturn, Sequence

from .checkpoint import CheckpointError, raised_by_interrupt
from .data.label_space import LabelSpaceError

__all__ = ['UsageError', 'USER_ERRORS', 'OneLineErrorParser', 'run_cli', 'setup_logging']


class UsageError(ValueError):
    """Bad input from the user (arguments, paths, data layout); the message says what to do."""


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise UsageError (one line, exit status 2) instead of printing the usage
    block; subclasses may raise a more specific UsageError via :attr:`error_class`."""

    error_class: type[UsageError] = UsageError

    def error(self, message: str):  # type: ignore[override]
        raise self.error_class(f'{message} (see {self.prog} --help)')


# Errors that mean "the user gave us something wrong", reported without a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UsageError, CheckpointError, LabelSpaceError, FileNotFoundError,
                                                NotADirectoryError)


def setup_logging(is_main: bool = True, log_file: str | os.PathLike | None = None) -> None:
    """Log INFO on the main process (WARNING elsewhere), to stderr and optionally to ``log_file``."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None and is_main:
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(
        level=logging.INFO if is_main else logging.WARNING,
        format='%(asctime)s %(levelname)s %(message)s',
        datefmt='%H:%M:%S',
        handlers=handlers,
        force=True,
    )


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None,
            prog: str | None = None) -> NoReturn:
    """Run ``main(argv)`` and exit: 0 on success, 2 with one line for a user error, 130 on Ctrl-C, 1 with one line
    for a full or read-only disk.

    Set ``ROBUSTCNN_TRACEBACK=1`` to see the full traceback of a user error.
    """
    prog = prog or os.path.basename(sys.argv[0])
    interrupts: list[int] = []

    def on_interrupt(signum: int, frame: object) -> None:
        interrupts.append(signum)
        raise KeyboardInterrupt  # what Python's own handler does; the record is what this adds

    try:  # only the main thread may install handlers
        previous_handler = signal.signal(signal.SIGINT, on_interrupt)
    except ValueError:
        previous_handler = None
    try:
        code = main(argv)
    except USER_ERRORS as error:
        if os.environ.get('ROBUSTCNN_TRACEBACK'):
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f'{prog}: error: {message}', file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f'{prog}: interrupted', file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except Exception as error:  # after BrokenPipeError, which is an Exception too
        # Ctrl-C also reaches the DataLoader workers, whose death the loader then reports as its own error, at
        # times after a library swallowed the main process's KeyboardInterrupt: any failure after Ctrl-C is it
        if interrupts or raised_by_interrupt(error):
            print(f'{prog}: interrupted', file=sys.stderr)
            sys.exit(130)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            print(f'{prog}: error: {error.strerror or error}', file=sys.stderr)
            sys.exit(1)
        raise
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
    sys.exit(int(code or 0))
