"""The worker actor of the Ray runtime: its own data shard, one gradient per task.

A worker actor holds worker ``i``'s share of the problem (the problem travels once, through the
object store, when the actor starts), the simulator's minibatch generator for worker ``i``
(:func:`~asyncopt.runtimes.sim.loop.worker_generators`, so it draws the simulator's stream) and
one torch thread. Each task is

    x_v = the model of version v (one flat float buffer, used in place in the object store)
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
import warnings
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

    def __init__(self, problem: Problem, worker: int,
                 shapes: dict[str, tuple[tuple[int, ...], torch.dtype]], speed: Any, seed: int,
                 time_scale: float) -> None:
        torch.set_num_threads(1)
        like: Params = {k: torch.empty(shape, dtype=dtype) for k, (shape, dtype) in shapes.items()}
        self.problem, self.worker, self.speed, self.time_scale = problem, worker, speed, time_scale
        self.generator = worker_generators(seed, problem.num_workers)[worker]
        self.like = like
        self.grad = torch.empty(tree.numel(like), dtype=next(iter(like.values())).dtype)

    def ready(self) -> str:
        """Where this actor runs: its node id."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def compute(self, model: np.ndarray, version: int, now: float,
                ) -> tuple[np.ndarray, int, float, float]:
        """One stochastic gradient at ``model`` (version ``version``)."""
        start = time.perf_counter()
        with warnings.catch_warnings():  # read-only: problems never write into params (the
            warnings.simplefilter("ignore", UserWarning)  # simulator hands them the server's)
            params = tree.unflatten(torch.from_numpy(model), self.like)
        loss, grads = self.problem.loss_and_grad(params, self.worker, self.generator)
        if self.time_scale > 0.0:
            rest = (self.time_scale * self.speed.compute_time(self.worker, now)
                    - (time.perf_counter() - start))
            if rest > 0.0:
                time.sleep(rest)
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
