"""The event source of the runtimes whose workers report the steps they took: the driver watches.

In lock-free mode (:mod:`.lockfree`) the workers apply their own updates; with concurrent
parameter servers (:mod:`.servers`) they hand each block's gradient to the block's server
process. Either way no arrival passes through the main process: the workers send rows
``(action, version_after, delay, loss, compute_time, block_kind)`` in batches, which become
:class:`~asyncopt.runtimes.source.Applied` events that the driver records (and so evaluates
and budgets). When the coordinator says stop, the driver raises the shared stop flag
(:meth:`Watcher.stop`) and records the steps that were in flight (at most one per worker, so
a step budget may be passed by up to ``n − 1`` steps: the history and the final model then
agree), and the source stops the processes with the pool's lifecycle. Reports can arrive out of
version order; the recorded version is the largest one reported so far. The main process reads
the pipes about every ``_REST`` = 20 ms and sleeps in between, so a row's ``now`` is when it was
read, up to ~30 ms after the step; deaths are seen within that. A worker that is killed
takes its unsent batch (at most ~10 ms of steps) with it: those steps were applied but have no
row, so the recorded version may then jump by more than one.
"""

from __future__ import annotations

import time

from asyncopt.problems.base import Problem
from asyncopt.runtimes.common.shared import SharedCounters
from asyncopt.runtimes.common.steplog import Row, StepLog
from asyncopt.runtimes.coordinator import Coordinator
from asyncopt.runtimes.processes.pool import WorkerPool
from asyncopt.runtimes.source import Applied, Ended, Event, Lost, RealTimeSource
from asyncopt.tree import Params

_REST = 0.02
"""Seconds the main process sleeps after handling what the workers reported, so that their
batches pile up in the pipes meanwhile: a batch sent to a main process blocked in ``wait``
wakes it, and when the workers fill the cores a woken main process takes one from a worker
(profiled inside a worker on 2 cores: each such pipe write cost it about 1 ms of wall time)."""
START = 1  # the command that starts a worker's loop


class Watcher(RealTimeSource):
    """Base class of the sources whose workers step by themselves and report their rows."""

    name = "processes"
    asks_model_for = False  # workers read (and step) the shared model themselves
    reports_steps = True
    pool: WorkerPool
    counters: SharedCounters

    def __init__(self, problem: Problem) -> None:
        super().__init__()
        self.problem = problem
        self.block_steps: list[dict[str, int]] = [{} for _ in range(problem.num_workers)]
        """Per worker: applied steps by block kind (``whole``, ``partition``, ``random``)."""
        self._rested = False
        self.log: StepLog | None = None  # the workers' rows in shared memory (lock-free mode)

    def ready(self, coordinator: Coordinator, startup_timeout: float) -> None:
        """Wait for the workers; the clock starts now."""
        self.pool.wait_ready(startup_timeout)
        self.clock.reset(coordinator.now)

    def start(self, worker: int, job: int, version: int, params: Params) -> bool:
        return self.pool.send(worker, START, self.now())  # its loop of steps begins

    def wait(self, timeout: float) -> list[Event]:
        """Every report waiting (several batches per worker after a rest: one read takes one
        message per pipe), and any death, error or end of a loop; blocks until one comes."""
        if self._rested:
            time.sleep(min(_REST, timeout))
        self._rested = True
        messages = self.pool.events(timeout)
        more = messages
        while more and all(kind == "steps" for _, kind, _ in more):
            more = self.pool.events(0.0)
            messages += more
        found = self.check()  # after the wait, before the reports: a server's death is seen
        ended: list[Event] = []
        for worker, kind, payload in messages:
            if kind == "steps":
                found += self._applied(worker, payload[0])
            elif kind == "idle":
                ended.append(Ended(worker))
            elif kind == "dead":
                code = self.pool.mark_dead(worker)
                ended.append(Lost(worker, f"worker process {worker} died (exit code {code})"))
            else:
                raise RuntimeError(f"worker process {worker} raised:\n{payload[0]}")
        return found + self.logged() + ended  # the log after the pipes: rows precede "idle"

    def logged(self) -> list[Event]:
        """The rows the workers wrote into the step log since the last call (lock-free mode)."""
        if self.log is None:
            return []
        return [event for worker in range(self.problem.num_workers)
                for event in self._applied(worker, self.log.take(worker))]

    def _applied(self, worker: int, rows: list[Row]) -> list[Event]:
        counts = self.block_steps[worker]
        for action, *_, block in rows:
            if action == "step":
                counts[block] = counts.get(block, 0) + 1
        return [Applied(worker, *row[:5]) for row in rows]

    def check(self) -> list[Event]:
        """Subclasses watch their other processes here; their events come before the workers'
        reports (so that a server's death is the reason, not what it caused)."""
        return []

    def stop(self) -> None:
        self.counters.stop()  # the workers' loops end; their last rows are drained
