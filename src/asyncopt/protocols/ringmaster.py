"""Ringmaster ASGD: asynchronous SGD that ignores, and with stops cancels, gradients delayed ≥ R.

Maranjyan, Tyurin & Richtárik, *Ringmaster ASGD: The First Asynchronous SGD with Optimal Time
Complexity*, ICML 2025 (a baseline of the Ringleader paper, ICLR 2026). On an arrival from
worker i whose gradient is δ versions old (δ = server version − the version i started at):

    δ < R:  x_{k+1} = x_k + rule( g_i(x_{k−δ}); δ, i )
    δ ≥ R:  ignored (``drop``)

and in both cases worker i restarts at the current x. ``max_delay`` = R (default n). With
``stops = true`` ("with calculation stops", the variant the authors' simulator runs), after every
step each in-flight computation whose delay has reached R, i.e. started at a version
v ≤ version − R, is cancelled (a ``cancel`` row with delay R) and restarted at the new x: its
gradient would be ignored anyway, so its worker stops wasting time. Then no gradient ever arrives
with δ ≥ R. With homogeneous data and R = max{1, ⌈σ²/ε⌉} the method reaches the optimal time
T_homog; because it discards the slow workers' information it is unsuited to heterogeneous data.
Without stops it equals ``asgd`` with the rule option ``max_delay = R − 1``.

Cost: the computations to stop are found through a queue of (start version, worker) in start
order, which is also version order, so each step pops only the expired ones: O(1) amortized
per arrival, never a scan of all n workers. A checkpoint saves the queue: a resume that restarts
the workers at the restored version (:meth:`~asyncopt.protocols.base.Protocol.load_state_dict`)
queues them again at ``begin`` (the saved entries are then stale and skipped), and the
simulator's exact resume, whose computations go on, needs it as it was.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from asyncopt.errors import check, check_int
from asyncopt.protocols import state as saved
from asyncopt.protocols.base import Action, Arrival, Protocol, Reply, Server


class Ringmaster(Protocol):
    """ASGD with delay threshold ``max_delay`` = R; ``stops`` cancels computations at delay R."""

    name = "ringmaster"

    def __init__(self, server: Server, num_workers: int, max_delay: int | None = None,
                 stops: bool = True) -> None:
        super().__init__(server, num_workers)
        self.max_delay = num_workers if max_delay is None else check_int(
            "protocol.max_delay", max_delay, 1)
        check(isinstance(stops, bool), "protocol.stops", stops, "true or false")
        self.stops = stops
        self._started: deque[tuple[int, int]] = deque()  # (version, worker), in start order

    def handle(self, arrival: Arrival) -> Reply:
        # every start, including the restart of a rejected (non-finite) arrival, is queued
        return self._note_starts(super().handle(arrival))

    def receive(self, arrival: Arrival, delay: int) -> Reply:
        worker = arrival.worker
        if delay >= self.max_delay:
            return Reply(Action.DROP, start=(worker,), delay=delay)
        stepped = self.server.step(arrival.grads, delay=delay, worker=worker)
        expired = self._expired() if stepped and self.stops else ()
        return Reply(Action.STEP if stepped else Action.DROP, start=(worker, *expired),
                     cancel=expired, delay=delay)

    def begin(self) -> Reply:
        if self._resumed:  # every computation in flight restarts now, and is queued again
            self._started.clear()
        return self._note_starts(super().begin())

    def state_dict(self) -> dict[str, Any]:
        """Adds the queue of the computations in flight, in start order (stale entries left)."""
        live = [[v, w] for v, w in self._started if self.in_flight.get(w) == v]
        return {**super().state_dict(), "started": live}

    def check_state(self, state: Any) -> None:
        super().check_state(state)
        started = state.get("started", []) if isinstance(state, dict) else []
        saved.need(isinstance(started, list) and all(
            isinstance(p, list | tuple) and len(p) == 2 for p in started), "started", started,
            "a list of [version, worker] pairs")
        for version, worker in started:  # a worker may be queued more than once (stale)
            saved.integer(version, "started")
            saved.integer(worker, "started", maximum=self.num_workers - 1)

    def _load_state(self, state: dict[str, Any]) -> None:
        super()._load_state(state)
        self._started = deque((int(v), int(w)) for v, w in state.get("started", []))

    def _expired(self) -> tuple[int, ...]:
        """Workers whose current computation started at a version ≤ version − R."""
        limit = self.server.version - self.max_delay
        expired: dict[int, None] = {}
        while self._started and self._started[0][0] <= limit:
            version, worker = self._started.popleft()
            if self.in_flight.get(worker) == version:  # else: it arrived or restarted since
                expired[worker] = None
        return tuple(expired)

    def _note_starts(self, reply: Reply) -> Reply:
        if self.stops:
            version = self.server.version
            self._started.extend((version, worker) for worker in reply.start)
        return reply
