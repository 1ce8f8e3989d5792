"""The worker actor of the Ray runtime: its own data shard, one gradient per task.

A worker actor holds worker ``i``'s share of the problem (the problem travels once, through the
object store, when the actor starts), the simulator's minibatch generator for worker ``i``
(:func:`~asyncopt.runtimes.sim.loop.worker_generators`, so it draws the simulator's stream) and
one torch thread. Each task is

    x_v = the model of version v (one flat float buffer, read zero-copy from the object store)
    g = ∇f_i(x_v; minibatch) ; pad to time_scale × τ_i(now) ; return (g flat, v, loss, time)

The returned gradient is one contiguous numpy array: Ray stores it in the object store without
pickling its data, and the driver reads it in place. Slow machines are emulated as in the
processes runtime, by padding: a task lasts at least ``time_scale × speed.compute_time(i, now)``
wall seconds. A restarted actor (Ray's ``max_restarts``) runs this constructor again: its
minibatch stream starts over from (seed, worker).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch

from asyncopt import tree
from asyncopt.problems.base import Problem
from asyncopt.runtimes.sim.loop import worker_generators
from asyncopt.tree import Params


class GradientWorker:
    """Worker ``worker`` of ``problem``; wrapped by ``ray.remote`` in :mod:`.runtime` (its
    processes are titled ``ray::GradientWorker``)."""

    def __init__(self, problem: Problem, worker: int, like: Params, speed: Any, seed: int,
                 time_scale: float) -> None:
        torch.set_num_threads(1)
        self.problem, self.worker, self.speed, self.time_scale = problem, worker, speed, time_scale
        self.generator = worker_generators(seed, problem.num_workers)[worker]
        self.flat = torch.empty(tree.numel(like), dtype=next(iter(like.values())).dtype)
        self.params = tree.unflatten(self.flat, like)  # views into ``flat``
        self.grad = self.flat.clone().numpy()

    def ready(self) -> str:
        """Where this actor runs: its node id."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def compute(self, model: np.ndarray, version: int, now: float,
                ) -> tuple[np.ndarray, int, float, float]:
        """One stochastic gradient at ``model`` (version ``version``)."""
        start = time.perf_counter()
        np.copyto(self.flat.numpy(), model)  # the object store's buffer is read-only
        loss, grads = self.problem.loss_and_grad(self.params, self.worker, self.generator)
        torch.cat([g.reshape(-1) for g in grads.values()], out=torch.from_numpy(self.grad))
        if self.time_scale > 0.0:
            rest = (self.time_scale * self.speed.compute_time(self.worker, now)
                    - (time.perf_counter() - start))
            if rest > 0.0:
                time.sleep(rest)
        return self.grad, version, float(loss), time.perf_counter() - start

    def pid(self) -> int:
        return os.getpid()

