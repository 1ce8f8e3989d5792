"""``runtime_options.servers = K ≥ 2``: concurrent parameter servers, one process per block.

The model is cut into K blocks by the one layout of every runtime
(:class:`~asyncopt.runtimes.common.layout.Layout`: whole tensors balanced by size, PASSM+'s
partitioning, by default; or equal flat ranges); server process b owns block b: its parameters
``x_b`` (views of one flat shared buffer that holds the model), the rule's state for them
``s_b = rule.init(x_b)``, its version ``v_b`` (steps applied to the block) and a published copy
(a seqlocked :class:`~asyncopt.runtimes.common.shared.SharedModel` of the block). This is the
multi-master layout of APAM's shared-memory code (Xu et al.: the coordinates split among master
threads) and the "concurrent parameter servers" of the common framework, with processes: the
server work of an arrival (rule, in-place update, publication) is split K ways and runs in
parallel. Workers (:mod:`.servers_worker`) read every block, compute the whole gradient, write it
into their shared slot and tell each server; server b, on worker i's message ``r_b`` (the
block's version it read):

    δ_b = v_b − r_b ;  (u_b, s_b) = rule.update(g_b, s_b, x_b, delay=δ_b, worker=i) ;
    x_b += u_b (in place) ;  v_b += 1 ;  publish x_b as v_b ;  answer (v_b, δ_b)

(the one step path of every mode, :class:`~asyncopt.protocols.stepper.Stepper`, in place).

**Versions and delays.** The model's version is ``v = min_b v_b``: the arrivals that every block
has applied (with ``asgd`` every server applies every arrival, so the ``v_b`` differ only by the
arrivals in flight). An arrival's recorded delay is its largest block delay ``max_b δ_b``, each
``δ_b`` being measured exactly by block b's own counter; the recorded version is the largest
``min_b v_b`` the worker saw after its step. One history row per arrival, as in every runtime.

**Rule state is per block.** Per-tensor state (moments, accumulators) is the same as with one
server; whole-model state is kept per block: each server's step counter (they agree, since every
server steps on every arrival), and AdaGrad-Norm's accumulator or a normalization's norm become
block-wise (the norm of g_b, not of g). A rule that drops a gradient (``drop_if_stale``) decides
per block with δ_b; the row says ``drop`` only if every block dropped it.

Only ``protocol = "asgd"``: each server steps on every arrival for itself, with no one to
buffer, wait or cancel. The main process watches (:mod:`.watch`): it records the workers' rows
and evaluates the servers' parameters, which live in shared memory (read without a lock, so an
evaluation may see one block a step ahead of another). A dead worker is recorded and the others
go on; a dead server fails the run (its block is gone). Every process is stopped on the way out.
"""

from __future__ import annotations

import io
import os
import pickle
from multiprocessing.connection import Connection, wait
from typing import Any

import torch
import torch.multiprocessing as mp

from asyncopt import tree
from asyncopt.problems.base import Problem
from asyncopt.protocols.stepper import Counter, Stepper
from asyncopt.runtimes.common.layout import Layout
from asyncopt.runtimes.common.layout import like as common_like
from asyncopt.runtimes.common.serverless import require_serverless
from asyncopt.runtimes.common.shared import (
    GradientSlots,
    SharedCounters,
    SharedModel,
    template,
)
from asyncopt.runtimes.coordinator import Coordinator
from asyncopt.runtimes.processes.lockfree import dump_rule
from asyncopt.runtimes.processes.pool import WorkerPool
from asyncopt.runtimes.processes.servers_worker import servers_worker_main
from asyncopt.runtimes.processes.watch import Watcher
from asyncopt.runtimes.processes.worker import STOP, guarded
from asyncopt.runtimes.snapshot import rule_leaves, with_rule_leaves
from asyncopt.runtimes.source import Copy, Event, Failed
from asyncopt.tree import Params

_PARENT_CHECK = 1.0  # seconds between a server's checks that the main process is still there
_SNAPSHOT_TIMEOUT = 30.0  # seconds a server gets to answer a checkpoint's request
SNAPSHOT = -2  # the command that asks a server for its snapshot


class ServersRuntime(Watcher):
    """K server processes (one per block of tensors) and N worker processes."""

    def __init__(self, problem: Problem, speed: Any, seed: int, *, start_method: str,
                 time_scale: float, startup_timeout: float, servers: int, layout: str,
                 checkpoint_every: int) -> None:
        super().__init__(problem)
        self.start_method, self.startup_timeout = start_method, startup_timeout
        self.num_servers, self.cut = servers, layout
        self.checkpoint_every = checkpoint_every
        self._server: Any = None
        self.options = {"speed": speed, "seed": seed, "time_scale": time_scale}

    def open(self, coordinator: Coordinator) -> None:
        """Share the blocks, start the servers (from a checkpoint's blocks, when resumed: the
        server's params are their blocks side by side) and the workers."""
        self._server = server = coordinator.protocol.server
        require_serverless(coordinator.protocol, "runtime_options.servers", self.num_servers)
        layout = Layout(server.params, self.num_servers, self.cut)
        like = template(server.params)
        # the model in one flat shared buffer; the server's params (what evaluations read) and
        # every block are views of it, a block's pieces cut by the layout
        flat = tree.flatten(server.params).detach().clone().share_memory_()
        server.params = tree.unflatten(flat, like)
        blocks = [tree.unflatten(flat[lo:hi], common_like(pieces))
                  for (lo, hi), pieces in zip(layout.ranges(), layout.pieces, strict=True)]
        saved = coordinator.blocks or [None] * self.num_servers  # checked against this layout
        models = [SharedModel(template(block)) for block in blocks]
        for model, block, snapshot in zip(models, blocks, saved, strict=True):
            model.publish(block, server.version if snapshot is None else snapshot["version"])
        server.counter = LeastVersion(models)
        starts = layout.bounds[:-1]
        slots = GradientSlots(like, self.problem.num_workers)
        context = mp.get_context(self.start_method)
        pipes = [[context.Pipe(duplex=True) for _ in blocks]
                 for _ in range(self.problem.num_workers)]
        self.counters = SharedCounters(context)
        budget = coordinator.budget.steps
        options = {**self.options, "max_version": budget if budget is not None else 2**62}
        rule = dump_rule(server.rule)
        try:
            self.servers = WorkerPool(
                self.num_servers, server_main, (rule, slots), start_method=self.start_method,
                role="server", own=[(blocks[b], models[b], starts[b],
                                     [pipes[w][b][1] for w in range(len(pipes))], saved[b])
                                    for b in range(self.num_servers)])
            self.pool = WorkerPool(
                self.problem.num_workers, servers_worker_main,
                (self.problem, models, like, slots, self.counters, options),
                start_method=self.start_method, own=[([end for end, _ in row],) for row in pipes])
        finally:
            for row in pipes:  # the children hold their ends; ours would hide a death (EOF)
                for ours in row:
                    for end in ours:
                        end.close()
        self.servers.wait_ready(self.startup_timeout)
        self.ready(coordinator, self.startup_timeout)

    def check(self) -> list[Event]:
        """A dead server fails the run; a server's exception is raised here."""
        events: list[Event] = []
        for index, kind, payload in self.servers.events(0.0):
            if kind == "dead":
                code = self.servers.mark_dead(index)
                events.append(Failed(f"server process {index} died (exit code {code}); its "
                                     f"block of the model is gone"))
            elif kind == "error":
                raise RuntimeError(f"server process {index} raised:\n{payload[0]}")
        return events

    def stop(self) -> None:
        super().stop()
        self.check()  # a server's error that ended the workers is raised, not lost

    def snapshot(self) -> Copy | None:
        """Each server's block, rule state and version, copied by the server at its own moment
        between two of its steps (the servers do not pause for each other, as the evaluations'
        reads of the blocks); None if a server does not answer (it died: the run fails)."""
        for conn in self.servers.conns:
            conn.send((SNAPSHOT, 0.0))
        blocks = []
        for conn in self.servers.conns:
            try:
                if not conn.poll(_SNAPSHOT_TIMEOUT):
                    return None
                kind, snapshot = conn.recv()
            except (EOFError, OSError):
                return None
            if kind != "snapshot":  # an error: the next check raises it
                return None
            blocks.append({**torch.load(io.BytesIO(snapshot), weights_only=True),
                           "layout": self.cut})
        return Copy(blocks=blocks)

    def server_versions(self) -> list[int] | None:
        counter = self._server.counter
        return [model.latest for model in counter.models] if isinstance(
            counter, LeastVersion) else None

    def close(self) -> None:
        server = self._server
        if server is not None and isinstance(server.counter, LeastVersion):
            server.counter = Counter(server.counter.version)
        if getattr(self, "counters", None) is not None:
            self.counters.stop()
        for pool in (getattr(self, "pool", None), getattr(self, "servers", None)):
            if pool is not None:  # the workers first: they may wait for a server
                pool.close()


def server_main(index: int, conn: Connection, rule: bytes, slots: GradientSlots, params: Params,
                model: SharedModel, start: int, workers: list[Connection],
                saved: dict[str, Any] | None) -> None:
    """Entry point of server process ``index``: serve block ``params`` (flat offset ``start``
    in the gradient slots) to the workers on ``workers`` until STOP; ``saved``: the block's
    snapshot in a checkpoint, whose rule state and version it goes on from."""
    guarded(conn, lambda: _Server(conn, pickle.loads(rule), slots, params, model, start,
                                  workers, saved).loop())


class _Server:
    def __init__(self, conn: Connection, rule: Any, slots: GradientSlots, params: Params,
                 model: SharedModel, start: int, workers: list[Connection],
                 saved: dict[str, Any] | None) -> None:
        self.conn, self.slots, self.model, self.start = conn, slots, model, start
        self.like = template(params)
        # the one step path, in place on the block, on the block's own version counter
        self.stepper = Stepper(params, rule, in_place=True, counter=Counter(model.latest))
        if saved is not None:
            self.stepper.state = with_rule_leaves(self.stepper.state, saved["rule_state"])
        self.workers = {end: worker for worker, end in enumerate(workers)}
        self.parent = os.getppid()

    def loop(self) -> None:
        self.conn.send(("ready",))
        while True:
            for ready in wait([self.conn, *self.workers], _PARENT_CHECK):
                if ready is self.conn:
                    command = self.conn.recv()[0]
                    if command == STOP:
                        return
                    if command == SNAPSHOT:
                        self.conn.send(("snapshot", self.snapshot()))
                    continue
                try:
                    ready.send(self._step(self.workers[ready], ready.recv()))
                except (EOFError, OSError):  # the worker died: serve the others
                    del self.workers[ready]
            if os.getppid() != self.parent:
                return  # re-parented: the main process died

    def snapshot(self) -> bytes:
        """Copies of the block, the rule's state for it and the version, saved as a checkpoint
        saves them (the bytes travel by value, not through shared memory as tensors would)."""
        buffer = io.BytesIO()
        torch.save({"block": tree.flatten(self.stepper.params).clone(),  # not its storage
                    "rule_state": rule_leaves(self.stepper.state),
                    "version": self.stepper.version}, buffer)
        return buffer.getvalue()

    def _step(self, worker: int, read: int) -> tuple[int, int, bool]:
        grads = self.slots.view(worker, self.start, self.like)
        action, version, delay = self.stepper.arrive(grads, 0.0, read, worker)
        if action == "step":
            self.model.publish(self.stepper.params, version)
        return version, delay, action == "step"


class LeastVersion:
    """The model's version with K block servers: the least of the blocks' published versions
    (the arrivals that every block has applied), read from their shared copies."""

    def __init__(self, models: list[SharedModel]) -> None:
        self.models = models

    @property
    def version(self) -> int:
        return min(model.latest for model in self.models)

    def increment(self) -> int:
        raise RuntimeError("the block servers step their blocks; the main process never does")
