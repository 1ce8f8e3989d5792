"""Malenia SGD: per-worker averages at x_k, one step once every worker has contributed.

Tyurin & Richtárik, *Optimal time complexities of parallel stochastic optimization methods under
a fixed computation model*, NeurIPS 2023 (a baseline of Maranjyan & Richtárik, ICLR 2026).
Every worker computes at x_k and, when it finishes, restarts at the same x_k; the server keeps
worker i's sum G_i and count b_i of gradients of f_i at x_k. Once the stopping rule holds:

    x_{k+1} = x_k + rule( (1/n) Σ_i G_i / b_i ),        then every worker restarts at x_{k+1}

and the computations in flight are cancelled. Each worker weighs 1/n whatever its speed, so the
estimator is unbiased under heterogeneous data, and its variance σ²/(n·B) shrinks with the
harmonic-mean local batch B = ((1/n) Σ_i 1/b_i)^{-1}. Every gradient used has delay δ = 0 and
the rule sees ``delay = 0``; a stale arrival (work a runtime failed to cancel) is dropped.

Stopping rule. Default (``batch_size`` unset): step as soon as every b_i ≥ 1, the form the
authors' simulator uses. With ``batch_size`` = S, the rule of the paper: keep collecting while
((1/n) Σ_i 1/b_i)^{-1} ≤ S/n, i.e. step at the first arrival after which B > S/n (the theory
takes S = max{⌈σ²/ε⌉, n}; note that S = n then asks for B > 1, more than one gradient from
someone). Malenia reaches the optimal heterogeneous time T_heter.
"""

from __future__ import annotations

from asyncopt.errors import check_int
from asyncopt.protocols.base import Action, Arrival, Reply, Server
from asyncopt.protocols.table import GradientTable, TableProtocol


class Malenia(TableProtocol):
    """Collect per-worker means at x_k until the stopping rule holds, step, restart all."""

    name = "malenia"
    needs_every_worker = True

    def __init__(self, server: Server, num_workers: int, batch_size: int | None = None) -> None:
        super().__init__(server, num_workers)
        self.batch_size = None if batch_size is None else check_int(
            "protocol.batch_size", batch_size, 1)
        self.table = GradientTable(num_workers)

    def receive(self, arrival: Arrival, delay: int) -> Reply:
        if delay:
            return Reply(Action.DROP, start=(arrival.worker,), delay=delay)
        self.table.add(arrival.worker, arrival.grads)
        if not self._ready():
            return Reply(Action.BUFFER, start=(arrival.worker,), delay=0)
        stepped = self.server.step(self.table.average, delay=0, worker=arrival.worker)
        self.table.clear()
        return self.restart_all(Action.STEP if stepped else Action.DROP, 0)

    def _ready(self) -> bool:
        if not self.table.full:
            return False
        if self.batch_size is None:
            return True
        return self.table.harmonic_count() > self.batch_size / self.num_workers
