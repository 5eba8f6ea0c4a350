"""Shared behaviour of the command lines: user mistakes become one line on stderr and exit status 2.

Imports nothing heavy (no torch, no timm): the command lines parse their arguments before loading those.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import socket
import sys
import urllib.parse
from typing import Callable, Iterator, NoReturn, Sequence

from . import interrupts
from .errors import CheckpointError, LabelSpaceError, UsageError, caused_by

__all__ = ['UsageError', 'user_errors', 'DefaultsHelpFormatter', 'OneLineErrorParser', 'run_cli', 'setup_logging',
           'pretrained_download', 'caused_by']


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with every flag's default, said once.

    argparse's ArgumentDefaultsHelpFormatter appends ``(default: X)`` to every help text, also to those that already
    say their default in words (a default that depends on the device or on the model, stored as None), which printed
    ``(default: the model's) (default: None)``. Here a help text that has its own "(default" is left alone, and a
    None default without words reads "(default: not set)".
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ''
        if '%(default)' in text or '(default' in text or action.default is argparse.SUPPRESS:
            return action.help
        if not action.option_strings and action.nargs not in ('?', '*'):
            return action.help  # a required positional has no default
        if action.default is None:
            return f'{text} (default: not set)'.lstrip()
        return super()._get_help_string(action)


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise UsageError (one line, exit status 2) instead of printing the usage
    block; subclasses may raise a more specific UsageError via :attr:`error_class`."""

    error_class: type[UsageError] = UsageError

    def error(self, message: str):  # type: ignore[override]
        raise self.error_class(f'{message} (see {self.prog} --help)')


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "the user gave us something wrong", reported without a traceback (the project's own live
    in :mod:`robustcnn.errors`, a leaf: naming them loads no torch, so ``--help`` stays fast)."""
    return UsageError, CheckpointError, LabelSpaceError, FileNotFoundError, NotADirectoryError


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


HUB_PROBE_SECONDS = 3.0
_PROXY_VARIABLES = ('HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy', 'ALL_PROXY', 'all_proxy')


def hub_unreachable(timeout: float = HUB_PROBE_SECONDS) -> str | None:
    """Why the Hugging Face Hub (``HF_ENDPOINT``) cannot be reached, or None when a connection opens (or a proxy or
    ``HF_HUB_OFFLINE`` decides instead: a direct probe would say nothing about those)."""
    if os.environ.get('HF_HUB_OFFLINE') or any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return None
    endpoint = urllib.parse.urlsplit(os.environ.get('HF_ENDPOINT') or 'https://huggingface.co')
    host = endpoint.hostname or 'huggingface.co'
    port = endpoint.port or (80 if endpoint.scheme == 'http' else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as error:
        return f'{host}:{port} cannot be reached ({error.strerror or error})'


@contextlib.contextmanager
def pretrained_download(wanted: bool) -> Iterator[None]:
    """Around a run that may download ``--pretrained`` weights: without network, fail fast with one line.

    Offline, huggingface_hub retries every file five times with growing pauses (a minute of doubled warnings) and
    then raises a generic error. So when the Hub cannot be reached, the run goes on in the Hub's offline mode (the
    local cache still serves weights downloaded before) and a miss becomes ``no network: ...``. Call it before
    huggingface_hub is imported: it reads ``HF_HUB_OFFLINE`` once, at import.
    """
    reason = hub_unreachable() if wanted else None
    if reason:
        os.environ['HF_HUB_OFFLINE'] = '1'
        constants = sys.modules.get('huggingface_hub.constants')
        if constants is not None:
            constants.HF_HUB_OFFLINE = True
    try:
        yield
    except Exception as error:
        errors = sys.modules.get('huggingface_hub.errors')
        if reason and errors is not None and caused_by(error, errors.LocalEntryNotFoundError):
            raise UsageError(f'no network: --pretrained downloads the weights from the Hugging Face Hub, but '
                             f'{reason}, and they are not in the local cache; connect to the network, or give the '
                             f'weights as a file (--checkpoint / --initial-checkpoint)') from None
        raise


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None,
            prog: str | None = None) -> NoReturn:
    """Run ``main(argv)`` and exit: 0 on success, 2 with one line for a user error, 130 on Ctrl-C, 1 with one line
    for a full or read-only disk.

    Set ``ROBUSTCNN_TRACEBACK=1`` to see the full traceback of a user error.
    """
    prog = prog or os.path.basename(sys.argv[0])
    with interrupts.recording():  # Ctrl-C: recorded, so that the loops stop even when a library swallowed it
        try:
            code = main(argv)
        except user_errors() as error:
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
            # a library that caught the KeyboardInterrupt may fail later, or rewrap it (torch.save): any failure
            # after Ctrl-C is it
            if interrupts.interrupt_requested() or caused_by(error, KeyboardInterrupt):
                print(f'{prog}: interrupted', file=sys.stderr)
                sys.exit(130)
            if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                print(f'{prog}: error: {error.strerror or error}', file=sys.stderr)
                sys.exit(1)
            raise
    sys.exit(int(code or 0))
