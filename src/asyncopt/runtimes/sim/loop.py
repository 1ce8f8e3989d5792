"""The discrete-event simulator: heterogeneous workers on a virtual clock.

The simulator's event source; the one driver (:mod:`asyncopt.runtimes.driver`) runs it as it runs
every runtime (SimPy's shape: the simulated environment differs from the real ones only in how it
waits). Each busy worker has one pending event, its *finish time*, on a min-heap ordered by
``(finish time, schedule order)``: ties are broken by the order in which computations were
started, so the same seed always gives the same sequence of events, bit for bit.

When a worker starts at virtual time ``now`` it is handed the server's model *as it is then*
(version v), and its finish time is ``now + compute_time`` from the speed model. Its gradient is
evaluated at that snapshot when the event fires, so the delay δ = server version − v that the
protocol measures is the real staleness of that gradient. Snapshots are shared by all workers that
start at the same version (the server steps out of place, so a version's parameters are never
modified) and freed when the last of them finishes. Cancelled computations (a
protocol's ``Reply.cancel``) are dropped lazily: their heap entries no longer match the worker's
current job and are skipped. No gradient is computed for them, nor for a computation that would
end after the time budget.

Batched evaluation (``batch`` > 1): when an event fires, every other pending computation that
started at the same version (the same snapshot) is evaluated with it in one
``problem.loss_and_grads`` call, up to ``batch`` of them, and its result is kept until its own
event fires. Malenia, Rennala and minibatch restart all n workers at one model, so there the
batches are large. The history is the same as without batching (to float rounding): each
worker still draws its minibatch from its own generator, in the order of its own computations,
and a computation that is cancelled after being evaluated early gives its draw back (the
generator's state is restored), as if it had never been evaluated.

The server's time (``[speed] server_time``, or a trace's measured server times): the server
handles one arrival at a time. A gradient that reaches it at t is handled from
b = max(t, f), f the end of the previous handling; its history row has time b (as in the real
runtimes, where a row's time is when the driver begins to handle it), and the server is busy
until b + s: the workers its reply starts begin then, and the next arrival waits for it. With
s = 0 (the default) every arrival is handled at its finish time, as before. A worker's
``latency`` (speed model) puts its arrival ℓ after the end of its computation.

What the workers share (:mod:`asyncopt.runtimes.sim.machine`, all off by default): with
``cores`` the jobs, the server's work and its evaluations share the cores by processor sharing
(a job's latency ℓ is then work before its computation, not travel after it), so a gradient's
arrival time is known only when its computation ends; with ``cancel = "finish"`` a cancelled
computation runs to its end before its worker starts the next job (a job started meanwhile
waits for it, and a newer start replaces a waiting one), with ``"queue"`` every job started
runs in turn; with
``eval_time`` each evaluation the coordinator made pauses the server, charged when the driver
next waits (after the arrival whose handling it preceded).

Computing ahead (``ahead`` = k ≥ 1): a background thread computes pending gradients in event
order, at most k ahead of the loop, while the loop runs the protocol, the rule and the recorder
(:mod:`asyncopt.runtimes.sim.ahead`); the same history, on two cores.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any

import torch

from asyncopt.problems.base import Problem
from asyncopt.runtimes.common.generators import worker_generators
from asyncopt.runtimes.coordinator import Coordinator
from asyncopt.runtimes.sim.ahead import Ahead
from asyncopt.runtimes.sim.machine import SharedCores
from asyncopt.runtimes.sim.speed import SpeedModel
from asyncopt.runtimes.source import Arrived, Event, EventSource
from asyncopt.tree import Params


@dataclass(slots=True)
class _Job:
    worker: int
    order: int
    version: int
    params: Params | None
    started: float  # when its computation began (later than its start when it waited)
    latency: float = 0.0  # seconds from the end of its computation to its arrival (speed model)
    compute: float = 0.0  # its computation's seconds (alone on a core, with ``cores``)
    before: float = 0.0  # with ``cores``: the speed model's latency, as work before computing
    result: tuple[float, Params] | None = None  # evaluated early, in a batch
    state: torch.Tensor | None = None  # the worker's generator state before that evaluation
    stage: int = 0  # computing ahead: queued, running, done or dropped (see sim.ahead)


class Simulator(EventSource):
    """The simulator's event source: a heap of virtual finish times; gradients from ``problem``."""

    name = "sim"

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
        self._server = speed.server_time if getattr(speed, "charges_server", False) else None
        self._latency = getattr(speed, "latency", None)
        self._cancel = getattr(speed, "cancel", "preempt")
        cores = getattr(speed, "cores", None)
        self._cores = SharedCores(cores, self._cancel) if cores else None
        self._eval_time = float(getattr(speed, "eval_time", 0.0))
        self._coordinator: Coordinator | None = None
        self._charged = 0  # the coordinator's evaluations whose pause was charged
        self._free: dict[int, float] = {}  # worker -> when its dropped computation ends
        self.generators = worker_generators(seed, problem.num_workers)
        self.clock = 0.0
        self.horizon = math.inf  # the time budget: a job that ends later is never computed
        self._heap: list[tuple[float, int, int]] = []
        self._jobs: dict[int, _Job] = {}
        self._waiting: dict[int, list[_Job]] = {}  # version -> jobs not evaluated yet

    def open(self, coordinator: Coordinator) -> None:
        self.clock = coordinator.now
        self._coordinator = coordinator
        if self._cores is not None:
            self._cores.cores.advance(self.clock)
        if coordinator.budget.time is not None:
            self.horizon = coordinator.budget.time
        if self.ahead:
            self._ahead = Ahead(self.problem, self.generators, self.ahead, self.threads)

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.close()
            self._ahead = None

    def now(self) -> float:
        return self.clock

    def wait(self, timeout: float) -> list[Event]:
        """The next arrival (cancelled computations are skipped): the clock moves to its
        finish time, or later if the server was busy. The gradient is computed only if the
        driver handles it (:meth:`receive`). With ``cores``, computations that end first
        become arrivals; with ``eval_time``, evaluations pause the server first: one that fell
        due before the arrival (the driver makes it before handling it), and any made since the
        last call that were not charged (the first, those by steps)."""
        coordinator = self._coordinator
        if self._eval_time and coordinator is not None and coordinator.evaluations > (
                self._charged):
            self._serve(self._eval_time * (coordinator.evaluations - self._charged))
            self._charged = coordinator.evaluations
        heap, jobs, cores = self._heap, self._jobs, self._cores
        while True:
            while heap:
                job = jobs.get(heap[0][2])
                if job is not None and job.order == heap[0][1]:
                    break
                heapq.heappop(heap)
            arrival = heap[0][0] if heap else math.inf
            due = self._due_evaluation()
            if cores is not None and cores.next_end() <= min(arrival, max(due, self.clock)):
                at, ready = cores.complete()
                if ready is not None:
                    self._ready(at, ready)
                continue
            if due < max(arrival, self.clock):  # the driver evaluates before it handles
                self.clock = max(due, self.clock)
                if cores is not None:
                    cores.cores.advance(self.clock)
                self._serve(self._eval_time)
                self._charged += 1
                continue
            if not heap:
                return []
            finish, _, worker = heapq.heappop(heap)
            job = jobs[worker]
            self.clock = max(finish, self.clock)  # later only if the server was busy
            if cores is not None:
                cores.cores.advance(self.clock)
            return [Arrived(worker, job.order, job.version, finish - job.started - job.latency,
                            job)]

    def _due_evaluation(self) -> float:
        """The time of the coordinator's next time-based evaluation whose pause is not yet
        charged (∞: none, or no ``eval_time``)."""
        coordinator = self._coordinator
        if not self._eval_time or coordinator is None:
            return math.inf
        due = coordinator.next_evaluation()
        return due if due < math.inf and self._charged == coordinator.evaluations else math.inf

    def receive(self, arrived: Arrived) -> tuple[float, Params]:
        job: _Job = arrived.payload
        del self._jobs[job.worker]
        if self._server is not None:  # the server handles it: busy until then
            self._serve(self._server(self.clock))
        if self._ahead is not None:
            return self._ahead.take(job)
        return job.result if job.result is not None else self._evaluate(job)

    def _serve(self, seconds: float) -> None:
        """The server works ``seconds`` from now (with ``cores``, seconds alone on a core,
        sharing them meanwhile): the clock moves to the end of its work."""
        if self._cores is None:
            self.clock += seconds
        else:
            self.clock = self._cores.serve(seconds, self.clock, self._ready)

    def _ready(self, at: float, job: Any) -> None:
        """With ``cores``: ``job``'s computation ended at ``at``; its gradient arrives."""
        heapq.heappush(self._heap, (at, job.order, job.worker))

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

    def cancel(self, worker: int, job: int) -> None:
        pending = self._jobs.pop(worker, None)
        if pending is None:
            return
        if self._ahead is not None:
            self._ahead.cancel(pending)
        elif pending.state is not None:  # evaluated early: give the minibatch draw back
            self.generators[worker].set_state(pending.state)
        if self._cores is not None:
            self._cores.cancel(pending, self.clock)
        elif self._cancel != "preempt":  # the worker is busy until its computation's end
            end = pending.started + pending.compute
            if self._cancel == "finish" and self.clock < pending.started:
                end = pending.started  # it waited: never begun
            if end > self.clock:
                self._free[worker] = end

    def state(self) -> dict[str, Any]:
        """Everything the simulation's future depends on besides the coordinator: the clock,
        the pending jobs (finish time, start order, model version, start time) with the
        snapshots they read, each worker's minibatch generator and the speed model's streams.
        A job evaluated early in a batch is saved unevaluated, with the generator state from
        before its draw (it is evaluated again after a resume, to float rounding)."""
        generators = [g.get_state() for g in self.generators]
        pending, snapshots = [], {}
        for finish, order, worker in sorted(self._heap):
            job = self._jobs.get(worker)
            if job is None or job.order != order:
                continue
            pending.append([worker, order, job.version, job.started, finish, job.latency,
                            job.compute])
            snapshots.setdefault(job.version, job.params)
            if job.state is not None:
                generators[worker] = job.state
        return {"clock": self.clock, "pending": pending, "generators": generators,
                "snapshots": [[v, dict(p)] for v, p in snapshots.items()],
                "speed": self.speed.state_dict(),
                "free": [[w, end] for w, end in self._free.items()]}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state` (before the driver's loop starts)."""
        self.clock = float(state["clock"])
        for generator, saved in zip(self.generators, state["generators"], strict=True):
            generator.set_state(saved)
        self.speed.load_state_dict(state["speed"])
        snapshots = {int(v): params for v, params in state["snapshots"]}
        self._charged = self._coordinator.evaluations if self._coordinator is not None else 0
        self._free = {int(w): float(end) for w, end in state.get("free", [])}
        for worker, order, version, started, finish, *times in state["pending"]:
            job = self._jobs[worker] = _Job(worker, order, version, snapshots[version], started,
                                            *times)
            if self.batch > 1:
                self._waiting.setdefault(version, []).append(job)
            heapq.heappush(self._heap, (finish, order, worker))

    def start(self, worker: int, job: int, version: int, params: Params) -> bool:
        compute = self.speed.compute_time(worker, self.clock)
        latency = self._latency(worker, self.clock) if self._latency is not None else 0.0
        # the server never changes a version's params in place: the reference is the snapshot
        pending = self._jobs[worker] = _Job(worker, job, version, params, self.clock, latency,
                                            compute)
        if self._cores is not None:  # the finish time is known only when it completes
            pending.before, pending.latency = latency, 0.0
            self._cores.start(pending, self.clock)
            if self.batch > 1:
                self._waiting.setdefault(version, []).append(pending)
            return True
        if self._cancel != "preempt":
            pending.started = max(self.clock, self._free.pop(worker, self.clock))
        finish = pending.started + compute + latency
        if finish <= self.horizon:  # else it never arrives: nothing computes it early
            if self._ahead is not None:
                self._ahead.submit(pending, finish)
            elif self.batch > 1:
                self._waiting.setdefault(version, []).append(pending)
        heapq.heappush(self._heap, (finish, job, worker))
        return True
