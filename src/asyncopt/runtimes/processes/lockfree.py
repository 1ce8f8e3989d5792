"""``runtime = "processes"``, ``mode = "lockfree"``: workers step a shared model themselves.

No server: the model and the rule's state live in shared memory and each worker process applies
its own updates without a lock (:mod:`.lockfree_worker`) — Hogwild! (Niu, Recht, Ré & Wright,
NeurIPS 2011) with the whole model as block, PASSM+ (Kungurtsev et al., AAAI 2021) with a
partition of the tensors per process, Gratton & Toint's (2026) random, overlapping block steps
with AdaGrad-Norm, AdaGrad, Adam-type momentum or inexact normalization (:mod:`.blocks`). The
optimizer state is *one* state shared by all processes: one step counter, unlike the per-process
state of a Hogwild loop with one ``torch.optim`` object per process.

The main process only watches: it evaluates the shared model (read without a lock, like the
workers' reads) and records every step a worker reports with
:meth:`~asyncopt.runtimes.coordinator.Coordinator.applied`, which also enforces the budget. When
the coordinator says stop it raises the shared stop flag, records the steps that were in flight
(at most one per worker, so a step budget may be passed by up to ``n − 1`` steps: the history
and the final model then agree), and stops the workers with the pool's lifecycle. Reports can
arrive out of version order; the recorded version is the largest one reported so far.

Only ``protocol = "asgd"`` makes sense here: there is no server to buffer, wait or cancel.
"""

from __future__ import annotations

import pickle
import time
from typing import Any

import torch
import torch.multiprocessing as mp

from asyncopt.errors import ConfigError, check
from asyncopt.problems.base import Problem
from asyncopt.rules.base import Rule
from asyncopt.runtimes.coordinator import Coordinator
from asyncopt.runtimes.processes.blocks import check_blocks
from asyncopt.runtimes.processes.lockfree_worker import SharedCounters, lockfree_main, share_tree
from asyncopt.runtimes.processes.pool import POLL, WorkerPool, poll_timeout

_DRAIN = 5.0  # seconds the workers get to report their last step once told to stop
_START = 1  # the command that starts a worker's loop


def dump_rule(rule: Rule) -> bytes:
    """The rule for the workers: rules are closures, which only cloudpickle serializes."""
    try:
        import cloudpickle
    except ImportError as error:
        raise ConfigError("runtime_options.mode", "lockfree",
                          "available once cloudpickle is installed (pip install cloudpickle): "
                          "each worker process applies the rule itself") from error
    return cloudpickle.dumps(rule, protocol=pickle.HIGHEST_PROTOCOL)


class LockFreeRuntime:
    """Lock-free worker processes stepping a shared model; the main process records."""

    name = "processes"

    def __init__(self, problem: Problem, speed: Any, seed: int, *, start_method: str,
                 time_scale: float, startup_timeout: float, blocks: str, block_fraction: float,
                 warmup_steps: int) -> None:
        self.problem, self.start_method = problem, start_method
        self.startup_timeout = startup_timeout
        self.blocks = blocks
        self.options = {"speed": speed, "seed": seed, "time_scale": time_scale,
                        "blocks": blocks, "block_fraction": block_fraction,
                        "warmup_steps": warmup_steps}
        self.now = 0.0
        self.block_steps: list[dict[str, int]] = [{} for _ in range(problem.num_workers)]
        """Per worker: applied steps by block kind (``whole``, ``partition``, ``random``)."""
        self._idle: set[int] = set()
        self._version = 0

    def run(self, coordinator: Coordinator) -> None:
        """Share the model and state, start the workers, record until stop, stop them."""
        name = coordinator.protocol.name
        check(name == "asgd", "protocol.name", name,
              "'asgd' with runtime_options.mode = 'lockfree' (workers apply their own updates; "
              "there is no server to buffer or synchronize): use mode = 'server' for it")
        server = coordinator.protocol.server
        check_blocks(self.blocks, len(server.params), self.problem.num_workers)
        self.state = share_tree(server.state)
        self.params = share_tree(server.params)
        self._version = server.version
        budget = coordinator.budget.steps
        options = {**self.options, "max_version": budget if budget is not None else 2**62}
        self.counters = SharedCounters(mp.get_context(self.start_method))
        self.counters.header[0] = server.version
        self.pool = WorkerPool(self.problem.num_workers, lockfree_main,
                               (self.problem, self.params, self.state, dump_rule(server.rule),
                                self.counters, options), start_method=self.start_method)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in server mode: the cores are the workers'
        try:
            self.pool.wait_ready(self.startup_timeout)
            self._t0 = time.perf_counter()
            coordinator.begin(self.now)
            for worker in range(self.problem.num_workers):
                self.pool.send(worker, _START, self.now)
            while coordinator.stop_reason is None and not self._all_idle(coordinator):
                events = self.pool.events(poll_timeout(coordinator, self._t0))
                self.now = time.perf_counter() - self._t0
                if not coordinator.advance(self.now):
                    break
                self._handle(coordinator, events)
            self._drain(coordinator)
        finally:
            self.counters.stop()
            self.pool.close()
            torch.set_num_threads(threads)

    def _handle(self, coordinator: Coordinator, events: list[Any]) -> None:
        for worker, kind, payload in events:
            if kind == "steps":
                for action, version, delay, loss, compute_time, block in payload[0]:
                    if action == "step":
                        self._version = max(self._version, version)
                        counts = self.block_steps[worker]
                        counts[block] = counts.get(block, 0) + 1
                    coordinator.applied(self.now, worker, self._version, delay, loss,
                                        compute_time, action)
            elif kind == "idle":
                self._idle.add(worker)
            elif kind == "dead":
                self._idle.discard(worker)
                self.pool.bury(worker, self.now, coordinator)
                coordinator.lost(self.now, worker)
            else:
                raise RuntimeError(f"worker process {worker} raised:\n{payload[0]}")

    def _drain(self, coordinator: Coordinator) -> None:
        """Stop the workers' loops and record the steps they applied meanwhile."""
        self.counters.stop()
        deadline = time.perf_counter() + _DRAIN
        while not self._all_idle(coordinator) and time.perf_counter() < deadline:
            events = self.pool.events(POLL)
            self.now = max(self.now, time.perf_counter() - self._t0)
            self._handle(coordinator, events)

    def _all_idle(self, coordinator: Coordinator) -> bool:
        idle = all(w in self._idle for w in range(self.problem.num_workers) if self.pool.alive[w])
        if idle and coordinator.stop_reason is None:
            coordinator.stop(f"every worker stopped at version {self._version}")
        return idle
