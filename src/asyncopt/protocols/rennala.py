"""Rennala SGD: the first S gradients at x_k, from any workers, make one step.

Tyurin & Richtárik, *Optimal time complexities of parallel stochastic optimization methods under
a fixed computation model*, NeurIPS 2023 (a baseline of Maranjyan & Richtárik, ICLR 2026).
Every worker computes at x_k; a worker that finishes restarts at the same x_k, so fast workers
contribute several gradients. Once ``batch_size`` = S gradients have arrived:

    x_{k+1} = x_k + rule( (1/S) Σ_{j=1}^{S} g_j(x_k) ),        then every worker restarts at x_{k+1}

and the computations still in flight are cancelled, so every gradient used has delay δ = 0 and
the rule always sees ``delay = 0``. A gradient computed at an older model can only come from a
computation that a runtime failed to cancel; it is dropped, never applied. With homogeneous data
and S = max{⌈σ²/ε⌉, 1}, Rennala reaches the optimal homogeneous time T_homog; with heterogeneous
data its estimator is biased towards the fast workers' functions.

Which workers compute: all n, always. The authors' simulator (``RennalaSGD`` in
``asynchronous/algorithm.py`` of vectozavr/ringmaster-lmo at d175d78) launches only the S
workers whose first gradient would finish first when S < n. That gives the same batches:
whenever a computation's time is fixed when it starts, the S earliest arrivals all come from
those S workers (each other worker finishes after every one of them has finished once), so
launching everyone changes no arrival and no step, only adds the others' cancelled work; a test
pins this against the authors' code. With random times the histories still differ, because the
authors draw one more compute time per step (for the worker that completes the batch, before
restarting everyone); matching that draw needs the runtime, not a protocol option, and is not
offered.
"""

from __future__ import annotations

from typing import Any

from asyncopt import tree
from asyncopt.errors import check_int
from asyncopt.protocols import state as saved
from asyncopt.protocols.base import Action, Arrival, Protocol, Reply, Server
from asyncopt.tree import Params


class Rennala(Protocol):
    """Average the first ``batch_size`` gradients at x_k (default n), step, restart all."""

    name = "rennala"

    def __init__(self, server: Server, num_workers: int, batch_size: int | None = None) -> None:
        super().__init__(server, num_workers)
        self.batch_size = num_workers if batch_size is None else check_int(
            "protocol.batch_size", batch_size, 1)
        self._sum: Params | None = None
        self._count = 0

    def receive(self, arrival: Arrival, delay: int) -> Reply:
        if delay:
            return Reply(Action.DROP, start=(arrival.worker,), delay=delay)
        if self._sum is None:
            self._sum = tree.clone(arrival.grads)
        elif self._count == 0:
            tree.copy_(self._sum, arrival.grads)
        else:
            tree.add_(self._sum, arrival.grads)
        self._count += 1
        if self._count < self.batch_size:
            return Reply(Action.BUFFER, start=(arrival.worker,), delay=0)
        self._count = 0
        average = tree.scale(self._sum, 1.0 / self.batch_size)
        stepped = self.server.step(average, delay=0, worker=arrival.worker)
        return self.restart_all(Action.STEP if stepped else Action.DROP, 0)

    def held_models(self) -> int:
        """The running sum."""
        return 1

    def state_dict(self) -> dict[str, Any]:
        """Adds the running sum of the gradients at x_k and their count (None while 0)."""
        total = tree.clone(self._sum) if self._count and self._sum is not None else None
        return {**super().state_dict(), "count": self._count, "sum": total}

    def check_state(self, state: Any) -> None:
        super().check_state(state)
        count = saved.integer(saved.entry(state, "count", ""), "count", 0, self.batch_size - 1)
        total = saved.entry(state, "sum", "")
        if count:
            saved.params(total, "sum", self.server.params)
        else:
            saved.need(total is None, "sum", total, "None: the count is 0")

    def _load_state(self, state: dict[str, Any]) -> None:
        super()._load_state(state)
        self._count = int(state["count"])
        if self._count:
            self._sum = saved.to_like(state["sum"], self.server.params)
