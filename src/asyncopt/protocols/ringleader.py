"""Ringleader ASGD: asynchronous SGD with per-worker tables, buffers and rounds of n updates.

Maranjyan & Richtárik, *Ringleader ASGD: The First Asynchronous SGD with Optimal Time Complexity
under Data Heterogeneity*, ICLR 2026 (arXiv:2509.22860). The server keeps
for every worker a **current** entry (G_i, b_i), the sum and count of its gradients, and a
**buffer** entry (G_i⁺, b_i⁺) for the next round. Every step moves along the average of the
per-worker means, so each worker weighs 1/n whatever its speed (heterogeneous data):

    x ← x + rule( (1/n) Σ_i G_i / b_i ; δ, j )

A **round** is exactly n steps:

* Phase 1 (collect, no step): while some b_i = 0, an arrival from i is added to (G_i, b_i) and
  i restarts at the unchanged x (``buffer``). The arrival j that fills the last entry steps.
* Phase 2: an arrival from a worker not yet updated this round is added to its current entry,
  the server steps (``step``) and the worker restarts at the new x; an arrival from a worker
  already updated is added to its buffer entry (``buffer``) and it restarts at the current x.
* After the n-th step, CURRENT ← BUFFER and BUFFER ← empty: buffered workers already count as
  arrived in the next Phase 1.

No gradient is ever discarded and no worker is ever idle: every arrival restarts its sender and
nothing is cancelled. A computation started in round r arrives before the end of round r + 1 (its
worker must be updated there), and one started in Phase 1 or at a round's last step arrives
within its round, so every delay satisfies δ ≤ 2n − 2, the bound that keeps every table entry
fresh. ``delay`` passed to the rule (and recorded) is the triggering arrival's δ. With
γ = min{1/(8nL), εB/(10Lσ²)}, B the harmonic mean of the b_i, the time complexity
O((LΔ/ε)(τ_n + τ_avg σ²/(nε))) is optimal for heterogeneous data. The average is maintained in
O(d) per arrival (:class:`~asyncopt.protocols.table.GradientTable`).

A step that the rule refuses (e.g. the rule option ``max_delay``) is recorded as ``drop`` but still
counts as the worker's update of the round; its gradient stays in the table and is used by the
round's later steps.
"""

from __future__ import annotations

from typing import Any

from asyncopt.protocols.base import Action, Arrival, Protocol, Reply, Server
from asyncopt.protocols.state import entry, integer, need
from asyncopt.protocols.table import GradientTable


class Ringleader(Protocol):
    """Rounds of n steps along the mean of per-worker means; late gradients go to a buffer."""

    name = "ringleader"
    needs_every_worker = True

    def __init__(self, server: Server, num_workers: int) -> None:
        super().__init__(server, num_workers)
        self.current = GradientTable(num_workers)
        self.buffer = GradientTable(num_workers)
        self.rounds = 0  # completed rounds
        self.retired = 0  # gradients of finished rounds' tables (each was used in ≥ 1 step)
        self._updated = [False] * num_workers
        self._num_updated = 0

    def held_models(self) -> int:
        """Two tables (the current one and the buffer), each with its average."""
        return 2 * (self.num_workers + 1)

    @property
    def held(self) -> int:
        """Gradients in the current table and the buffer, waiting to be used or still in use."""
        return self.current.total + self.buffer.total

    @property
    def collecting(self) -> bool:
        """Phase 1: the current table is not full yet and no step has been taken this round."""
        return self._num_updated == 0

    def receive(self, arrival: Arrival, delay: int) -> Reply:
        worker = arrival.worker
        if self._updated[worker]:
            self.buffer.add(worker, arrival.grads)
            return Reply(Action.BUFFER, start=(worker,), delay=delay)
        self.current.add(worker, arrival.grads)
        if not self.current.full:
            return Reply(Action.BUFFER, start=(worker,), delay=delay)
        stepped = self.server.step(self.current.average, delay=delay, worker=worker)
        self._updated[worker] = True
        self._num_updated += 1
        if self._num_updated == self.num_workers:
            self._end_round()
        return Reply(Action.STEP if stepped else Action.DROP, start=(worker,), delay=delay)

    def state_dict(self) -> dict[str, Any]:
        """Adds both tables, which workers were updated this round, and the counters."""
        return {**super().state_dict(), "current": self.current.state_dict(),
                "buffer": self.buffer.state_dict(), "updated": list(self._updated),
                "rounds": self.rounds, "retired": self.retired}

    def check_state(self, state: Any) -> None:
        super().check_state(state)
        for key in ("current", "buffer"):
            getattr(self, key).check_state(entry(state, key, ""), self.server.params, key)
        updated, n = entry(state, "updated", ""), self.num_workers
        need(isinstance(updated, list) and len(updated) == n
             and all(isinstance(u, bool) for u in updated) and not all(updated), "updated",
             updated, f"a list of {n} booleans, not all true (a round ends at its n-th step)")
        integer(entry(state, "rounds", ""), "rounds")
        integer(entry(state, "retired", ""), "retired")

    def _load_state(self, state: dict[str, Any]) -> None:
        super()._load_state(state)
        self.current.load_state_dict(state["current"], self.server.params)
        self.buffer.load_state_dict(state["buffer"], self.server.params)
        self._updated = list(state["updated"])
        self._num_updated = sum(self._updated)
        self.rounds, self.retired = int(state["rounds"]), int(state["retired"])

    def _end_round(self) -> None:
        self.retired += self.current.total
        self.current, self.buffer = self.buffer, self.current
        self.buffer.clear()
        self._updated = [False] * self.num_workers
        self._num_updated = 0
        self.rounds += 1
