"""The lock-free workers' rows in shared memory, so that every applied step reaches the history.

A lock-free worker applies its steps itself; the driver learns of them from its rows. Sent
through a pipe in batches, the rows of a worker killed before its next batch were lost with it
although its steps were in the model. Here each worker writes its rows into its own ring in
shared memory, and a step's row is written in the same locked moment as the shared version's
increment (:meth:`~.shared.SharedCounters.increment`): a version exists exactly when its row does,
so step rows = final version at every end, a killed worker included. The driver reads the rings
every time it waits (:meth:`StepLog.take`).

One ring per worker, one writer each: the worker writes a row, then advances its ``written``
count (x86 keeps stores in order); the driver reads the rows between its ``taken`` count and
``written`` and advances ``taken``. A worker whose ring is full waits for the driver.
"""

from __future__ import annotations

import time
from typing import Any

import torch

ACTIONS = ("step", "drop", "reject")
KINDS = ("whole", "partition", "random")
_WAIT = 1e-4  # seconds a worker with a full ring waits before it looks again

Row = tuple[str, int, int, float, float, str]
"""(action, version after it, delay, loss, compute_time, block kind)"""


class StepLog:
    """``num_workers`` rings of ``capacity`` rows in shared memory."""

    def __init__(self, num_workers: int, capacity: int = 8192) -> None:
        self.rows = torch.zeros(num_workers, capacity, 6, dtype=torch.float64).share_memory_()
        self.counts = torch.zeros(2, num_workers, dtype=torch.int64).share_memory_()
        self._bind()

    def __getstate__(self) -> dict[str, Any]:
        return {"rows": self.rows, "counts": self.counts}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._bind()

    def _bind(self) -> None:
        self._rows, (self._written, self._taken) = self.rows.numpy(), self.counts.numpy()
        self.capacity = self.rows.shape[1]

    def append(self, worker: int, row: Row) -> None:
        """Worker side: add one row to ``worker``'s ring (waiting while it is full)."""
        index = int(self._written[worker])
        while index - int(self._taken[worker]) >= self.capacity:
            time.sleep(_WAIT)
        action, version, delay, loss, compute_time, kind = row
        self._rows[worker, index % self.capacity] = (
            ACTIONS.index(action), version, delay, loss, compute_time, KINDS.index(kind))
        self._written[worker] = index + 1  # after the row: the reader never sees half of it

    def take(self, worker: int) -> list[Row]:
        """Driver side: the rows ``worker`` wrote since the last call, in order."""
        start, end = int(self._taken[worker]), int(self._written[worker])
        rows = []
        for index in range(start, end):
            action, version, delay, loss, compute_time, kind = self._rows[
                worker, index % self.capacity].tolist()
            rows.append((ACTIONS[int(action)], int(version), int(delay), loss, compute_time,
                         KINDS[int(kind)]))
        self._taken[worker] = end
        return rows
