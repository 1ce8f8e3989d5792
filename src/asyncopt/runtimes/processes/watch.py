"""The main process of the runtimes whose workers report the steps they took: it only watches.

In lock-free mode (:mod:`.lockfree`) the workers apply their own updates; with concurrent
parameter servers (:mod:`.servers`) they hand each block's gradient to the block's server
process. Either way no arrival passes through the main process: the workers send rows
``(action, version_after, delay, loss, compute_time, block_kind)`` in batches, and the main
process records each with :meth:`~asyncopt.runtimes.coordinator.Coordinator.applied` (which also
evaluates the model and enforces the budget). When the coordinator says stop, the main process
raises the shared stop flag, records the steps that were in flight (at most one per worker, so
a step budget may be passed by up to ``n − 1`` steps: the history and the final model then
agree), and the runtime stops the processes with the pool's lifecycle. Reports can arrive out of
version order; the recorded version is the largest one reported so far. The main process reads
the pipes about every ``_REST`` = 20 ms and sleeps in between, so a row's ``now`` is when it was
read, up to ~30 ms after the step; deaths are seen within that. A worker that is killed
takes its unsent batch (at most ~10 ms of steps) with it: those steps were applied but have no
row, so the recorded version may then jump by more than one.
"""

from __future__ import annotations

import time
from typing import Any

from asyncopt.problems.base import Problem
from asyncopt.runtimes.coordinator import Coordinator
from asyncopt.runtimes.processes.pool import POLL, Event, WorkerPool, poll_timeout
from asyncopt.runtimes.processes.shared import SharedCounters

_DRAIN = 5.0  # seconds the workers get to report their last step once told to stop
_REST = 0.02
"""Seconds the main process sleeps after handling what the workers reported, so that their
batches pile up in the pipes meanwhile: a batch sent to a main process blocked in ``wait``
wakes it, and when the workers fill the cores a woken main process takes one from a worker
(profiled inside a worker on 2 cores: each such pipe write cost it about 1 ms of wall time)."""
START = 1  # the command that starts a worker's loop


class Watcher:
    """Base class: start the reporting workers, record their rows until stop, drain them."""

    name = "processes"
    asks_model_for = False  # workers read (and step) the shared model themselves
    pool: WorkerPool
    counters: SharedCounters

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.now = 0.0
        self.block_steps: list[dict[str, int]] = [{} for _ in range(problem.num_workers)]
        """Per worker: applied steps by block kind (``whole``, ``partition``, ``random``)."""
        self._idle: set[int] = set()
        self._version = 0

    def watch(self, coordinator: Coordinator, startup_timeout: float) -> None:
        """Wait for the workers, start them, record until the coordinator stops, drain."""
        self.pool.wait_ready(startup_timeout)
        self._t0 = time.perf_counter()
        coordinator.begin(self.now)
        for worker in range(self.problem.num_workers):
            self.pool.send(worker, START, self.now)
        while coordinator.stop_reason is None and not self._all_idle(coordinator):
            events = self._events(coordinator)
            self.now = time.perf_counter() - self._t0
            if not coordinator.advance(self.now):
                break
            self.check(coordinator)
            self._handle(coordinator, events)
            time.sleep(min(_REST, poll_timeout(coordinator, self._t0)))
        self._drain(coordinator)

    def _events(self, coordinator: Coordinator) -> list[Event]:
        """Every report waiting (several batches per worker after a rest: one read takes one
        message per pipe), and any death, error or idle; blocks until one comes."""
        events = self.pool.events(poll_timeout(coordinator, self._t0))
        more = events
        while more and all(kind == "steps" for _, kind, _ in more):
            more = self.pool.events(0.0)
            events += more
        return events

    def check(self, coordinator: Coordinator) -> None:
        """Called before every batch of events is handled: subclasses watch their other
        processes here (first, so that a server's death is the reason, not what it caused)."""

    def _handle(self, coordinator: Coordinator, events: list[Any]) -> None:
        for worker, kind, payload in events:
            if kind == "steps":
                for action, version, delay, loss, compute_time, block in payload[0]:
                    if action == "step":
                        self._version = max(self._version, version)
                        counts = self.block_steps[worker]
                        counts[block] = counts.get(block, 0) + 1
                    coordinator.applied(self.now, worker, self._version, delay, loss,
                                        compute_time, action)
            elif kind == "idle":
                self._idle.add(worker)
            elif kind == "dead":
                self._idle.discard(worker)
                self.pool.bury(worker, self.now, coordinator)
                coordinator.lost(self.now, worker)
            else:
                raise RuntimeError(f"worker process {worker} raised:\n{payload[0]}")

    def _drain(self, coordinator: Coordinator) -> None:
        """Stop the workers' loops and record the steps they applied meanwhile."""
        self.counters.stop()
        deadline = time.perf_counter() + _DRAIN
        while not self._all_idle(coordinator) and time.perf_counter() < deadline:
            events = self.pool.events(POLL)
            self.now = max(self.now, time.perf_counter() - self._t0)
            self._handle(coordinator, events)

    def _all_idle(self, coordinator: Coordinator) -> bool:
        idle = all(w in self._idle for w in range(self.problem.num_workers) if self.pool.alive[w])
        if idle and coordinator.stop_reason is None:
            coordinator.stop(f"every worker stopped at version {self._version}")
        return idle
