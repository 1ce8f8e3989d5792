"""Pending gradients computed ahead, on a second core, while the event loop steps the server.

When the simulator starts a job (worker i at version v, finish time t), everything its gradient
depends on is already known: the snapshot x_v (the server steps out of place, so x_v is never
modified) and worker i's generator, which only i's own jobs draw from, one job at a time. The
gradient g_i(x_v) can therefore be computed at any moment between the job's start and its event,
on another thread, and the event loop only has to pick it up. torch releases the GIL inside its
kernels, so a background thread computing gradients and the main thread running the protocol,
the rule and the recorder use both cores.

Order: the background thread computes queued jobs in event order, ``(finish time, start order)``,
the order in which the loop consumes them, and holds at most ``depth`` finished gradients that
the loop has not taken yet. A job the loop needs that has not been started is computed by the
loop itself (both threads then compute gradients at once, where the problem allows it).

Same history as the plain loop: each gradient is computed from the same snapshot with the same
generator state, since a worker's jobs still draw in the order of that worker's jobs. A job that
the protocol cancels (Malenia, Rennala, Ringmaster with stops) is dropped if it has not started;
if it was computed ahead, its minibatch draw is given back (the generator's state before it is
restored) and the work is wasted, counted in :attr:`Ahead.wasted`. ``depth`` bounds that waste
and the memory held: at most ``depth`` + 1 gradients besides the snapshots of queued jobs.

Thread safety: the problem's ``loss_and_grad`` runs on two threads. Unless the problem says that
two calls may run at once (``concurrent_gradients = True``, as the closed-form classifiers do),
calls are serialized by a lock, and only the loop's own work overlaps with the gradients.
"""

from __future__ import annotations

import heapq
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from asyncopt.problems.base import Problem
from asyncopt.tree import Params

QUEUED, RUNNING, DONE, DROPPED = range(4)


class Ahead:
    """A background thread that computes pending jobs' gradients in event order."""

    def __init__(self, problem: Problem, generators: list[torch.Generator], depth: int,
                 threads: int) -> None:
        self.problem, self.generators = problem, generators
        self.depth, self.threads = depth, threads
        self.computed = 0  # gradients computed by the background thread
        self.wasted = 0  # ... of which the protocol cancelled the job: work thrown away
        self.cpu_seconds = 0.0  # the background thread's CPU time, once it has stopped
        self._cond = threading.Condition()
        self._queue: list[tuple[float, int, Any]] = []  # (finish, order, job), QUEUED first
        self._ready = 0  # computed ahead, not taken yet
        self._closed = False
        self._guard: AbstractContextManager[Any] = (
            nullcontext() if getattr(problem, "concurrent_gradients", False) else threading.Lock())
        self._thread = threading.Thread(target=self._work, name="asyncopt-sim-ahead",
                                        daemon=True)
        self._thread.start()

    def submit(self, job: Any, finish: float) -> None:
        """Queue ``job`` (it has ``worker``, ``order``, ``params``; gets ``stage``, ``result``)."""
        job.stage = QUEUED
        with self._cond:
            heapq.heappush(self._queue, (finish, job.order, job))
            if self._ready < self.depth:
                self._cond.notify()

    def take(self, job: Any) -> tuple[float, Params]:
        """``job``'s loss and gradient: computed ahead, awaited, or computed here and now. While
        the background thread finishes it, the loop computes the next queued job itself."""
        cond = self._cond
        with cond:
            while job.stage == RUNNING:
                other = self._next() if self._ready < self.depth else None
                if other is None:
                    cond.wait()
                    continue
                cond.release()
                try:
                    self._compute(other, keep_state=True)
                finally:
                    cond.acquire()
                self._done(other)
            steal = job.stage == QUEUED
            if steal:
                job.stage = RUNNING  # its queue entry is skipped when it comes up
            else:
                self._ready -= 1
                cond.notify()
        if steal:
            self._compute(job, keep_state=False)
        result, job.result = job.result, None
        if isinstance(result, BaseException):
            raise result
        return result

    def cancel(self, job: Any) -> None:
        """The protocol cancelled ``job``: drop it, or give back the draw of its gradient."""
        with self._cond:
            if job.stage == QUEUED:
                job.stage = DROPPED
                job.params = None
                return
            while job.stage == RUNNING:
                self._cond.wait()
            self._ready -= 1
            self.wasted += 1
            self._cond.notify()
        job.result = None
        self.generators[job.worker].set_state(job.state)

    def close(self) -> None:
        """Stop the background thread (after the gradient it is computing, if any)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    def _compute(self, job: Any, keep_state: bool) -> None:
        generator = self.generators[job.worker]
        if keep_state:  # a job computed ahead may still be cancelled
            job.state = generator.get_state()
        try:
            with self._guard:
                job.result = self.problem.loss_and_grad(job.params, job.worker, generator)
        except Exception as error:  # raised in the loop's thread, at the job's event
            job.result = error
        job.params = None  # the snapshot is no longer needed by this job

    def _next(self) -> Any:
        """The first queued job in event order, now running (None if there is none); under
        the lock."""
        queue = self._queue
        while queue and queue[0][2].stage != QUEUED:
            heapq.heappop(queue)  # taken by the loop, or cancelled
        if not queue:
            return None
        job = heapq.heappop(queue)[2]
        job.stage = RUNNING
        return job

    def _done(self, job: Any) -> None:
        """``job`` was computed ahead; under the lock."""
        job.stage = DONE
        self._ready += 1
        self.computed += 1
        self._cond.notify_all()

    def _work(self) -> None:
        torch.set_num_threads(self.threads)
        start = time.thread_time()
        try:
            self._serve()
        finally:
            self.cpu_seconds = time.thread_time() - start

    def _serve(self) -> None:
        cond = self._cond
        while True:
            with cond:
                job = None
                while not self._closed:
                    job = self._next() if self._ready < self.depth else None
                    if job is not None:
                        break
                    cond.wait()
                if job is None:
                    return
            try:
                self._compute(job, keep_state=True)
            except BaseException as error:  # not an Exception: still the loop's to raise
                job.result = error
            with cond:
                self._done(job)
