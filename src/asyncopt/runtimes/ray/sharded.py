"""The driver of ``runtime_options.servers = K ≥ 2`` on Ray: it starts the actors and watches.

K server actors (:mod:`.servers`, ``num_cpus = 0``) own the blocks of the model; the
``problem.num_workers`` worker actors (:class:`~.actors.ShardWorker`) loop on their own, talking
to the servers directly, so no arrival passes through the driver. The driver, as the processes
runtime's main process with server processes (:mod:`asyncopt.runtimes.processes.watch`):

* records the rows that each worker yields in batches (:class:`~asyncopt.runtimes.source.Applied`
  events, the history format of every runtime), the recorded version being the largest
  ``min_b v_b`` reported;
* evaluates, when the coordinator says so, the model assembled from the servers' blocks (each
  read at its own latest version, so one block may be a step ahead of another);
* enforces the budget: a worker stops once the versions it is answered reach the step budget
  (so that budget is passed by at most one step per other worker, as with the processes
  runtime's servers); for the other limits, when the coordinator says stop it tells the
  servers, and every worker stops after the arrival whose answer says so. The workers go on
  while their reports travel, so such a budget is passed by the arrivals of about one report
  interval (10 ms) plus one per worker; each of them is recorded, so the history and the final
  model (read from the servers once every worker has stopped) agree.

Only ``protocol = "asgd"`` (each server steps on every arrival for itself: no one buffers, waits
or cancels). A dead worker actor is recorded as ``lost`` and the others go on (it is not
restarted); a dead server actor fails the run.

Checkpoints (``checkpoint_every = N``): each time the recorded version passes a multiple of N,
the driver asks every server for a snapshot (its block, the rule's state for it, its version)
and writes them with its own state (:func:`asyncopt.resume.save`); a resumed run starts each
server from its snapshot (a checkpoint is resumed with the same K). The servers do not stop
for it: each snapshot is taken at its server's own moment, as an evaluation reads the blocks,
and the workers' latest steps may be in the blocks before their rows reach the driver, so the
resumed history can lack the rows of the last report interval (10 ms) before the checkpoint.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from asyncopt import tree
from asyncopt.problems.base import Problem
from asyncopt.protocols.stepper import Counter
from asyncopt.runtimes.common.layout import Layout
from asyncopt.runtimes.common.serverless import require_serverless
from asyncopt.runtimes.coordinator import Coordinator
from asyncopt.runtimes.ray import actors
from asyncopt.runtimes.ray.central import RayRuntime
from asyncopt.runtimes.ray.servers import BlockServer
from asyncopt.runtimes.source import Applied, Copy, Ended, Event, Failed, Lost
from asyncopt.tree import Params


class ShardedRuntime(RayRuntime):
    """K block server actors and N worker actors; the driver records and evaluates."""

    asks_model_for = False  # workers pull the servers' latest blocks themselves
    reports_steps = True

    def __init__(self, *args: Any, servers: int, layout: str, **options: Any) -> None:
        super().__init__(*args, **options)
        self.num_servers, self.cut = servers, layout
        self.servers: list[Any] = []
        self._running: dict[Any, int] = {}  # a worker's streaming generator -> the worker
        self._coordinator: Coordinator | None = None
        self._stopped = False

    def open(self, coordinator: Coordinator) -> None:
        """Start the servers (from a checkpoint's blocks, when resumed) and the workers."""
        server = coordinator.protocol.server
        require_serverless(coordinator.protocol, "runtime_options.servers", self.num_servers)
        self.layout = layout = Layout(server.params, self.num_servers, self.cut)
        steps = coordinator.budget.steps
        self._max_version = steps if steps is not None else 2**62
        self.connect()
        ray = self.ray
        flat = tree.flatten(server.params).detach().numpy()
        rule = ray.put(server.rule)
        self.servers = [ray.remote(BlockServer).options(num_cpus=0, max_restarts=0).remote(
            rule, flat[lo:hi], pieces) for (lo, hi), pieces
            in zip(layout.ranges(), layout.pieces, strict=True)]
        if coordinator.blocks is not None:  # a resumed run (checked against this layout)
            ray.get([server.restore.remote(snapshot) for server, snapshot
                     in zip(self.servers, coordinator.blocks, strict=True)])
        shapes = {k: (tuple(v.shape), v.dtype) for k, v in server.params.items()}
        self._problem_ref = ray.put(self.problem)  # handed over by `ready`, as in RayRuntime
        remote = ray.remote(actors.ShardWorker)
        self.workers = [self.place(remote, w, max_restarts=0).remote(
            None, w, shapes, self.speed, self.seed, self.time_scale)
            for w in range(self.problem.num_workers)]
        self._wait_ready(ray)
        # the model's version: the largest least block version that a worker reported
        self.reported = Reported(server.version)
        server.counter = self.reported
        # evaluations read the model back from the servers first
        self._coordinator, self._problem = coordinator, coordinator.problem
        coordinator.problem = _Assembled(coordinator.problem, self._fetch)
        self.clock.reset(coordinator.now)

    def start(self, worker: int, job: int, version: int, params: Params) -> bool:
        generator = self.workers[worker].run.remote(self.servers, self.layout.ranges(),
                                                    self.now(), self._max_version)
        self._running[generator] = worker
        return True

    def wait(self, timeout: float) -> list[Event]:
        if not self._running:
            time.sleep(timeout)
            return []
        ready, _ = self.ray.wait(list(self._running), num_returns=1, timeout=timeout)
        return [event for generator in ready for event in self._report(generator)]

    def _report(self, generator: Any) -> list[Event]:
        """The next batch of rows of one worker (or its end, or its death)."""
        worker = self._running[generator]
        try:
            rows = self.ray.get(next(generator))
        except StopIteration:
            del self._running[generator]
            return [Ended(worker)]
        except self.ray.exceptions.RayActorError:
            del self._running[generator]
            return [Lost(worker, f"Ray worker actor {worker} died; with servers > 1 it is "
                                 f"not restarted")]
        if isinstance(rows, str):  # a server died
            return [Failed(rows)]
        for action, version, *_ in rows:
            if action == "step":
                self.reported.observe(version)
        return [Applied(worker, *row) for row in rows]

    def stop(self) -> None:
        """Every worker stops after the arrival whose answer says so."""
        try:
            self.ray.get([server.stop.remote() for server in self.servers])
            self._stopped = True
        except self.ray.exceptions.RayActorError:  # a dead server: the run has failed already
            self._running.clear()

    def server_versions(self) -> list[int] | None:
        try:
            return [block[1] for block in self.ray.get(
                [server.pull.remote() for server in self.servers])]
        except self.ray.exceptions.RayActorError:
            return None  # a dead server: the run has failed

    def snapshot(self) -> Copy | None:
        """Each server's block, rule state and version, read at its own moment."""
        try:
            snapshots = self.ray.get([server.snapshot.remote() for server in self.servers])
        except self.ray.exceptions.RayActorError:
            return None  # a dead server: a worker reports it and the run fails
        return Copy(blocks=[{**snapshot, "layout": self.cut} for snapshot in snapshots])

    def close(self) -> None:
        coordinator = self._coordinator
        try:
            if coordinator is not None:
                coordinator.problem = self._problem
                coordinator.protocol.server.counter = Counter(self.reported.version)
                if self._stopped and coordinator.status != "failed":
                    self._fetch(coordinator.protocol.server.params)  # the final model
        finally:
            for actor in self.servers:
                self.ray.kill(actor, no_restart=True)
            super().close()

    def _fetch(self, params: Any) -> None:
        """Copy the servers' blocks, side by side, into ``params``."""
        blocks = self.ray.get([server.pull.remote() for server in self.servers])
        flat = np.concatenate([block[0] for block in blocks])
        with torch.no_grad():
            for leaf, value in zip(params.values(),
                                   tree.unflatten(torch.from_numpy(flat), params).values(),
                                   strict=True):
                leaf.copy_(value)


class Reported(Counter):
    """The version of the model that K server actors hold: the largest ``min_b v_b`` that a
    worker was answered (the servers' counters are theirs; reports bring it here)."""

    def observe(self, version: int) -> None:
        self.version = max(self.version, version)

    def increment(self) -> int:
        raise RuntimeError("the block servers step their blocks; the driver never does")


class _Assembled:
    """The problem, whose evaluation first reads the model back from the server actors."""

    def __init__(self, problem: Problem, fetch: Any) -> None:
        self.problem, self.fetch = problem, fetch

    def __getattr__(self, name: str) -> Any:
        return getattr(self.problem, name)

    def evaluate(self, params: Any) -> dict[str, float]:
        self.fetch(params)
        return self.problem.evaluate(params)
