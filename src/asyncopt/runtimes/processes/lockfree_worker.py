"""The worker process of the lock-free mode: read, differentiate, update the shared model itself.

Worker i loops, with no lock around the model or the rule's state (Hogwild!, Niu et al. 2011):

    v = version (a read without lock) ; B = its next block (:mod:`.blocks`) ;
    (f, g_B) = ∇_B f_i(x; minibatch), x read from shared memory while other workers write it ;
    pad to time_scale × τ_i ;
    δ = version − v ; (u, state) = rule.update(g_B, state, x, delay=δ, worker=i) ;
    x_B += u_B (in place, shared) ; version += 1 (under a lock) ; report to the main process

Only the block's gradient is formed (``runtime_options.backprop = "block"``, the default; the
problem's :meth:`~asyncopt.problems.base.Problem.gradient_at` with ``only``): autograd is asked
for the block's tensors only, so a partition of the last layers never backpropagates into the
first, as the PASSM+ authors' ``autograd.grad`` with respect to their process's parameter group;
``backprop = "full"`` computes the whole gradient and keeps the block's part (the same numbers,
bit for bit, at the full cost). Tied weights are one tensor (``named_parameters`` names it once),
so a block holding it gets the sum over all its uses, as autograd gives it; a problem that
computes its gradients its own way falls back to the full gradient restricted to the block
(:meth:`~asyncopt.problems.base.Problem.gradient_at`), never to a partial, wrong one.

The step is the one step path of every mode (:class:`~asyncopt.protocols.stepper.Stepper`, in
place): when the rule has a fused step (``rule.step``, :mod:`asyncopt.rules.fused`: sgd, adam,
amsgrad, adagrad) the update and its addition are one in-place pass over ``x_B`` and the state,
as ``torch.optim``'s fused kernels do; other rules (and chains with delay blocks) update and
apply.

``x`` and the rule's state are the main process's own tensors, moved to shared memory by
:func:`~.shared.share_tree`, so every process steps the *same* optimizer: one step counter
(Adam's bias correction sees the global step count k, not a per-process one), one AdaGrad
accumulator, one momentum buffer. The counter's increments take the counters' lock
(:func:`~asyncopt.rules.base.share_ticks`), so the shared step count is exact. The gradient is
computed on the shared tensors directly (``loss_and_grad`` must not modify ``params``; the
built-in problems detach them): a private copy would cost a full model copy per step and still
be a torn read of a model that other workers are writing. A supervised problem binds a module to
the shared tensors once (:meth:`~asyncopt.problems.base.Problem.gradient_at`), as PyTorch's
``mnist_hogwild`` example builds its model on shared memory, instead of a ``functional_call``
per step.

The worker stops stepping when the shared stop flag is set or the version reaches the step
budget, says ``("idle",)``, and waits for a command (STOP). Reports are rows
``(action, version_after, delay, loss, compute_time, block_kind)`` with action ``step``,
``drop`` (the rule answered ``None``; nothing applied, version unchanged) or ``reject`` (a
non-finite loss or gradient; never applied), written into the worker's ring in shared memory
(:mod:`asyncopt.runtimes.common.steplog`); a step's row is written under the lock of the version's
increment, so every version has its row even if the worker is killed right after its step.
"""

from __future__ import annotations

import pickle
import time
from multiprocessing.connection import Connection
from typing import Any

from asyncopt.problems.base import Problem
from asyncopt.protocols.stepper import Stepper, finite
from asyncopt.rules.base import State, share_ticks
from asyncopt.runtimes.common.shared import SharedCounters
from asyncopt.runtimes.common.steplog import StepLog
from asyncopt.runtimes.processes.blocks import BlockChooser
from asyncopt.runtimes.processes.worker import ReportingWorker, guarded
from asyncopt.tree import Params


def lockfree_main(worker: int, conn: Connection, problem: Problem, params: Params, rule: bytes,
                  counters: SharedCounters, log: StepLog, options: dict[str, Any],
                  state: State) -> None:
    """Entry point of lock-free worker process ``worker`` (``rule`` is cloudpickled; ``state``
    the shared rule state, or its own copy of it with private heavy-ball buffers:
    :mod:`.momentum`)."""
    guarded(conn, lambda: _LockFreeWorker(worker, conn, problem, params, state, rule, counters,
                                          log, options).loop())


class _LockFreeWorker(ReportingWorker):
    def __init__(self, worker: int, conn: Connection, problem: Problem, params: Params,
                 state: State, rule: bytes, counters: SharedCounters, log: StepLog,
                 options: dict[str, Any]) -> None:
        super().__init__(worker, conn, problem, counters, options)
        self.params, self.log = params, log
        share_ticks(counters.lock)  # the rule's shared step counter counts every step exactly
        # the one step path, in place on the shared model and state; its version increments
        # write the step's row in the same locked moment (see .steplog)
        self.counter = LoggedCounter(counters, log, worker)
        self.stepper = Stepper(params, pickle.loads(rule), in_place=True, state=state,
                               counter=self.counter)
        self.gradient = problem.gradient_at(params, worker)  # bound once to the shared tensors
        self.block_backprop = options["backprop"] == "block"
        self.chooser = BlockChooser(
            options["blocks"], list(params), [p.numel() for p in params.values()], worker,
            problem.num_workers, seed=options["seed"], block_fraction=options["block_fraction"],
            warmup_steps=options["warmup_steps"])

    def step(self, now: float) -> None:
        start, read = time.perf_counter(), self.counters.version
        kind, names = self.chooser.next(read)  # before the gradient: only the block's is formed
        if kind == "whole":
            loss, block = self.gradient(self.generator)
        elif self.block_backprop:
            loss, block = self.gradient(self.generator, names)
        else:  # the full gradient, restricted to the block (to measure what the block saves)
            loss, grads = self.gradient(self.generator)
            block = {k: grads[k] for k in names}
        if not self.pad(start, now):
            return  # a command came while padding: this gradient is abandoned, unapplied
        delay = self.counters.version - read
        if not finite(block, loss):
            self.report("reject", self.counters.version, delay, loss, start, kind)
            return
        self.counter.row = (delay, float(loss), start, kind)
        if self.stepper.step(block, delay=delay, worker=self.worker) is None:
            self.report("drop", self.counters.version, delay, loss, start, kind)

    def report(self, action: str, version: int, delay: int, loss: float, start: float,
               kind: str) -> None:
        self.log.append(self.worker, (action, version, delay, float(loss),
                                      time.perf_counter() - start, kind))


class LoggedCounter:
    """The shared version, whose every increment writes the step's row into the worker's ring
    under the same lock (:meth:`~asyncopt.runtimes.common.shared.SharedCounters.increment`):
    ``row`` = (delay, loss, start time, block kind) of the step about to be applied."""

    def __init__(self, counters: SharedCounters, log: StepLog, worker: int) -> None:
        self.counters, self.log, self.worker = counters, log, worker
        self.row: tuple[int, float, float, str] = (0, 0.0, 0.0, "whole")

    @property
    def version(self) -> int:
        return self.counters.version

    def increment(self) -> int:
        return self.counters.increment(then=self._logged)

    def _logged(self, version: int) -> None:
        delay, loss, start, kind = self.row
        self.log.append(self.worker, ("step", version, delay, loss,
                                      time.perf_counter() - start, kind))
