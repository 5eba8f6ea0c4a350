"""The error types that several layers raise, and the walk of an exception's chain.

A leaf: it imports nothing from the project and no torch, so every layer (the torch-free command lines, data,
engine, checkpoints) can raise and catch these without importing another layer, and ``cli.run_cli`` can name
them all before anything heavy is loaded. An error raised and caught within one layer stays with that layer
(``DatasetLayoutError`` in ``benchmarks/base.py``, ``ConfigError`` in ``config.py``, ``ImageDecodeError`` in
``data/folder.py``).
"""
from __future__ import annotations

__all__ = ['UsageError', 'CheckpointError', 'LabelSpaceError', 'caused_by', 'raised_by_interrupt']


class UsageError(ValueError):
    """Bad input from the user (arguments, paths, data layout); the message says what to do."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, unsafe, unreadable or does not fit the model."""


class LabelSpaceError(ValueError):
    """A class list (``--class-map``, a checkpoint's ``class_names``) is malformed or contradicts another; the
    command lines report it in one line."""


def caused_by(error: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``error`` is a ``kind``, or was raised from or while handling one (cycles in the chain end it)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def raised_by_interrupt(error: BaseException) -> bool:
    """Whether ``error`` is, or was raised while handling, a KeyboardInterrupt."""
    return caused_by(error, KeyboardInterrupt)
