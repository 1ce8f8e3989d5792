"""Callbacks: what a run tells the code that watches it (an experiment tracker, your own logs).

    class Printer(asyncopt.Callback):
        def on_evaluation(self, event):
            print(event.version, event.metrics["loss"])

    asyncopt.train(..., callbacks=[Printer()])

A run sends four events, always in the process and thread that called ``train`` (the driver,
which also owns the history), never in a worker, so a callback needs no locks and may hold
files, sockets or a tracker's client:

* ``on_begin(Begin)``: once, before the first evaluation (run directory, workers, config);
* ``on_evaluation(Evaluated)``: each evaluation of the server's model (the first, each one the
  ``[eval]`` schedule asks for, the final one);
* ``on_arrivals(Arrivals)``: after each batch of events the driver handled (one arrival in the
  simulator; what one wait returned in the real runtimes), with the history rows it added; an
  evaluation within a batch gets the rows before it first, so that every evaluation follows
  the rows it saw;
* ``on_end(summary)``: once, when the run ends however it ends (completed, interrupted,
  diverged, failed), after ``summary.json`` is written: the place to flush and close.

A callback defines only the methods it needs, and only those are called: one without
``on_arrivals`` costs nothing per arrival. A callback that raises stops the run as any error
would (status ``failed``, the exception re-raised): a tracker that cannot write should not
quietly lose the record. :class:`asyncopt.tensorboard.TensorBoard` is the built-in one;
``docs/tracking.md`` shows MLflow and Weights & Biases as callbacks of a few lines.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from asyncopt.errors import ConfigError

EVENTS = ("on_begin", "on_evaluation", "on_arrivals", "on_end")


@dataclass(frozen=True)
class Begin:
    """The run about to start: where it is recorded (None: nowhere), its workers, and its
    resolved configuration when it came from one (``asyncopt.run``; None for ``train``)."""

    run_dir: Path | None
    num_workers: int
    config: dict[str, Any] | None


@dataclass(frozen=True)
class Evaluated:
    """One evaluation: the runtime's clock, the server's version, the arrivals so far, the
    problem's metrics (``loss``, ``grad_norm_sq``, test metrics), and the wall seconds since
    the run started."""

    now: float
    version: int
    arrivals: int
    metrics: dict[str, float]
    wall: float


class Row(NamedTuple):
    """One history row, as in ``arrivals.csv`` (:mod:`asyncopt.record`)."""

    now: float
    worker: int
    version: int
    delay: int
    loss: float
    action: str
    stepped: int
    compute_time: float
    latency: float
    server_time: float


@dataclass(frozen=True)
class Arrivals:
    """The history rows one batch of the driver's events added (gradients that arrived, and
    ``cancel``, ``lost`` and ``restart`` rows), and the clock and version after it."""

    now: float
    version: int
    rows: Sequence[Row]


class Callback:
    """A base to subclass: override the events you need (the others are never called)."""

    def on_begin(self, event: Begin) -> None:
        """The run starts."""

    def on_evaluation(self, event: Evaluated) -> None:
        """The server's model was evaluated."""

    def on_arrivals(self, event: Arrivals) -> None:
        """The driver handled a batch of events."""

    def on_end(self, summary: dict[str, Any]) -> None:
        """The run ended; ``summary`` is what ``summary.json`` holds."""


class Callbacks:
    """A run's callbacks: each event goes to those that define its method, in order."""

    def __init__(self, callbacks: Iterable[Any] = ()) -> None:
        self.callbacks = list(callbacks)
        for callback in self.callbacks:
            if not any(_defines(callback, name) for name in EVENTS):
                raise ConfigError("callbacks", callback, "objects with one or more of the "
                                  "methods " + ", ".join(EVENTS) + " (e.g. a subclass of "
                                  "asyncopt.Callback)")
        self._evaluation = self._methods("on_evaluation")
        self._arrivals = self._methods("on_arrivals")
        self.watch_arrivals = bool(self._arrivals)
        """Whether any callback wants the arrival batches (else no rows are gathered)."""
        self._begun: list[Any] = []
        self._ended = False


    def begin(self, event: Begin) -> None:
        for callback in self.callbacks:
            if _defines(callback, "on_begin"):
                callback.on_begin(event)
            self._begun.append(callback)  # it gets on_end, whatever happens next

    def evaluation(self, event: Evaluated) -> None:
        for method in self._evaluation:
            method(event)

    def arrivals(self, event: Arrivals) -> None:
        for method in self._arrivals:
            method(event)

    def end(self, summary: dict[str, Any]) -> None:
        """``on_end`` for every callback that began, once (a failing one does not stop the
        others from closing)."""
        if self._ended:
            return
        self._ended = True
        error: BaseException | None = None
        for callback in self._begun:
            if _defines(callback, "on_end"):
                try:
                    callback.on_end(summary)
                except BaseException as raised:  # re-raised once every callback closed
                    error = error or raised
        if error is not None:
            raise error

    def _methods(self, name: str) -> list[Any]:
        return [getattr(c, name) for c in self.callbacks if _defines(c, name)]


def _defines(callback: Any, name: str) -> bool:
    """Whether ``callback`` has its own ``name`` (not :class:`Callback`'s no-op)."""
    method = getattr(type(callback), name, None)
    if method is None:
        return callable(getattr(callback, name, None))  # e.g. set on the instance
    return method is not getattr(Callback, name, None)
