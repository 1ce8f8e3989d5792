"""The server side of a run, the same in every runtime: protocol, history, evaluation, budget.

A runtime only decides *where gradients come from and on what clock*. Everything that happens
when one arrives is here, written once:

    coordinator.begin(now)                -> Reply (who starts)
    coordinator.proceed()                 -> Reply (a resumed run's work in flight goes on)
    coordinator.advance(now) -> bool      (time-based evaluations; False once the time budget ends)
    coordinator.arrive(now, arrival)      -> Reply (protocol.handle + one history row + evaluation)
    coordinator.cancelled(now, worker, version)   (a cancelled computation, one history row)
    coordinator.applied(now, worker, version, ...) (a step a worker applied itself: lock-free)
    coordinator.lost(now, worker)         -> Reply (a worker died; the protocol goes on or stops)
    coordinator.restarting(now, worker)   (a worker died and its runtime brings it back)
    coordinator.restarted(now, worker)    -> Reply (... and it is back: it starts again)
    coordinator.batch()                   (the driver handled a batch of events: callbacks)
    coordinator.finish(now, status)       -> summary (final evaluation, summary.json)

``stop_reason`` becomes a string as soon as the run must stop (budget reached, target loss
reached, divergence); the runtime checks it after every event. The run's callbacks
(:mod:`asyncopt.callbacks`) hear of each evaluation, each batch of rows and the end from here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from asyncopt import tree
from asyncopt.callbacks import Arrivals, Callbacks, Evaluated, Row
from asyncopt.config import Budget, Evaluation
from asyncopt.problems.base import Problem
from asyncopt.protocols.base import Action, Arrival, Protocol, Reply
from asyncopt.record import Recorder
from asyncopt.runtimes.divergence import Divergence


class Coordinator:
    """Drives a protocol, records every arrival, evaluates on schedule, enforces the budget."""

    def __init__(self, problem: Problem, protocol: Protocol, recorder: Recorder, budget: Budget,
                 evaluation: Evaluation, *, progress: Any = None,
                 callbacks: Callbacks | None = None) -> None:
        self.problem, self.protocol, self.recorder = problem, protocol, recorder
        self.budget, self.evaluation = budget, evaluation
        self.progress = progress
        self.callbacks = callbacks or Callbacks()
        self._batched = 0  # history rows already sent to the callbacks (set at the start)
        self.divergence = Divergence(protocol.num_workers)
        self.stop_reason: str | None = None
        self.status = "completed"
        self.arrivals = 0  # for the budget; the summary counts the recorded rows
        self._next_eval = evaluation.every
        self._last_eval_key: tuple[int, int] | None = None
        self._last_metrics: dict[str, float] = {}
        self._last_eval_at: dict[str, Any] | None = None  # version, now, arrivals of it
        self._wall_start = time.perf_counter()
        self.evaluations = 0  # evaluations made (a simulator charges their pauses: eval_time)
        self._evaluation_wall = 0.0  # their wall seconds
        self.now = 0.0
        self._row_version = 0  # the version of the last row of a step applied elsewhere
        self.signal: str | None = None  # the signal that interrupted the run, if one did
        self.worker_states: list[list[Any]] | None = None
        """Lock-free workers' private heavy-ball buffers restored from a checkpoint."""
        self.blocks: list[dict[str, Any]] | None = None
        """Block servers' states restored from a checkpoint (:mod:`asyncopt.resume`): the
        block servers start from them."""
        self.server_versions: list[int] | None = None
        """With K block servers, each one's version at the end: the summary's ``servers``."""
        self.cpus: int | None = None
        """The CPUs the workers and the server shared on one machine: the summary's ``cpus``."""
        self.source_state: dict[str, Any] | None = None
        """An event source's state and the driver's job table restored from a checkpoint:
        the simulator continues from them exactly (:mod:`asyncopt.runtimes.driver`)."""

    @property
    def version(self) -> int:
        return self.protocol.version

    def next_evaluation(self) -> float:
        """When :meth:`advance` makes its next time-based evaluation: the first due time after
        the last one, unless that evaluation would be skipped (the model has not changed since
        the last one; evaluations by steps; the time budget or a stop comes first): then ∞."""
        limit = self.budget.time if self.budget.time is not None else math.inf
        if (self.evaluation.unit != "time" or self.stop_reason is not None
                or self._next_eval > limit or self._evaluation_key() == self._last_eval_key):
            return math.inf
        return self._next_eval

    def _evaluation_key(self) -> tuple[int, int]:
        return self.version, self.arrivals

    @property
    def metrics(self) -> dict[str, float]:
        """The last evaluation's metrics (empty before the first)."""
        return self._last_metrics

    def begin(self, now: float = 0.0) -> Reply:
        self._batched = len(self.recorder.rows)  # a resumed run's rows were sent before
        self._evaluate(now)
        if math.isnan(self.divergence.initial_loss):  # else restored (resume.restore)
            self.divergence.initial_loss = self._last_metrics.get("loss", math.nan)
        return self.protocol.begin()

    def proceed(self) -> Reply:
        """Instead of :meth:`begin`, for a run resumed with its work in flight (the
        simulator): as if it had never stopped, nothing is evaluated and nobody starts."""
        self._batched = len(self.recorder.rows)
        self.protocol.proceed()
        return Reply()

    def advance(self, now: float) -> bool:
        """Move the clock to ``now`` (before the event at ``now`` is handled): run time-based
        evaluations that fall due, and stop at the time budget. Answers whether to go on."""
        limit = self.budget.time if self.budget.time is not None else math.inf
        if self.evaluation.unit == "time":
            # strict: the evaluation at time b sees every event at time <= b
            while (self._next_eval < now and self._next_eval <= limit
                   and self.stop_reason is None):
                self._evaluate(self._next_eval)
                self._next_eval += self.evaluation.every
        if now > limit and self.stop_reason is None:
            self.now = limit
            self.stop_reason = f"time budget reached ({limit:g} s)"
        return self.stop_reason is None

    def arrive(self, now: float, arrival: Arrival, latency: float = math.nan,
               clock: Callable[[], float] | None = None) -> Reply:
        """One gradient came back: the protocol decides, the history records. ``latency``: the
        job's seconds from its start to ``now`` besides its compute time; ``clock``: the
        runtime's clock, read once the protocol has answered, so that the row's server time is
        ``clock() − now`` (the simulator's clock moves by the server time it charges)."""
        self.now = now
        reply = self.protocol.handle(arrival)
        server_time = clock() - now if clock is not None else math.nan
        action = reply.action.value if reply.action is not None else Action.STEP.value
        self._record(now, arrival.worker, action, reply.delay, arrival.loss,
                     arrival.compute_time, self.version, latency, server_time)
        return reply

    def applied(self, now: float, worker: int, version: int, delay: int, loss: float,
                compute_time: float, action: str = Action.STEP.value) -> None:
        """A worker or a block server applied (or, with ``action``, dropped or rejected) a
        gradient by itself, as in lock-free mode where there is no protocol to ask; ``version``
        is the model's version after it as its worker saw it (the row gets the largest so far,
        so that rows stay in version order). The model's version itself is its own counter's
        (the runtime put it in ``protocol.server.counter``). Recorded, evaluated and budgeted
        exactly like an arrival."""
        self.now = now
        self._row_version = max(self._row_version, version)
        self._record(now, worker, action, delay, loss, compute_time, self._row_version)

    def _record(self, now: float, worker: int, action: str, delay: int, loss: float,
                compute_time: float, version: int, latency: float = math.nan,
                server_time: float = math.nan) -> None:
        self.arrivals += 1
        self.recorder.arrival(now, worker, version, delay, loss, action, compute_time, latency,
                              server_time)
        if self.divergence.watches(action == "reject"):
            why = self.divergence.arrival(worker, action == "reject", self.protocol.server.params)
            if why is not None:
                self.stop(why, status="diverged")
        if self.progress is not None and self.arrivals % 64 == 0:
            self.progress.update(self)
        if self.evaluation.unit == "steps" and self.version >= self._next_eval:
            self._evaluate(now)
            while self._next_eval <= self.version:
                self._next_eval += self.evaluation.every
        self._check_budget()

    def cancelled(self, now: float, worker: int, version: int) -> None:
        """Record a computation that was stopped before it arrived (computed at ``version``)."""
        self.recorder.arrival(now, worker, self.version, self.version - version, math.nan,
                              Action.CANCEL.value, 0.0)

    def lost(self, now: float, worker: int) -> Reply:
        """``worker`` died (a real runtime saw it): one history row, the protocol told, and the
        run stopped if the protocol needs every worker or none is left."""
        self.now = now
        reply = self.protocol.lose(worker)
        self.recorder.arrival(now, worker, self.version, 0, math.nan, Action.LOST.value, 0.0)
        if not self.protocol.alive:
            self.stop(f"all {self.protocol.num_workers} workers died", status="failed")
        elif self.protocol.needs_every_worker:
            self.stop(f"worker {worker} died and protocol {self.protocol.name!r} needs a "
                      f"gradient from every worker; use asgd, minibatch, rennala or ringmaster "
                      f"to go on without it", status="failed")
        return reply

    def restarting(self, now: float, worker: int) -> None:
        """``worker`` died and its runtime brings it back (Ray restarts actors): a ``lost`` row;
        the protocol waits for it as for a slow worker until :meth:`restarted`."""
        self.now = now
        self.recorder.arrival(now, worker, self.version, 0, math.nan, Action.LOST.value, 0.0)

    def restarted(self, now: float, worker: int) -> Reply:
        """``worker`` is back after :meth:`restarting`: a ``restart`` row, and the protocol
        starts it again at the current model (its computation in flight was lost)."""
        self.now = now
        reply = self.protocol.rejoin(worker)
        self.recorder.arrival(now, worker, self.version, 0, math.nan, Action.RESTART.value, 0.0)
        return reply

    def batch(self) -> None:
        """The driver handled one batch of events: the rows it added go to the callbacks (an
        evaluation within the batch sends the rows before it first)."""
        if not self.callbacks.watch_arrivals:  # the usual case: one attribute read per batch
            return
        rows = self.recorder.rows
        if len(rows) > self._batched:
            new = [Row._make(row) for row in rows[self._batched:]]
            self._batched = len(rows)
            self.callbacks.arrivals(Arrivals(self.now, self.version, new))

    def stop(self, reason: str, status: str = "completed") -> None:
        if self.stop_reason is None:
            self.stop_reason, self.status = reason, status

    def interrupt(self, signal_name: str) -> None:
        """A signal asks the run to stop (:mod:`asyncopt.runtimes.signals`): it ends as at its
        budget, with status ``interrupted`` (whatever else was stopping it)."""
        how = "the user (Ctrl-C)" if signal_name == "SIGINT" else signal_name
        self.signal, self.status = signal_name, "interrupted"
        self.stop_reason = f"interrupted by {how}"

    def finish(self, now: float | None = None, status: str | None = None,
               reason: str | None = None) -> dict[str, Any]:
        """Evaluate the final model (unless just done or diverged), write the summary, and
        end the callbacks."""
        if status is not None:
            self.status = status
        if reason is not None:
            self.stop_reason = reason
        if self.status != "interrupted":
            self.signal = None
        now = self.now if now is None else now
        self.batch()  # rows handled since the last batch (drained, checkpointed)
        if self.status not in ("diverged", "failed") and tree.all_finite(
                self.protocol.server.params):
            self._evaluate(now)
        wall = time.perf_counter() - self._wall_start
        arrivals, counts, mean_delay, max_delay = self.recorder.tally()
        summary = {
            "status": self.status,
            "reason": self.stop_reason or "stopped",
            "now": now,
            "version": self.version,
            "arrivals": arrivals,
            "actions": counts,
            "mean_delay": mean_delay,
            "max_delay": max_delay,
            "wall_seconds": wall,
            "arrivals_per_second": arrivals / wall if wall > 0 else math.nan,
            "evaluation_wall_seconds": (self._evaluation_wall / self.evaluations
                                        if self.evaluations else None),
            "final": dict(self._last_metrics),
            "final_at": self._last_eval_at,
        }
        if self._last_eval_key != (self.version, self.arrivals):  # not the model at the end
            summary["final_note"] = final_note(summary)
        if self.signal is not None:
            summary["signal"] = self.signal
        if self.server_versions is not None:  # each block server's applied steps
            summary["servers"] = list(self.server_versions)
        if self.cpus is not None:
            summary["cpus"] = self.cpus
        self.recorder.finish(summary)
        self.callbacks.end(summary)
        return summary

    def _evaluate(self, now: float) -> None:
        key = self._evaluation_key()
        if key == self._last_eval_key:
            return
        self._last_eval_key = key
        self.batch()  # the callbacks see the rows an evaluation follows before it
        began = time.perf_counter()
        metrics = self.problem.evaluate(self.protocol.server.params)
        self.evaluations += 1
        self._evaluation_wall += time.perf_counter() - began
        self._last_metrics = metrics
        self._last_eval_at = {"version": self.version, "now": now, "arrivals": self.arrivals}
        self.recorder.evaluation(now, self.version, self.arrivals, metrics)
        self.callbacks.evaluation(Evaluated(now, self.version, self.arrivals, dict(metrics),
                                            time.perf_counter() - self._wall_start))
        loss = metrics.get("loss", math.nan)
        why = self.divergence.evaluation(loss, self.protocol.server.params, self.version)
        if why is not None:
            self.stop(why, status="diverged")
        elif self.budget.target_loss is not None and loss <= self.budget.target_loss:
            self.stop(f"target loss {self.budget.target_loss:g} reached (loss {loss:.4g})")

    def _check_budget(self) -> None:
        if self.budget.steps is not None and self.version >= self.budget.steps:
            self.stop(f"step budget reached ({self.budget.steps} steps)")
        elif self.budget.arrivals is not None and self.arrivals >= self.budget.arrivals:
            self.stop(f"arrival budget reached ({self.budget.arrivals} arrivals)")


def final_note(summary: dict[str, Any]) -> str:
    """What ``summary["final"]`` is when it is not the model at the end of the run (the run
    diverged or failed before its last model was evaluated)."""
    at, status = summary.get("final_at"), summary["status"]
    if at is None:
        return f"no evaluation was made (status {status})"
    why = {"diverged": "the diverged model was not evaluated",
           "failed": "the run failed before its last model could be evaluated"}.get(
        status, "the last model was not evaluated")
    return (f"final is the last evaluation made, at version {at['version']} (time "
            f"{at['now']:.6g}), not the end of the run at version {summary['version']} (time "
            f"{summary['now']:.6g}): {why}")
