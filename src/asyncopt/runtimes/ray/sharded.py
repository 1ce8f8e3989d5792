"""The driver of ``runtime_options.servers = K ≥ 2`` on Ray: it starts the actors and watches.

K server actors (:mod:`.servers`, ``num_cpus = 0``) own the blocks of the model; the
``problem.num_workers`` worker actors (:class:`~.actors.ShardWorker`) loop on their own, talking
to the servers directly, so no arrival passes through the driver. The driver, as the processes
runtime's main process with server processes (:mod:`asyncopt.runtimes.processes.watch`):

* records the rows that each worker yields in batches (``Coordinator.applied``, the history
  format of every runtime), the recorded version being the largest ``min_b v_b`` reported;
* evaluates, when the coordinator says so, the model assembled from the servers' blocks (each
  read at its own latest version, so one block may be a step ahead of another);
* enforces the budget: when the coordinator says stop it tells the servers, and every worker
  stops after the arrival whose answer says so. The workers go on while their reports travel,
  so a step or arrival budget is passed by the arrivals of about one report interval (10 ms)
  plus one per worker; each of them is recorded, so the history and the final model (read
  from the servers once every worker has stopped) agree.

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
import warnings
from typing import Any

import numpy as np
import torch

from asyncopt import resume, tree
from asyncopt.problems.base import Problem
from asyncopt.runtimes.coordinator import Coordinator
from asyncopt.runtimes.processes.blocks import check_block_servers_protocol
from asyncopt.runtimes.processes.pool import poll_timeout
from asyncopt.runtimes.ray import actors, cluster
from asyncopt.runtimes.ray.runtime import RayRuntime
from asyncopt.runtimes.ray.servers import BlockServer, Layout

_DRAIN = 5.0  # seconds the workers get to report their last arrival once told to stop


class ShardedRuntime(RayRuntime):
    """K block server actors and N worker actors; the driver records and evaluates."""

    asks_model_for = False  # workers pull the servers' latest blocks themselves

    def __init__(self, *args: Any, servers: int, **options: Any) -> None:
        super().__init__(*args, **options)
        self.num_servers = servers

    def run(self, coordinator: Coordinator) -> None:
        """Start the servers and workers, record until stop, read the final model back."""
        name, server = coordinator.protocol.name, coordinator.protocol.server
        check_block_servers_protocol(name)
        layout = Layout(server.params, self.num_servers)
        n = self.problem.num_workers
        with cluster.connected(self.address, num_cpus=None if self.address else
                               max(1, int(np.ceil(n * self.worker_cpus)))) as ray:
            self.ray = ray
            self._check_room(ray, n)
            flat = tree.flatten(server.params).detach().numpy()
            rule = ray.put(server.rule)
            self.servers = [ray.remote(BlockServer).options(num_cpus=0, max_restarts=0).remote(
                rule, flat[lo:hi], pieces) for (lo, hi), pieces
                in zip(layout.ranges(), layout.pieces, strict=True)]
            snapshots = resume.restored_blocks(coordinator)
            if snapshots is not None:  # a resumed run (checked against this layout)
                ray.get([server.restore.remote(snapshot) for server, snapshot
                         in zip(self.servers, snapshots, strict=True)])
            shapes = {k: (tuple(v.shape), v.dtype) for k, v in server.params.items()}
            shared = ray.put(self.problem)
            remote = ray.remote(actors.ShardWorker).options(
                num_cpus=self.worker_cpus, max_restarts=0,
                scheduling_strategy=self.placement.upper())
            self.workers = [remote.remote(shared, w, shapes, self.speed, self.seed,
                                          self.time_scale) for w in range(n)]
            problem = coordinator.problem
            try:
                self._wait_ready(ray)
                coordinator.problem = _Assembled(problem, self._fetch)
                self._watch(coordinator, layout)
                if coordinator.status != "failed":  # the final model, for finish() and result
                    self._fetch(server.params)
            finally:
                coordinator.problem = problem
                for actor in (*self.workers, *self.servers):
                    ray.kill(actor, no_restart=True)

    def _watch(self, coordinator: Coordinator, layout: Layout) -> None:
        ray = self.ray
        self._version = coordinator.version
        self._t0 = time.perf_counter() - coordinator.now
        self._checkpointed = coordinator.version
        coordinator.begin(coordinator.now)
        alive = coordinator.protocol.alive  # a worker lost before a checkpoint stays lost
        running = {worker.run.remote(self.servers, layout.ranges(), coordinator.now): w
                   for w, worker in enumerate(self.workers) if w in alive}
        while coordinator.stop_reason is None and running:
            ready, _ = ray.wait(list(running), num_returns=1,
                                timeout=poll_timeout(coordinator, self._t0))
            self.now = time.perf_counter() - self._t0
            if not coordinator.advance(self.now):
                break
            for generator in ready:
                self._report(coordinator, running, generator)
            self._checkpoint(coordinator)
        if coordinator.stop_reason is None:
            coordinator.stop(f"every worker stopped at version {self._version}")
        try:
            ray.get([server.stop.remote() for server in self.servers])
        except ray.exceptions.RayActorError:  # a dead server: the run has failed already
            return
        deadline = time.perf_counter() + _DRAIN
        while running and time.perf_counter() < deadline:
            ready, _ = ray.wait(list(running), num_returns=1, timeout=0.1)
            self.now = max(self.now, time.perf_counter() - self._t0)
            for generator in ready:
                self._report(coordinator, running, generator)

    def _report(self, coordinator: Coordinator, running: dict[Any, int], generator: Any) -> None:
        """Record the next batch of rows of one worker (or its end, or its death)."""
        worker = running[generator]
        try:
            rows = self.ray.get(next(generator))
        except StopIteration:
            del running[generator]
            return
        except self.ray.exceptions.RayActorError:
            del running[generator]
            warnings.warn(f"Ray worker actor {worker} died at {self.now:.3f} s; with "
                          f"servers > 1 it is not restarted", RuntimeWarning, stacklevel=2)
            coordinator.lost(self.now, worker)
            return
        if isinstance(rows, str):  # a server died
            coordinator.stop(rows, status="failed")
            return
        for action, version, delay, loss, compute_time in rows:
            if action == "step":
                self._version = max(self._version, version)
            coordinator.applied(self.now, worker, self._version, delay, loss, compute_time,
                                action)

    def _checkpoint(self, coordinator: Coordinator) -> None:
        """The servers' snapshots and the driver's state, once the recorded version has
        passed the next multiple of ``checkpoint_every``."""
        every, run_dir = self.checkpoint_every, coordinator.recorder.run_dir
        if not every or run_dir is None or self._version // every <= self._checkpointed // every:
            return
        self._checkpointed = self._version
        try:
            snapshots = self.ray.get([server.snapshot.remote() for server in self.servers])
        except self.ray.exceptions.RayActorError:
            return  # a dead server: a worker reports it and the run fails
        resume.save(coordinator, run_dir / resume.CHECKPOINT, blocks=snapshots)

    def _fetch(self, params: Any) -> None:
        """Copy the servers' blocks, side by side, into ``params``."""
        blocks = self.ray.get([server.pull.remote() for server in self.servers])
        flat = np.concatenate([block[0] for block in blocks])
        with torch.no_grad():
            for leaf, value in zip(params.values(),
                                   tree.unflatten(torch.from_numpy(flat), params).values(),
                                   strict=True):
                leaf.copy_(value)


class _Assembled:
    """The problem, whose evaluation first reads the model back from the server actors."""

    def __init__(self, problem: Problem, fetch: Any) -> None:
        self.problem, self.fetch = problem, fetch

    def __getattr__(self, name: str) -> Any:
        return getattr(self.problem, name)

    def evaluate(self, params: Any) -> dict[str, float]:
        self.fetch(params)
        return self.problem.evaluate(params)
