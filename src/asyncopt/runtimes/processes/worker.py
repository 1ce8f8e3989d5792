"""The worker process of the server-mode runtime: wait for a job, read the model, send a gradient.

Each worker (APAM's worker, Xu et al.) owns its data shard (worker ``i`` of the problem, which
was pickled to it once at start-up), its minibatch generator (the simulator's
:func:`~asyncopt.runtimes.common.generators.worker_generators`, so worker i draws the same minibatch
stream as in the simulator) and one torch thread. It loops:

    job = next command ; v = read the latest model from shared memory ;
    g = ∇f_i(x_v; minibatch) ; pad to time_scale × τ_i(now) ; write g into its slot ; notify

Commands on the worker's pipe are ``(job, now)``: ``job > 0`` computes (``now``, the main
process's clock, is where the speed model is sampled, as the simulator does at a start),
``CANCEL`` abandons the current job and idles, ``STOP`` exits. Heterogeneity is emulated by
*padding*: a gradient takes ``max(measured, time_scale × speed.compute_time(i, now))`` wall
seconds, so with a time scale larger than the real compute time the workers keep the speed
model's ratios exactly (``factors = [3, 1]``: worker 0 is three times slower). An emulated slow
machine behaves as a real one: a cancel or a restart's new job waits until the gradient and its
padding are done (a real machine cannot interrupt a gradient's computation either, and the Ray
actors finish a cancelled task too); the gradient is then dropped, not sent, and the newest
command taken. The padding is a wait on the pipe, so STOP ends it at once.

Messages back are ``("ready",)``, ``("grad", job, version, loss, compute_time, retries)`` and
``("error", traceback)``. SIGINT, SIGTERM and SIGHUP are ignored: they are the main process's to
handle, and it stops the workers itself. A worker whose main process dies sees its pipe close and
exits.
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import torch

from asyncopt import tree
from asyncopt.problems.base import Problem
from asyncopt.runtimes.common.generators import worker_generators
from asyncopt.runtimes.common.padding import Padding
from asyncopt.runtimes.common.shared import GradientSlots, SharedCounters, SharedModel
from asyncopt.runtimes.processes.device import local_device
from asyncopt.runtimes.signals import ignore_in_worker

CANCEL, STOP = 0, -1
_PARENT_CHECK = 1.0  # seconds between checks that the main process is still there


def worker_main(worker: int, conn: Connection, problem: Problem, model: SharedModel,
                slots: GradientSlots, speed: Any, seed: int, time_scale: float) -> None:
    """Entry point of worker process ``worker`` (runs until STOP, a closed pipe or an error)."""
    guarded(conn, lambda: _Worker(worker, conn, problem, model, slots, speed, seed,
                                  time_scale).loop())


def guarded(conn: Connection, body: Callable[[], None]) -> None:
    """Run a worker's ``body`` with one torch thread and SIGINT, SIGTERM and SIGHUP ignored (the
    main process stops its workers: :mod:`asyncopt.runtimes.signals`); report its exception on
    the pipe; always close the pipe (shared by the workers of both modes)."""
    ignore_in_worker()
    torch.set_num_threads(1)
    try:
        body()
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the main process is gone: nothing to report to
    except BaseException:
        with contextlib.suppress(OSError):
            conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def next_command(conn: Connection, parent: int) -> tuple[int, float]:
    """Wait for the main process's next ``(job, now)``; STOP if the main process died."""
    while not conn.poll(_PARENT_CHECK):
        if os.getppid() != parent:  # re-parented: the main process died
            return STOP, 0.0
    return conn.recv()


def newest_command(conn: Connection, command: tuple[int, float] | None = None,
                   ) -> tuple[int, float] | None:
    """The newest of ``command`` and the commands already waiting on the pipe (a later one
    supersedes an earlier: a cancel or a restart's new job), or STOP if one of them is."""
    while conn.poll():
        command = conn.recv()
        if command[0] == STOP:
            break
    return command


class _Worker:
    def __init__(self, worker: int, conn: Connection, problem: Problem, model: SharedModel,
                 slots: GradientSlots, speed: Any, seed: int, time_scale: float) -> None:
        self.worker, self.conn, self.problem = worker, conn, problem
        self.model, self.slots = model, slots
        self.padding = Padding(speed, worker, time_scale)
        self.generator = worker_generators(seed, problem.num_workers)[worker]
        self.flat = torch.empty_like(model.slots[0], device=local_device())  # None: the slots'
        self.params = tree.unflatten(self.flat, model.like)  # views into ``flat``
        self.gradient = problem.gradient_at(self.params, worker)  # bound once to the views
        self.parent = os.getppid()

    def loop(self) -> None:
        self.conn.send(("ready",))
        command = self._next_command()
        while command[0] != STOP:
            job, now = command
            command = self._compute(job, now) if job > 0 else self._next_command()

    def _next_command(self) -> tuple[int, float]:
        """The next command; of several already waiting, the newest (superseded jobs are
        never begun)."""
        command = newest_command(self.conn, next_command(self.conn, self.parent))
        assert command is not None
        return command

    def _compute(self, job: int, now: float) -> tuple[int, float]:
        """Run one job to its end, padding included; answer the next command. A command that
        came meanwhile (a cancel, or a restart's new job) supersedes the gradient, which is
        then not sent, and the newest one is answered; only STOP cuts the padding short."""
        start = time.perf_counter()
        version, retries = self.model.read(self.flat)
        loss, grads = self.gradient(self.generator)
        newest = None
        while (rest := self.padding.rest(start, now)) > 0.0 and self.conn.poll(rest):
            newest = self.conn.recv()
            if newest[0] == STOP:
                return newest
        newest = newest_command(self.conn, newest)
        if newest is not None:
            return newest
        self.slots.write(self.worker, grads)
        self.conn.send(("grad", job, version, float(loss), time.perf_counter() - start, retries))
        return self._next_command()


_FLUSH = 0.01  # seconds a report may wait in a reporting worker before it is sent


class ReportingWorker:
    """The loop of a worker that takes steps itself and reports them (lock-free mode,
    :mod:`.lockfree_worker`; parameter servers, :mod:`.servers_worker`).

    After ``START`` it calls :meth:`step` until the shared stop flag is set or :meth:`version`
    reaches ``max_version``, then says ``("idle",)`` and waits for STOP. Rows ``(action,
    version_after, delay, loss, compute_time, block_kind)`` are sent as ``("steps", rows)`` at
    most every ``_FLUSH`` seconds, so that the main process, which competes with the workers for
    the cores, wakes once per batch rather than once per step.
    """

    def __init__(self, worker: int, conn: Connection, problem: Problem, counters: SharedCounters,
                 options: dict[str, Any]) -> None:
        self.worker, self.conn, self.problem, self.counters = worker, conn, problem, counters
        self.padding = Padding(options["speed"], worker, options["time_scale"])
        self.max_version = options["max_version"]
        self.generator = worker_generators(options["seed"], problem.num_workers)[worker]
        self.parent = os.getppid()
        self._rows: list[tuple[Any, ...]] = []
        self._flushed = time.perf_counter()

    def version(self) -> int:
        """The shared version the budget is checked against."""
        return self.counters.version

    def step(self, now: float) -> None:
        """Compute one gradient, apply it (or have it applied), :meth:`report` it."""
        raise NotImplementedError

    def loop(self) -> None:
        self.conn.send(("ready",))
        command = next_command(self.conn, self.parent)
        while command[0] != STOP:
            if command[0] > 0:
                command = self._run(command[1])
            else:
                command = next_command(self.conn, self.parent)

    def _run(self, now: float) -> tuple[int, float]:
        """Step until told to stop; answer the next command."""
        origin = time.perf_counter() - now  # the main process's clock, for the speed model
        while not self.counters.stopped and self.version() < self.max_version:
            self.step(time.perf_counter() - origin)
            if time.perf_counter() - self._flushed > _FLUSH:
                self._flush()
                # commands are read once per batch, not per step (a poll is a system call): the
                # main process stops the loop through the shared flag, and a closed pipe (the
                # main process died) is seen within one batch
                if self.conn.poll():
                    return self.conn.recv()
        self._flush()
        self.conn.send(("idle",))
        return next_command(self.conn, self.parent)

    def pad(self, start: float, now: float) -> bool:
        """Wait until the emulated compute time ``time_scale × τ_i(now)`` since ``start`` has
        passed; answer False if a command came meanwhile (the gradient is then abandoned)."""
        return self.padding.wait(start, now, self.conn.poll)

    def report(self, action: str, version: int, delay: int, loss: float, start: float,
               kind: str) -> None:
        self._rows.append((action, version, delay, float(loss), time.perf_counter() - start,
                           kind))

    def _flush(self) -> None:
        if self._rows:
            self.conn.send(("steps", self._rows))
            self._rows = []
        self._flushed = time.perf_counter()
