"""The worker process of concurrent parameter servers: read every block, send each its gradient.

Worker i loops (:mod:`.servers` has the servers' side):

    for each block b: (x_b, r_b) = the block's latest published copy and its version (seqlock) ;
    (f, g) = ∇f_i(x; minibatch) ; pad to time_scale × τ_i ; write g into the worker's slot ;
    tell each server b "r_b" ; wait for every server's answer (v_b, δ_b, stepped_b) ;
    report (step, min_b v_b, max_b δ_b, f, compute time)

A non-finite loss or gradient is reported as ``reject`` and never sent. The worker waits for
every answer before it computes again, so its slot is never overwritten while a server reads it,
and its next read includes its own step (as APAM's master sends the model back after the step).
"""

from __future__ import annotations

import math
import time
from multiprocessing.connection import Connection
from typing import Any

import torch

from asyncopt import tree
from asyncopt.problems.base import Problem
from asyncopt.runtimes.common.shared import GradientSlots, SharedCounters, SharedModel
from asyncopt.runtimes.processes.worker import ReportingWorker, guarded
from asyncopt.tree import Params


def servers_worker_main(worker: int, conn: Connection, problem: Problem,
                        models: list[SharedModel], like: Params, slots: GradientSlots,
                        counters: SharedCounters, options: dict[str, Any],
                        servers: list[Connection]) -> None:
    """Entry point of worker process ``worker``; ``servers[b]`` is its pipe to server b, whose
    block is the b-th contiguous range of the flat model shaped like ``like``."""
    guarded(conn, lambda: _ServersWorker(worker, conn, problem, models, like, slots, counters,
                                         options, servers).loop())


class _ServersWorker(ReportingWorker):
    def __init__(self, worker: int, conn: Connection, problem: Problem,
                 models: list[SharedModel], like: Params, slots: GradientSlots,
                 counters: SharedCounters, options: dict[str, Any],
                 servers: list[Connection]) -> None:
        super().__init__(worker, conn, problem, counters, options)
        self.models, self.slots, self.servers = models, slots, servers
        flat = torch.empty(tree.numel(like), dtype=next(iter(like.values())).dtype)
        sizes = [model.slots[0].numel() for model in models]
        self.flats = list(torch.split(flat, sizes))  # each block read into its range
        self.params = tree.unflatten(flat, like)  # views: the whole model, blocks side by side
        self.gradient = problem.gradient_at(self.params, worker)  # bound once to the views

    def version(self) -> int:
        """The model's version: the steps every block has applied."""
        return min(model.latest for model in self.models)

    def step(self, now: float) -> None:
        start = time.perf_counter()
        reads = [model.read(flat)[0] for model, flat in zip(self.models, self.flats, strict=True)]
        loss, grads = self.gradient(self.generator)
        if not self.pad(start, now):
            return  # a command came while padding: this gradient is abandoned, unsent
        if not (math.isfinite(loss) and tree.all_finite(grads)):
            delay = max(model.latest - read for model, read in zip(self.models, reads,
                                                                   strict=True))
            self.report("reject", self.version(), delay, loss, start, "whole")
            return
        self.slots.write(self.worker, grads)
        for server, read in zip(self.servers, reads, strict=True):
            server.send(read)
        answers = [server.recv() for server in self.servers]
        stepped = any(answer[2] for answer in answers)
        # min over the answers alone can miss the last step: workers A and B racing on two
        # blocks may each be first on one block (answers 300 and 299 each, min 299 for both)
        # while both blocks end at 300; the published versions, read now, say 300
        version = max(min(answer[0] for answer in answers), self.version())
        self.report("step" if stepped else "drop", version,
                    max(answer[1] for answer in answers), loss, start, "whole")
