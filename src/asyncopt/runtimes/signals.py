"""SIGINT, SIGTERM and SIGHUP end a run the same way in every runtime.

What ``timeout``, Slurm, ``docker stop``, systemd and a terminal's Ctrl-C send is a request to
stop, not a crash: the run ends as if its budget were reached (final evaluation, ``summary.json``
with status ``interrupted`` and the signal's name, ``model.pt``, a checkpoint when checkpointing
is on), every worker is stopped, and the command-line tool exits with 128 + the signal's number
(130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP), as shells and job schedulers expect.

:func:`handled` installs the handlers around a run (only in the main thread, where Python allows
it) and restores the previous ones afterwards. While the driver's loop runs (:func:`running`),
the first signal asks the coordinator to stop, and the loop ends at its next event. Outside the
loop (start-up, the final evaluation), or at a second signal, the handler raises
:class:`Interrupted` (a ``KeyboardInterrupt``) at once; the run still ends with a summary, and
nothing already written is half-overwritten (files are replaced atomically).

Worker processes ignore these signals (a signal sent to the whole process group reaches them
too): the driver stops them itself, so a clean stop never becomes a worker's death. Ray's
``ray.init`` installs a SIGTERM handler of its own; :func:`running` installs these again.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None))
                if s is not None)


class Interrupted(KeyboardInterrupt):
    """A run was stopped by ``signum`` where it could not stop at its next event."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class _Guard:
    def __init__(self, stop: Callable[[int], None]) -> None:
        self.stop, self.loop, self.received = stop, False, False
        self.previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in SIGNALS:
            previous = signal.signal(signum, self.handle)
            self.previous.setdefault(signum, previous)

    def restore(self) -> None:
        for signum, previous in self.previous.items():
            signal.signal(signum, previous)

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.loop and not self.received:
            self.received = True
            self.stop(signum)
            return
        raise Interrupted(signum)


_active: list[_Guard] = []


@contextmanager
def handled(stop: Callable[[int], None]) -> Iterator[None]:
    """While the block runs, a signal calls ``stop(signum)`` inside the driver's loop and raises
    :class:`Interrupted` elsewhere; the previous handlers come back afterwards. Outside the main
    thread nothing is installed (Python delivers signals to the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    guard = _Guard(stop)
    guard.install()
    _active.append(guard)
    try:
        yield
    finally:
        _active.remove(guard)
        guard.restore()


@contextmanager
def running() -> Iterator[None]:
    """The driver's loop: a first signal now stops the run at its next event. The handlers are
    installed again first (a runtime's start-up, such as ``ray.init``, may have replaced them)."""
    guard = _active[-1] if _active else None
    if guard is None:
        yield
        return
    guard.install()
    guard.loop = True
    try:
        yield
    finally:
        guard.loop = False


def reraise(summary: dict[str, Any]) -> None:
    """In a set of runs (compare, tune, sweep): a run that a signal stopped stops the set too
    (:class:`Interrupted`), as the signal asked."""
    if summary["status"] == "interrupted":
        raise Interrupted(signal.Signals[summary.get("signal", "SIGINT")])


def ignore_in_worker() -> None:
    """In a worker process: leave stopping to the driver (see the module docstring)."""
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
