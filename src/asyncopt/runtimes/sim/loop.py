"""The discrete-event simulator: heterogeneous workers on a virtual clock.

The one event loop of asyncopt (in the spirit of SimPy, reduced to what asynchronous optimization
needs). Each busy worker has one pending event, its *finish time*, on a min-heap ordered by
``(finish time, schedule order)``: ties are broken by the order in which computations were
started, so the same seed always gives the same sequence of events, bit for bit.

When a worker starts at virtual time ``now`` it is handed the server's model *as it is then*
(version v), and its finish time is ``now + compute_time`` from the speed model. Its gradient is
evaluated at that snapshot when the event fires, so the delay δ = server version − v that the
protocol measures is the real staleness of that gradient. Snapshots are shared by all workers that
start at the same version (the server steps out of place, so a version's parameters are never
modified) and freed when the last of them finishes. Cancelled computations (a
protocol's ``Reply.cancel``) are dropped lazily: their heap entries no longer match the worker's
current job and are skipped. No gradient is computed for them.

Batched evaluation (``batch`` > 1): when an event fires, every other pending computation that
started at the same version (the same snapshot) is evaluated with it in one
``problem.loss_and_grads`` call, up to ``batch`` of them, and its result is kept until its own
event fires. Malenia, Rennala and minibatch restart all n workers at one model, so there the
batches are large. The history is the same as without batching (to float rounding): each
worker still draws its minibatch from its own generator, in the order of its own computations,
and a computation that is cancelled after being evaluated early gives its draw back (the
generator's state is restored), as if it had never been evaluated.

Computing ahead (``ahead`` = k ≥ 1): a background thread computes pending gradients in event
order, at most k ahead of the loop, while the loop runs the protocol, the rule and the recorder
(:mod:`asyncopt.runtimes.sim.ahead`); the same history, on two cores.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
import torch

from asyncopt.errors import ConfigError, check_int
from asyncopt.problems.base import Problem
from asyncopt.protocols.base import Arrival, Reply
from asyncopt.runtimes.coordinator import Coordinator
from asyncopt.runtimes.sim.ahead import Ahead
from asyncopt.runtimes.sim.speed import SpeedModel
from asyncopt.tree import Params


@dataclass(slots=True)
class _Job:
    worker: int
    order: int
    version: int
    params: Params | None
    started: float
    result: tuple[float, Params] | None = None  # evaluated early, in a batch
    state: torch.Tensor | None = None  # the worker's generator state before that evaluation
    stage: int = 0  # computing ahead: queued, running, done or dropped (see sim.ahead)


def worker_generators(seed: int, num_workers: int) -> list[torch.Generator]:
    """One torch generator per worker (minibatch sampling), seeded from (seed, worker)."""
    generators = []
    for worker in range(num_workers):
        generator = torch.Generator()
        state = np.random.SeedSequence([seed, worker]).generate_state(2, dtype=np.uint32)
        generator.manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
        generators.append(generator)
    return generators


class Simulator:
    """Runs a coordinator's protocol in virtual time with gradients from ``problem``."""

    name = "sim"
    asks_model_for = True

    def __init__(self, problem: Problem, speed: SpeedModel, seed: int, threads: int = 1,
                 batch: int = 1, ahead: int = 0) -> None:
        self.problem = problem
        self.threads = threads
        # batching pays only where the problem has a batched path of its own
        batched = type(problem).loss_and_grads is not Problem.loss_and_grads
        self.batch = batch if batched else 1
        self.ahead = ahead
        self._ahead: Ahead | None = None
        self.speed = speed
        self.generators = worker_generators(seed, problem.num_workers)
        self.now = 0.0
        self._heap: list[tuple[float, int, int]] = []
        self._jobs: dict[int, _Job] = {}
        self._order = 0
        self._waiting: dict[int, list[_Job]] = {}  # version -> jobs not evaluated yet

    def run(self, coordinator: Coordinator) -> None:
        """Simulate until the coordinator says stop or no worker is computing."""
        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        if self.ahead:
            self._ahead = Ahead(self.problem, self.generators, self.ahead, self.threads)
        try:
            self._loop(coordinator)
        finally:
            if self._ahead is not None:
                self._ahead.close()
            torch.set_num_threads(threads)

    def _loop(self, coordinator: Coordinator) -> None:
        self._apply(coordinator, coordinator.begin(self.now))
        heap, jobs = self._heap, self._jobs
        while coordinator.stop_reason is None:
            if not heap:
                coordinator.stop("no worker is computing: the protocol left every worker idle",
                                 status="stalled")
                break
            finish, order, worker = heap[0]
            if not coordinator.advance(finish):
                break
            heapq.heappop(heap)
            job = jobs.get(worker)
            if job is None or job.order != order:
                continue  # this computation was cancelled
            del jobs[worker]
            self.now = finish
            if self._ahead is not None:
                loss, grads = self._ahead.take(job)
            else:
                loss, grads = job.result if job.result is not None else self._evaluate(job)
            arrival = Arrival(worker, job.version, grads, loss, finish - job.started)
            self._apply(coordinator, coordinator.arrive(finish, arrival))

    def _evaluate(self, job: _Job) -> tuple[float, Params]:
        """``job``'s gradient, and with it those of up to ``batch`` − 1 other pending jobs at
        the same version (kept on them until their events fire)."""
        waiting = self._waiting.pop(job.version, None)
        if self.batch == 1 or waiting is None:
            return self.problem.loss_and_grad(job.params, job.worker, self.generators[job.worker])
        jobs = self._jobs
        live = [other for other in waiting if other is not job
                and jobs.get(other.worker) is other and other.params is job.params]
        batch, rest = [job, *live[:self.batch - 1]], live[self.batch - 1:]
        if rest:  # they wait for a later event
            self._waiting[job.version] = rest
        generators = [self.generators[other.worker] for other in batch]
        for other, generator in zip(batch[1:], generators[1:], strict=True):
            other.state = generator.get_state()
        results = self.problem.loss_and_grads(job.params, [other.worker for other in batch],
                                              generators)
        for other, result in zip(batch[1:], results[1:], strict=True):
            other.result = result
        return results[0]

    def _apply(self, coordinator: Coordinator, reply: Reply) -> None:
        for worker in reply.cancel:
            job = self._jobs.pop(worker, None)
            if job is not None:
                if self._ahead is not None:
                    self._ahead.cancel(job)
                elif job.state is not None:  # evaluated early: give the minibatch draw back
                    self.generators[worker].set_state(job.state)
                coordinator.cancelled(self.now, worker, job.version)
        for worker in reply.start:
            self._start(worker, *coordinator.protocol.model_for(worker))

    def _start(self, worker: int, version: int, params: Params) -> None:
        finish = self.now + self.speed.compute_time(worker, self.now)
        self._order += 1
        # the server never changes a version's params in place: the reference is the snapshot
        job = self._jobs[worker] = _Job(worker, self._order, version, params, self.now)
        if self._ahead is not None:
            self._ahead.submit(job, finish)
        elif self.batch > 1:
            self._waiting.setdefault(version, []).append(job)
        heapq.heappush(self._heap, (finish, self._order, worker))


def build(problem: Problem, speed: SpeedModel, seed: int, threads: int = 1,
          batch: int = 1, ahead: int = 0) -> Simulator:
    """The runtime registry's constructor for ``runtime = "sim"``.

    ``threads``: torch intra-op threads while simulating (restored afterwards). One gradient at
    a time of a small model gains nothing from more, and on a busy machine extra threads make it
    many times slower (measured 17× on 2 cores with the other one loaded). Raise it for big models.
    ``batch``: at most this many pending gradients at one snapshot are evaluated together
    (1, the default: one at a time); see the module docstring. Off by default: on the 2-core
    CPU it made the MNIST comparison slower, not faster (benchmarks/RESULTS.md, "Simulator
    speed"), since a 100k-parameter gradient costs its memory traffic whether batched or not
    and early work that a protocol then cancels is wasted.
    ``ahead``: compute up to this many pending gradients ahead of the event loop, in a
    background thread (0, the default: none); see :mod:`asyncopt.runtimes.sim.ahead`. The
    problem's ``loss_and_grad`` then runs on another thread than its ``evaluate``. Not together
    with ``batch`` > 1.
    """
    ahead = check_int("runtime_options.ahead", ahead, 0)
    batch = check_int("runtime_options.batch", batch, 1)
    if ahead and batch > 1:
        raise ConfigError("runtime_options.ahead", ahead,
                          "0 when runtime_options.batch > 1 (one or the other)")
    return Simulator(problem, speed, seed,
                     threads=check_int("runtime_options.threads", threads, 1),
                     batch=batch, ahead=ahead)
