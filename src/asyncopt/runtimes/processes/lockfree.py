"""``runtime = "processes"``, ``mode = "lockfree"``: workers step a shared model themselves.

No server: the model and the rule's state live in shared memory and each worker process applies
its own updates without a lock (:mod:`.lockfree_worker`) — Hogwild! (Niu, Recht, Ré & Wright,
NeurIPS 2011) with the whole model as block, PASSM+ (Kungurtsev et al., AAAI 2021) with a
partition of the tensors per process, Gratton & Toint's (2026) random, overlapping block steps
with AdaGrad-Norm, AdaGrad, Adam-type momentum or inexact normalization (:mod:`.blocks`). The
optimizer state is *one* state shared by all processes: one step counter, unlike the per-process
state of a Hogwild loop with one ``torch.optim`` object per process.

The main process only watches and records (:mod:`.watch`): it evaluates the shared model (read
without a lock, like the workers' reads) and records every step a worker reports.

Only a protocol that steps on every arrival by itself (``asgd``) runs here: there is no server to
buffer, wait or cancel (``Protocol.needs_server``).
"""

from __future__ import annotations

import pickle
from typing import Any

import torch.multiprocessing as mp

from asyncopt.errors import ConfigError
from asyncopt.problems.base import Problem
from asyncopt.protocols.stepper import Counter
from asyncopt.rules.base import Rule
from asyncopt.runtimes.common.serverless import require_serverless
from asyncopt.runtimes.common.shared import share_tree
from asyncopt.runtimes.common.steplog import StepLog
from asyncopt.runtimes.coordinator import Coordinator
from asyncopt.runtimes.processes import momentum
from asyncopt.runtimes.processes.blocks import check_blocks
from asyncopt.runtimes.processes.device import DevicePlan, place, restore
from asyncopt.runtimes.processes.device_shared import shared_counters
from asyncopt.runtimes.processes.lockfree_worker import lockfree_main
from asyncopt.runtimes.processes.pool import WorkerPool
from asyncopt.runtimes.processes.watch import Watcher
from asyncopt.runtimes.snapshot import rule_leaves
from asyncopt.runtimes.source import Copy

_LOCK_POLL = 0.01  # seconds between a checkpoint's tries for the version lock


def dump_rule(rule: Rule) -> bytes:
    """The rule for the workers: rules are closures, which only cloudpickle serializes."""
    try:
        import cloudpickle
    except ImportError as error:
        raise ConfigError("runtime_options.mode", "lockfree",
                          "available once cloudpickle is installed (pip install cloudpickle): "
                          "each worker process applies the rule itself") from error
    return cloudpickle.dumps(rule, protocol=pickle.HIGHEST_PROTOCOL)


class LockFreeRuntime(Watcher):
    """Lock-free worker processes stepping a shared model; the main process records."""

    def __init__(self, problem: Problem, speed: Any, seed: int, *, start_method: str,
                 time_scale: float, startup_timeout: float, blocks: str, block_fraction: float,
                 warmup_steps: int, backprop: str, momentum: str, checkpoint_every: int,
                 devices: DevicePlan | None = None) -> None:
        super().__init__(problem)
        self.checkpoint_every = checkpoint_every
        self.devices = devices  # None: the CPU (see .device for a GPU)
        self.start_method, self.startup_timeout = start_method, startup_timeout
        self.blocks, self.momentum = blocks, momentum
        self.worker_states: list[Any] | None = None  # momentum = "per_worker": each one's state
        self.options = {"speed": speed, "seed": seed, "time_scale": time_scale,
                        "blocks": blocks, "block_fraction": block_fraction,
                        "warmup_steps": warmup_steps, "backprop": backprop}
        self._server: Any = None

    def open(self, coordinator: Coordinator) -> None:
        """Share the model and state, start the workers."""
        server = coordinator.protocol.server
        require_serverless(coordinator.protocol, "runtime_options.mode", "lockfree")
        check_blocks(self.blocks, len(server.params), self.problem.num_workers)
        self._server = server
        place(self.devices, server, self.problem)  # on a GPU, the shared tensors are IPC'd
        self.rule_state = share_tree(server.state)
        self.params = share_tree(server.params)
        budget = coordinator.budget.steps
        options = {**self.options, "max_version": budget if budget is not None else 2**62}
        self.counters = shared_counters(self.devices, mp.get_context(self.start_method))
        self.counters.header[0] = server.version
        server.counter = self.counters  # the model's version: the workers' shared counter
        self.log = StepLog(self.problem.num_workers)
        n = self.problem.num_workers
        if self.momentum == "shared" and coordinator.worker_states is not None:
            raise ConfigError("runtime_options.momentum", "shared", "'per_worker', as the "
                              "checkpoint's run (it holds each worker's own buffers)")
        if self.momentum == "per_worker":
            self.worker_states = momentum.worker_states(self.rule_state, n,
                                                        coordinator.worker_states)
        states = self.worker_states or [self.rule_state] * n
        self.pool = WorkerPool(n, lockfree_main,
                               (self.problem, self.params, dump_rule(server.rule), self.counters,
                                self.log, options), own=[(state,) for state in states],
                               start_method=self.start_method, devices=self.devices)
        self.ready(coordinator, self.startup_timeout)

    def snapshot(self) -> Copy:
        """The shared model, the rule's state and the version, copied under the version lock:
        no step is counted while the copy is taken, and the copy comes with the rows of every
        step counted before it (a step's row is written under that lock, :mod:`.steplog`). The
        workers' writes into the model are not locked (Hogwild!): an update in progress, whose
        version is not counted yet, may be partly in the copy, as in any read of the model."""
        events = []
        while not self.counters.lock.acquire(timeout=_LOCK_POLL):
            events += self.logged()  # a worker holding the lock may wait for room in its ring
        try:
            events += self.logged()
            params = {name: value.clone() for name, value in self.params.items()}
            own = None if self.worker_states is None else momentum.saved(self.worker_states)
            return Copy(params, rule_leaves(self.rule_state), self.counters.version, events=events,
                        worker_states=own)
        finally:
            self.counters.lock.release()

    def close(self) -> None:
        if getattr(self, "counters", None) is not None:
            self.counters.stop()
            self._server.counter = Counter(self.counters.version)
        if getattr(self, "pool", None) is not None:
            self.pool.close()
        if self._server is not None:
            restore(self.devices, self._server, self.problem)
