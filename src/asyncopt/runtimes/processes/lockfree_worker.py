"""The worker process of the lock-free mode: read, differentiate, update the shared model itself.

Worker i loops, with no lock around the model or the rule's state (Hogwild!, Niu et al. 2011):

    v = version (a read without lock) ; (f, g) = ∇f_i(x; minibatch), x read from shared memory
    while other workers write it ; B = its next block (:mod:`.blocks`) ; pad to time_scale × τ_i ;
    δ = version − v ; (u, state) = rule.update(g_B, state, x, delay=δ, worker=i) ;
    x_B += u_B (in place, shared) ; version += 1 (under a lock) ; report to the main process

``x`` and the rule's state are the main process's own tensors, moved to shared memory by
:func:`share_tree`, so every process steps the *same* optimizer: one step counter (Adam's bias
correction sees the global step count k, not a per-process one), one AdaGrad accumulator, one
momentum buffer. The counter's increments take the counters' lock
(:func:`~asyncopt.rules.base.share_ticks`), so the shared step count is exact. The gradient is
computed on the shared tensors directly (``loss_and_grad`` must not modify ``params``; the
built-in problems detach them): a private copy would cost a full model copy per step and still
be a torn read of a model that other workers are writing.

The worker stops stepping when the shared stop flag is set or the version reaches the step
budget, says ``("idle",)``, and waits for a command (STOP). Reports are rows
``(action, version_after, delay, loss, compute_time, block_kind)`` with action ``step``,
``drop`` (the rule answered ``None``; nothing applied, version unchanged) or ``reject`` (a
non-finite loss or gradient; never applied), sent as ``("steps", rows)`` at most every
``_FLUSH`` seconds, so that the main process, which competes with the workers for the cores,
wakes once per batch rather than once per step.
"""

from __future__ import annotations

import math
import os
import pickle
import time
from multiprocessing.connection import Connection
from typing import Any

import torch

from asyncopt import tree
from asyncopt.problems.base import Problem
from asyncopt.rules.base import State, apply_updates, share_ticks
from asyncopt.runtimes.processes.blocks import BlockChooser
from asyncopt.runtimes.processes.worker import STOP, guarded, next_command
from asyncopt.runtimes.sim.loop import worker_generators
from asyncopt.tree import Params

_VERSION, _STOP = 0, 1
_FLUSH = 0.01  # seconds a report may wait in the worker before it is sent


def share_tree(obj: Any) -> Any:
    """Move every tensor of a params dict or rule state tree (NamedTuples, tuples, dicts) to
    shared memory, in place, and answer ``obj``."""
    if isinstance(obj, torch.Tensor):
        obj.share_memory_()
    elif isinstance(obj, dict):
        for value in obj.values():
            share_tree(value)
    elif isinstance(obj, (tuple, list)):
        for value in obj:
            share_tree(value)
    return obj


class SharedCounters:
    """The shared version counter and stop flag: an int64 tensor in shared memory plus a lock.

    Reads are lock-free (an aligned 8-byte load is atomic on x86). The increment takes the lock:
    ``version += 1`` is a read-modify-write, so two workers incrementing at once without it could
    lose a step and make every later delay wrong; with the lock it costs about a microsecond per
    step, against milliseconds of gradient. (``mp.Value`` would do the same with its own lock,
    but its ``.value`` getter also locks the reads.)
    """

    def __init__(self, context: Any) -> None:
        self.header = torch.zeros(2, dtype=torch.int64).share_memory_()
        self.lock = context.Lock()
        self._view = self.header.numpy()

    def __getstate__(self) -> dict[str, Any]:
        return {"header": self.header, "lock": self.lock}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._view = self.header.numpy()

    @property
    def version(self) -> int:
        return int(self._view[_VERSION])

    def increment(self) -> int:
        """``version += 1`` atomically; answer the new version."""
        with self.lock:
            self._view[_VERSION] += 1
            return int(self._view[_VERSION])

    @property
    def stopped(self) -> bool:
        return bool(self._view[_STOP])

    def stop(self) -> None:
        self._view[_STOP] = 1


def lockfree_main(worker: int, conn: Connection, problem: Problem, params: Params,
                  state: State, rule: bytes, counters: SharedCounters, options: dict[str, Any]
                  ) -> None:
    """Entry point of lock-free worker process ``worker`` (``rule`` is cloudpickled)."""
    guarded(conn, lambda: _LockFreeWorker(worker, conn, problem, params, state, rule, counters,
                                          options).loop())


class _LockFreeWorker:
    def __init__(self, worker: int, conn: Connection, problem: Problem, params: Params,
                 state: State, rule: bytes, counters: SharedCounters,
                 options: dict[str, Any]) -> None:
        self.worker, self.conn, self.problem = worker, conn, problem
        self.params, self.state, self.counters = params, state, counters
        self.rule = pickle.loads(rule)
        share_ticks(counters.lock)  # the rule's shared step counter counts every step exactly
        self.speed, self.time_scale = options["speed"], options["time_scale"]
        self.max_version = options["max_version"]
        self.generator = worker_generators(options["seed"], problem.num_workers)[worker]
        self.chooser = BlockChooser(
            options["blocks"], list(params), [p.numel() for p in params.values()], worker,
            problem.num_workers, seed=options["seed"], block_fraction=options["block_fraction"],
            warmup_steps=options["warmup_steps"])
        self.parent = os.getppid()
        self._rows: list[tuple[Any, ...]] = []
        self._flushed = time.perf_counter()

    def loop(self) -> None:
        self.conn.send(("ready",))
        command = next_command(self.conn, self.parent)
        while command[0] != STOP:
            if command[0] > 0:
                command = self._run(command[1])
            else:
                command = next_command(self.conn, self.parent)

    def _run(self, now: float) -> tuple[int, float]:
        """Step until told to stop; answer the next command."""
        origin = time.perf_counter() - now  # the main process's clock, for the speed model
        while not self.counters.stopped and self.counters.version < self.max_version:
            if self.conn.poll():
                self._flush()
                return self.conn.recv()
            self._step(time.perf_counter() - origin)
            if time.perf_counter() - self._flushed > _FLUSH:
                self._flush()
        self._flush()
        self.conn.send(("idle",))
        return next_command(self.conn, self.parent)

    def _step(self, now: float) -> None:
        start, read = time.perf_counter(), self.counters.version
        loss, grads = self.problem.loss_and_grad(self.params, self.worker, self.generator)
        kind, names = self.chooser.next(read)
        if self.time_scale > 0.0:
            rest = self.time_scale * self.speed.compute_time(self.worker, now) - (
                time.perf_counter() - start)
            if rest > 0.0 and self.conn.poll(rest):
                return  # a command came while padding: this gradient is abandoned, unapplied
        delay = self.counters.version - read
        if not (math.isfinite(loss) and tree.all_finite(grads)):
            self._report("reject", self.counters.version, delay, loss, start, kind)
            return
        block = grads if kind == "whole" else {k: grads[k] for k in names}
        updates, _ = self.rule.update(block, self.state, self.params, delay=delay,
                                      worker=self.worker)
        if updates is None:
            self._report("drop", self.counters.version, delay, loss, start, kind)
            return
        apply_updates({k: self.params[k] for k in updates}, updates)
        self._report("step", self.counters.increment(), delay, loss, start, kind)

    def _report(self, action: str, version: int, delay: int, loss: float, start: float,
                kind: str) -> None:
        self._rows.append((action, version, delay, float(loss), time.perf_counter() - start,
                           kind))

    def _flush(self) -> None:
        if self._rows:
            self.conn.send(("steps", self._rows))
            self._rows = []
        self._flushed = time.perf_counter()
