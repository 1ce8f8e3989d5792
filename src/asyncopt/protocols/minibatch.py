"""Synchronous minibatch SGD, and its m-synchronous variant.

Every worker computes one gradient at the current model x_k; once ``wait_for`` = m of them have
arrived (m = n: all workers), the server averages them and steps, then every worker restarts at
x_{k+1} (the slowest n − m computations are cancelled):

    x_{k+1} = x_k + rule( (1/m) Σ_{j ∈ first m arrivals} g_j(x_k) )

Time per step is the m-th order statistic of the workers' compute times (max_i τ_i for m = n),
which is what asynchronous methods are measured against (the synchronous baseline of every
paper implemented here).
No gradient is ever stale: every delay is 0.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from asyncopt import tree
from asyncopt.errors import check_int
from asyncopt.protocols import state as saved
from asyncopt.protocols.base import Action, Arrival, Protocol, Reply, Server
from asyncopt.tree import Params


class Minibatch(Protocol):
    """Average one gradient from each of the first ``wait_for`` workers, step, restart all."""

    name = "minibatch"

    def __init__(self, server: Server, num_workers: int, wait_for: int | None = None) -> None:
        super().__init__(server, num_workers)
        self.wait_for = num_workers if wait_for is None else check_int(
            "protocol.wait_for", wait_for, 1, num_workers)
        self.batch: list[Params] = []

    def receive(self, arrival: Arrival, delay: int) -> Reply:
        self.batch.append(arrival.grads)
        if len(self.batch) < self.wait_for:
            return Reply(Action.BUFFER, delay=delay)
        return self._step(arrival.worker, delay)

    def on_lost(self, worker: int) -> Reply:
        """Wait for one fewer gradient (at least one); step now if those are all in."""
        self.wait_for = self._waiting_for(len(self.alive))
        if self.alive and len(self.batch) >= self.wait_for:
            return replace(self._step(worker, 0), action=Action.LOST)
        return Reply(Action.LOST)

    def held_models(self) -> int:
        """The gradients waiting for the step."""
        return self.wait_for

    def state_dict(self) -> dict[str, Any]:
        """Adds the gradients waiting in the batch; their senders are idle, so a resumed run
        does not restart them (:meth:`begin`). ``wait_for`` is the configuration's, lowered
        to the live workers at the resume as :meth:`on_lost` lowers it."""
        return {**super().state_dict(), "batch": [tree.clone(g) for g in self.batch]}

    def check_state(self, state: Any) -> None:
        super().check_state(state)
        wait_for = self._waiting_for(len(state["alive"]))
        batch = saved.entry(state, "batch", "")
        saved.need(isinstance(batch, list) and len(batch) < wait_for, "batch", batch,
                   f"a list of fewer than wait_for = {wait_for} gradients")
        for i, grads in enumerate(batch):
            saved.params(grads, f"batch[{i}]", self.server.params)

    def _load_state(self, state: dict[str, Any]) -> None:
        super()._load_state(state)
        self.wait_for = self._waiting_for(len(self.alive))
        self.batch = [saved.to_like(g, self.server.params) for g in state["batch"]]

    def _waiting_for(self, alive: int) -> int:
        return max(1, min(self.wait_for, alive))

    def _step(self, worker: int, delay: int) -> Reply:
        average = tree.mean(self.batch)
        self.batch.clear()
        stepped = self.server.step(average, delay=delay, worker=worker)
        return self.restart_all(Action.STEP if stepped else Action.DROP, delay)
