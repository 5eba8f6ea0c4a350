"""Ctrl-C ends a command line at once and cleanly: exit 130, one line, no traceback, no process left running.

A terminal's Ctrl-C sends SIGINT to the whole foreground process group: the loader workers and pool processes got
it together with the main process. They died first, and the main process then met their deaths as an error of its
own (a DataLoader traceback); and a KeyboardInterrupt raised where a library catches it, or inside a finalizer, was
lost, so the run went on for a while. Hence three parts, all here:

- helper processes ignore SIGINT (:func:`ignore_interrupts`, a DataLoader ``worker_init_fn`` and a process pool's
  ``initializer``); the main process shuts them down itself as it unwinds;
- inside :func:`recording` (``cli.run_cli`` wraps every command line in it) each SIGINT is recorded before the
  KeyboardInterrupt is raised, and the work loops take their batches through :func:`until_interrupted`, which
  raises KeyboardInterrupt again at the next batch once one was recorded, whoever caught the first;
- an interrupt that surfaces in a finalizer ("Exception ignored in ...") prints nothing: the record ends the run.

Outside :func:`recording` (the library used from Python) nothing is recorded and :func:`until_interrupted` passes
the batches through unchanged. Imports nothing heavy: the command lines use it before they load torch.
"""
from __future__ import annotations

import contextlib
import signal
import sys
from typing import Any, Iterable, Iterator, TypeVar

__all__ = ['interrupt_requested', 'stop_if_interrupted', 'until_interrupted', 'ignore_interrupts', 'recording']

Item = TypeVar('Item')
_recorded: list[int] = []  # the signals received inside recording(); a list so that the handler only appends


def interrupt_requested() -> bool:
    """Whether Ctrl-C was pressed since the command line started (also when a library caught its KeyboardInterrupt)."""
    return bool(_recorded)


def stop_if_interrupted() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed (see :func:`interrupt_requested`)."""
    if _recorded:
        raise KeyboardInterrupt


def until_interrupted(items: Iterable[Item]) -> Iterator[Item]:
    """``items`` one by one, ended by KeyboardInterrupt at the first boundary after a Ctrl-C: before an item is
    handed out (Ctrl-C while it was loaded) and before the next is asked for (Ctrl-C while the caller used it)."""
    for item in items:
        stop_if_interrupted()
        yield item
        stop_if_interrupted()


def ignore_interrupts(*worker_id: Any) -> None:
    """Make this (helper) process ignore SIGINT: a DataLoader ``worker_init_fn`` (called with the worker's id) or a
    process pool's ``initializer`` (called with nothing). Its parent ends it: a DataLoader shuts its workers down
    when its iterator goes away, :mod:`multiprocessing` ends daemonic children at exit, pools are terminated."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def recording() -> Iterator[None]:
    """Around a command line's work: record every SIGINT, then raise KeyboardInterrupt as Python's own handler does,
    and keep the interrupts that surface in finalizers quiet; everything is put back afterwards.

    Only the main thread may install signal handlers: elsewhere the default handler stays (nothing is recorded).
    """
    def on_interrupt(signum: int, frame: object) -> None:
        _recorded.append(signum)
        raise KeyboardInterrupt

    def on_unraisable(unraisable: Any) -> None:
        # a KeyboardInterrupt raised inside a __del__ or weakref callback is printed and dropped by Python; once
        # Ctrl-C was pressed, what fails in finalizers is its consequence (half-built objects): the record stops the run
        if _recorded or (unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt)):
            return
        previous_hook(unraisable)

    _recorded.clear()
    try:
        previous_handler = signal.signal(signal.SIGINT, on_interrupt)
    except ValueError:
        previous_handler = None
    previous_hook, sys.unraisablehook = sys.unraisablehook, on_unraisable
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
        _recorded.clear()
