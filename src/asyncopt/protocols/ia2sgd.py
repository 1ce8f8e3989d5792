"""IA²SGD: a table of every worker's latest gradient, one step per arrival along its mean.

The incremental-aggregated asynchronous SGD baseline as cited and implemented by Maranjyan &
Richtárik, *Ringleader ASGD*, ICLR 2026 (its "Baselines"; its original
reference is not verified). Slot i holds g_i, worker i's most recent gradient, computed at
x_{k−δ_i}. Once every slot is filled, each arrival from worker i replaces slot i and steps:

    g_i ← g_i(x_{k−δ});    x_{k+1} = x_k + rule( (1/n) Σ_j g_j ),    worker i restarts at x_{k+1}

``delay`` (seen by the rule and recorded) is the arriving gradient's δ; the other slots can be
far staler: a slow worker's slot ages by one version for every arrival of the others, which is
why the method is not optimal and what Ringleader's rounds bound (δ ≤ 2n − 2).

Warm-up: until every worker has sent a gradient, arrivals only fill (or refresh) their slot,
recorded as ``buffer``, and the sender restarts at the unchanged x_0. What the arrival that
fills the last slot does is the option ``step_on_fill``:

* ``true`` (the default): it steps at once, as in Ringleader's first round: waiting for one more
  arrival would only replace a slot and delay the first step;
* ``false``: it only fills its slot, its sender restarts at x_0, and the first step comes with
  the next arrival, as the authors' simulator (``IAASGD.step`` in ``asynchronous/algorithm.py``
  of vectozavr/ringmaster-lmo at d175d78). The paper's description ("after a warm-up in which
  the table is filled, every arrival replaces its slot and steps") does not say
  which; the two differ by one arrival and one step.
"""

from __future__ import annotations

from typing import Any

from asyncopt.errors import check
from asyncopt.protocols.base import Action, Arrival, Reply, Server
from asyncopt.protocols.table import GradientTable, TableProtocol


class IA2SGD(TableProtocol):
    """Replace the sender's slot; once the table is full, step with its mean on every arrival
    (the arrival that fills it too, unless ``step_on_fill`` is False)."""

    name = "ia2sgd"
    needs_every_worker = True

    def __init__(self, server: Server, num_workers: int, step_on_fill: Any = True) -> None:
        super().__init__(server, num_workers)
        check(isinstance(step_on_fill, bool), "protocol.step_on_fill", step_on_fill,
              "true or false")
        self.step_on_fill = step_on_fill
        self.table = GradientTable(num_workers)

    def receive(self, arrival: Arrival, delay: int) -> Reply:
        filling = not self.table.full
        self.table.replace(arrival.worker, arrival.grads)
        if not self.table.full or (filling and not self.step_on_fill):
            return Reply(Action.BUFFER, start=(arrival.worker,), delay=delay)
        stepped = self.server.step(self.table.average, delay=delay, worker=arrival.worker)
        return Reply(Action.STEP if stepped else Action.DROP, start=(arrival.worker,), delay=delay)
