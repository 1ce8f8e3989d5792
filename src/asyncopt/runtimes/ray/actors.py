"""The worker actor of the Ray runtime: its own data shard, one gradient per task.

A worker actor holds worker ``i``'s share of the problem (the problem travels once, through the
object store, in its first :meth:`~GradientWorker.ready` call), the simulator's minibatch
generator for worker ``i`` (:func:`~asyncopt.runtimes.common.generators.worker_generators`, so
it draws the simulator's stream) and one torch thread. Each task is

    x_v = the model of version v (one flat float buffer, used in place in the object store)
    g = ∇f_i(x_v; minibatch) ; pad to time_scale × τ_i(now) ; return (g flat, v, loss, time)

The returned gradient is one contiguous numpy array: Ray stores it in the object store without
pickling its data, and the driver reads it in place. A worker on the driver's node is told
:meth:`~GradientWorker.connect` and then gets :meth:`~GradientWorker.compute_shared` jobs: the
model and its gradient go through shared memory (:mod:`.shm`), the task returns only
(None, version, loss, time). Slow machines are emulated as in the
processes runtime, by padding: a task lasts at least ``time_scale × speed.compute_time(i, now)``
wall seconds. A restarted actor (Ray's ``max_restarts``) runs its constructor again and is
handed the problem again by the driver's probe: its minibatch stream starts over from (seed,
worker). The problem is not a constructor argument of a restartable actor because Ray 2.60 then
logs an ERROR on every run ("constructor arguments in the object store and max_restarts > 0":
the restart would fail if they went out of scope), which cannot happen here (the driver holds
the reference until the run ends); the message comes from Ray's C++ core, so no logging filter
could hold it back. :class:`ShardWorker` is the worker of the
sharded layout (``servers = K ≥ 2``): one long task that talks to the server actors itself.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from asyncopt import tree
from asyncopt.problems.base import Problem
from asyncopt.runtimes.common.generators import worker_generators
from asyncopt.runtimes.common.padding import Padding
from asyncopt.runtimes.ray import shm
from asyncopt.runtimes.ray.servers import view
from asyncopt.tree import Params

_REPORT = 0.01  # seconds between a sharded worker's reports of its rows


class GradientWorker:
    """Worker ``worker`` of ``problem``; wrapped by ``ray.remote`` in :mod:`.runtime` (its
    processes are titled ``ray::GradientWorker``)."""

    def __init__(self, problem: Problem | None, worker: int,
                 shapes: dict[str, tuple[tuple[int, ...], torch.dtype]], speed: Any, seed: int,
                 time_scale: float) -> None:
        torch.set_num_threads(1)
        like: Params = {k: torch.empty(shape, dtype=dtype) for k, (shape, dtype) in shapes.items()}
        self.worker, self.seed = worker, seed
        self.padding = Padding(speed, worker, time_scale)
        if problem is not None:
            self._take(problem)
        self.like = like
        self.grad = torch.empty(tree.numel(like), dtype=next(iter(like.values())).dtype)
        self.flat = torch.empty_like(self.grad)  # the model, when it comes in blocks
        self.shared: shm.Segment | None = None
        self.slot = -1

    def _take(self, problem: Problem) -> None:
        self.problem = problem
        self.generator = worker_generators(self.seed, problem.num_workers)[self.worker]

    def ready(self, problem: Problem | None = None) -> str:
        """Where this actor runs: its node id; with ``problem``, its problem first (a started
        or restarted actor of :class:`~.central.RayRuntime`)."""
        import ray

        if problem is not None:
            self._take(problem)
        return ray.get_runtime_context().get_node_id()

    def connect(self, spec: shm.Spec | None, slot: int, problem: Problem | None = None) -> bool:
        """Map the driver's shared memory and write gradients into ``slot``, if this actor runs
        on the driver's node and the segment is there; answer whether it does (else the object
        store it is). A restarted actor is asked again, and handed its ``problem`` again."""
        if problem is not None:
            self._take(problem)
        self.shared = None
        if spec is None or self.ready() != spec.node:
            return False
        try:
            self.shared, self.slot = shm.Segment.attach(spec), slot
        except OSError:
            return False
        return True

    def compute_shared(self, version: int, now: float) -> tuple[None, int, float, float]:
        """As :meth:`compute`, at the model that the driver wrote into this worker's model slot
        (in place: see :mod:`.shm` for why no other job's model is ever there), the gradient
        written into its gradient slot; answer (None, version, loss, time)."""
        start = time.perf_counter()
        shared = self.shared
        if shared is None:
            raise RuntimeError("compute_shared before connect")  # a bug in the runtime
        loss, grads = self.problem.loss_and_grad(
            tree.unflatten(shared.models.buffers[self.slot], self.like), self.worker,
            self.generator)
        self.padding.wait(start, now)
        shared.grads.write(self.slot, grads)
        return None, version, float(loss), time.perf_counter() - start

    def compute(self, model: np.ndarray, version: int, now: float,
                ) -> tuple[np.ndarray, int, float, float]:
        """One stochastic gradient at ``model`` (version ``version``)."""
        start = time.perf_counter()
        with warnings.catch_warnings():  # read-only: problems never write into params (the
            warnings.simplefilter("ignore", UserWarning)  # simulator hands them the server's)
            params = tree.unflatten(torch.from_numpy(model), self.like)
        loss, grads = self.problem.loss_and_grad(params, self.worker, self.generator)
        self.padding.wait(start, now)
        return flat_numpy(grads, self.grad), version, float(loss), time.perf_counter() - start

    def pid(self) -> int:
        return os.getpid()


def flat_numpy(params: Params, out: torch.Tensor | None = None) -> np.ndarray:
    """``params`` as one contiguous 1-D numpy array: a view when there is a single contiguous
    tensor, else concatenated (into ``out`` when given)."""
    leaves = list(params.values())
    if len(leaves) == 1 and leaves[0].is_contiguous():
        return leaves[0].detach().reshape(-1).numpy()
    flat = torch.cat([v.detach().reshape(-1) for v in leaves], out=out)
    return flat.numpy()


class ShardWorker(GradientWorker):
    """Worker ``worker`` with K server actors (:mod:`.servers`), looping on its own: the driver
    is not on the path of an arrival. :meth:`run` is a Ray streaming generator:

        (x_b, r_b) = server_b.pull() for every b ;  repeat:
            x = the blocks side by side ;  (f, g) = ∇f_i(x; minibatch) ; pad ;
            (x_b, v_b, δ_b) = server_b.step(g_b, r_b, i) for every b (in parallel) ; r_b = v_b ;
            row = (action, min_b v_b, max_b δ_b, f, compute time)

    and it yields its rows in batches (every ``_REPORT`` seconds) to the driver, which records
    them. A non-finite loss or gradient is a ``reject`` row and is never sent. It stops after
    the arrival whose answer says the run is stopping or whose versions reach ``max_version``
    (the step budget), or when a server dies (it yields the reason, a string, and ends)."""

    def run(self, servers: list[Any], ranges: list[tuple[int, int]], now: float,
            max_version: int) -> Iterator[list[tuple[str, int, int, float, float]] | str]:
        import ray

        began = time.perf_counter() - now  # the driver's clock, give or take the call
        rows: list[tuple[str, int, int, float, float]] = []
        reported = time.perf_counter()
        try:
            answers = ray.get([server.pull.remote() for server in servers])
            while True:
                blocks, reads = [a[0] for a in answers], [a[1] for a in answers]
                flat = view(blocks[0]) if len(blocks) == 1 else torch.cat(
                    [view(block) for block in blocks], out=self.flat)
                start = time.perf_counter()
                loss, grads = self.problem.loss_and_grad(tree.unflatten(flat, self.like),
                                                         self.worker, self.generator)
                self.padding.wait(start, start - began)
                if not (math.isfinite(loss) and tree.all_finite(grads)):
                    rows.append(("reject", min(reads), 0, float(loss),
                                 time.perf_counter() - start))
                    answers = ray.get([server.pull.remote() for server in servers])
                else:
                    g = flat_numpy(grads, self.grad)
                    answers = ray.get([server.step.remote(g[lo:hi], read, self.worker)
                                       for server, read, (lo, hi)
                                       in zip(servers, reads, ranges, strict=True)])
                    stepped = any(a[3] for a in answers)
                    rows.append(("step" if stepped else "drop", min(a[1] for a in answers),
                                 max(a[2] for a in answers), float(loss),
                                 time.perf_counter() - start))
                stopping = any(a[4] for a in answers) or min(a[1] for a in answers) >= \
                    max_version
                if stopping or time.perf_counter() - reported > _REPORT:
                    yield rows
                    rows, reported = [], time.perf_counter()
                if stopping:
                    return
        except ray.exceptions.RayActorError as error:
            if rows:
                yield rows
            yield f"a server actor died; its block of the model is gone ({error})"
