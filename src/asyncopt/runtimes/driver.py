"""The one driver of every runtime: one loop over an event source's events.

    source.open(coordinator)
    execute(coordinator.begin(now))
    while the coordinator does not say stop:
        if no job is in flight: stop (every worker stopped, or the protocol left all idle)
        events = source.wait(timeout)         # a heap pop in the simulator, pipes or ray.wait
        coordinator.advance(source.now())     # time-based evaluations, the time budget
        handle each event                     # arrivals, applied steps, lost workers, ...
        checkpoint every ``checkpoint_every`` steps
    source.stop(); drain the reports of workers that step by themselves; source.close()

The driver owns the **job table** (worker → the job number and model version it computes at):
a reply's ``start`` gives a worker a new job number (so a result of an older job, arriving
late, is recognized and dropped), a ``cancel`` records a ``cancel`` row and tells the source.
Protocol state about who computes lives in the protocol (``Protocol.in_flight``); the job table
adds only what a runtime needs to match results to starts.

Sources that step by themselves (lock-free workers, block servers) report :class:`Applied`
events; these are recorded whenever they come, also while the run is being stopped, so the
history accounts for every step that was reported. When a worker dies its job in flight gets a
``cancel`` row and the worker a ``lost`` row (or ``lost`` then ``restart`` when the runtime
restarts it), and the protocol decides whether the run goes on.

Run events go to the ``asyncopt`` logger (:mod:`logging`, not :mod:`warnings`: they are what
happened to this run, not a caller's misuse, and logging reaches the application's handlers):
a worker lost or restarting at WARNING, a worker back and a checkpoint written at INFO.
"""

from __future__ import annotations

import logging
import time

import torch

from asyncopt.protocols.base import Arrival, Reply
from asyncopt.runtimes import signals
from asyncopt.runtimes.coordinator import Coordinator
from asyncopt.runtimes.snapshot import CHECKPOINT, save
from asyncopt.runtimes.source import (
    Applied,
    Arrived,
    Ended,
    Event,
    EventSource,
    Failed,
    Lost,
    Restarted,
    Restarting,
)

log = logging.getLogger(__name__)  # under "asyncopt": the CLI shows it on stderr

POLL = 0.05
"""Seconds a real source waits at most for events, so that time-based evaluations and a time
budget are met on time even when no worker reports."""
DRAIN = 5.0
"""Seconds workers that step by themselves get to report their last steps once told to stop."""


class Driver:
    """Runs ``source`` for ``coordinator`` until the coordinator says stop."""

    def __init__(self, source: EventSource, coordinator: Coordinator) -> None:
        self.source, self.coordinator = source, coordinator
        self.jobs: dict[int, tuple[int, int]] = {}  # worker -> (job number, model version)
        self.started: dict[int, float] = {}  # worker -> the source's clock at its job's start
        self.restarting: set[int] = set()
        self.lost: set[int] = set()
        self.ended = False  # a worker's own loop ended (sources that step by themselves)
        self._job_counter = 0
        self._checkpointed = coordinator.version

    def run(self) -> None:
        threads = torch.get_num_threads()
        torch.set_num_threads(self.source.threads)
        try:
            self.source.open(self.coordinator)
            exact = self._restore()
            with signals.running():
                self._loop(exact)
            self.source.stop()
            if self.source.reports_steps:
                self._drain()
            self.coordinator.server_versions = self.source.server_versions()
            self.coordinator.cpus = self.source.cpus
        finally:
            self.source.close()
            torch.set_num_threads(threads)

    def _restore(self) -> bool:
        """A checkpoint of this runtime with its work in flight (the simulator's): the job
        table and the source continue from it. Answers whether they did."""
        saved = self.coordinator.source_state
        if saved is None or saved["runtime"] != self.source.name:
            return False
        self.source.restore(saved)
        self.jobs = {worker: (job, version) for worker, job, version in saved["jobs"]}
        self._job_counter = saved["job_counter"]
        self.started = {int(worker): float(at) for worker, at in saved.get("started", [])}
        return True

    def _loop(self, exact: bool) -> None:
        coordinator, source = self.coordinator, self.source
        self._execute(coordinator.proceed() if exact else coordinator.begin(source.now()))
        while coordinator.stop_reason is None:
            if not self.jobs and not self.restarting:
                self._idle()
                break
            events = source.wait(self._timeout())
            going = coordinator.advance(source.now())
            for event in events:  # steps taken elsewhere are recorded even when stopping
                self._handle(event)
            coordinator.batch()
            if not going:
                break
            self._checkpoint()

    def _timeout(self) -> float:
        limit = self.coordinator.budget.time
        if limit is None:
            return POLL
        return min(POLL, max(0.0, limit - self.source.now()) + 1e-3)

    def _handle(self, event: Event) -> None:
        coordinator, now = self.coordinator, self.source.now()
        if isinstance(event, Arrived):
            if coordinator.stop_reason is not None or self.jobs.get(event.worker, (None,))[
                    0] != event.job:
                return  # the run stops, or a cancelled or superseded job
            del self.jobs[event.worker]
            loss, grads = self.source.receive(event)
            arrival = Arrival(event.worker, event.version, grads, loss, event.compute_time)
            # what the simulator needs to replay this run's cost (asyncopt.record): the job's
            # time besides its compute time, on the driver's clock only (never another
            # machine's), and the server's time on it, up to the protocol's answer
            latency = now - self.started.pop(event.worker, now) - event.compute_time
            self._execute(coordinator.arrive(now, arrival, max(0.0, latency),
                                               self.source.now))
        elif isinstance(event, Applied):  # recorded even while stopping: the step was taken
            coordinator.applied(now, event.worker, event.version, event.delay, event.loss,
                                event.compute_time, event.action)
        elif isinstance(event, Ended):
            self.jobs.pop(event.worker, None)
            self.ended = True
        elif isinstance(event, Lost):
            self._lose(event.worker, event.why)
        elif isinstance(event, Restarting):
            self._drop_job(event.worker)
            self.restarting.add(event.worker)
            log.warning("%s at %.3f s; its runtime restarts it",
                        event.why or f"worker {event.worker} died", now)
            coordinator.restarting(now, event.worker)
        elif isinstance(event, Restarted):
            self.restarting.discard(event.worker)
            log.info("worker %d is back at %.3f s (version %d)", event.worker, now,
                     coordinator.version)
            self._execute(coordinator.restarted(now, event.worker))
        elif isinstance(event, Failed):
            coordinator.stop(event.reason, status="failed")

    def _execute(self, reply: Reply) -> None:
        """Carry out a protocol's reply: cancel, then start (a restart is a cancel and a start)."""
        coordinator, source = self.coordinator, self.source
        for worker in reply.cancel:
            job = self.jobs.pop(worker, None)
            if job is not None:
                coordinator.cancelled(source.now(), worker, job[1])
                source.cancel(worker, job[0])
        if coordinator.stop_reason is not None:
            return  # nothing new starts in a run that stops
        for worker in reply.start:
            if worker in self.restarting or worker in self.lost:
                continue  # it starts when it is back (Coordinator.restarted), or never
            version, params = coordinator.protocol.model_for(worker)
            self._job_counter += 1
            self.jobs[worker] = (self._job_counter, version)
            self.started[worker] = source.now()
            if not source.start(worker, self._job_counter, version, params):
                self._lose(worker, "")

    def _drop_job(self, worker: int) -> None:
        """A dead worker's job in flight: a ``cancel`` row, its gradient never comes (a worker
        that steps by itself has no gradient in flight that the history knows of)."""
        job = self.jobs.pop(worker, None)
        if job is not None and not self.source.reports_steps:
            self.coordinator.cancelled(self.source.now(), worker, job[1])

    def _lose(self, worker: int, why: str) -> None:
        if worker in self.lost:
            return
        self._drop_job(worker)
        self.restarting.discard(worker)
        self.lost.add(worker)
        coordinator, now = self.coordinator, self.source.now()
        left = len(coordinator.protocol.alive - {worker})
        log.warning("%s at %.3f s; %d of %d workers left", why or f"worker {worker} died", now,
                    left, coordinator.protocol.num_workers)
        self._execute(coordinator.lost(now, worker))

    def _idle(self) -> None:
        if self.ended:
            self.coordinator.stop(f"every worker stopped at version {self.coordinator.version}")
            return
        lost = (f"; worker(s) {sorted(self.lost)} died and the protocol waits for them"
                if self.lost else "")
        self.coordinator.stop(f"no worker is computing: the protocol left every worker "
                              f"idle{lost}", status="stalled")

    def _drain(self) -> None:
        """Record the steps that workers took while they were told to stop."""
        deadline = time.perf_counter() + DRAIN
        while self.jobs and time.perf_counter() < deadline:
            for event in self.source.wait(POLL):
                if not isinstance(event, Arrived | Restarted):
                    self._handle(event)

    def _checkpoint(self) -> None:
        """A checkpoint each time the version passes a multiple of ``checkpoint_every``."""
        every, coordinator = self.source.checkpoint_every, self.coordinator
        run_dir = coordinator.recorder.run_dir
        if not every or run_dir is None or coordinator.stop_reason is not None:
            return
        if coordinator.version // every <= self._checkpointed // every:
            return
        copy = self.source.snapshot()
        if copy is None:
            return
        for event in copy.events:  # the steps up to the copy: their rows precede the checkpoint
            self._handle(event)
        self._checkpointed = coordinator.version
        state = self.source.state()
        if state is not None:
            state = {**state, "runtime": self.source.name, "job_counter": self._job_counter,
                     "jobs": [[w, job, version] for w, (job, version) in self.jobs.items()],
                     "started": [[w, at] for w, at in self.started.items()]}
        save(coordinator, run_dir / CHECKPOINT, copy, source=state)
        log.info("checkpoint at version %d written to %s",
                 coordinator.version if copy.version is None else copy.version,
                 run_dir / CHECKPOINT)
