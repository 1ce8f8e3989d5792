"""What the simulated workers share: the machine's cores, the server's pauses, how a cancel acts.

Three options of ``[speed]``, simulator-only, for predicting runs on real machines (the trace
speed model, :mod:`.trace`, is their main user; every default keeps the papers' model):

* ``cores = C`` (default: none): the workers' computations and the server's work (each handled
  arrival's ``server_time``, each evaluation's ``eval_time``) share C cores by *processor
  sharing*: while k of them are in progress, each advances at rate min(1, C/k), so a gradient
  of w seconds alone lasts w while k ≤ C and w·k/C beyond. This is how a machine with more
  processes than cores behaves on average (Kleinrock's egalitarian processor sharing, the
  classical model of a time-sliced CPU): a method that leaves workers idle (minibatch, Rennala)
  speeds up the others, which a fixed time per gradient cannot say. Without ``cores`` (or with
  0) every worker has a processor of its own, and the server too.
* ``cancel``: ``"preempt"`` (the papers' model, and the default of the parametric speed model):
  a cancelled computation stops at once and its worker starts its next job; ``"finish"`` (the
  default of a trace of the processes runtime): the worker first finishes the computation it
  was told to drop, as on a real machine, where a gradient's computation cannot be interrupted,
  and a job superseded while it waited is never begun, as a processes worker does; ``"queue"``
  (the default of a trace of a Ray run): every job sent runs, in the order sent, a cancelled one
  too, whether it had begun or still waited, as a Ray actor runs every task it was sent.
  Ringmaster and Rennala cancel; on real workers a cancel saves no computation begun, only the
  transfer.
* ``eval_time`` (seconds ≥ 0, default 0; with a trace also ``"trace"``, the trace run's mean):
  each evaluation the coordinator makes pauses the server that long, as an evaluation in a real
  runtime's driver does. The pause is charged when the driver next waits for an event, so it
  delays the arrivals after the one whose handling the evaluation preceded (one arrival late:
  the server's total time is the same).

:class:`Cores` is the processor-sharing clock: the work W(t) = ∫ rate dt that every computation
in progress has received since a fixed origin. A computation of work w added at W₀ completes
when W reaches W₀ + w; between events the rate is constant, so the next completion time is
exact (no time steps). :class:`SharedCores` runs jobs on it: a job's ``before`` (its worker's
time before the computation: on one machine mostly a woken process waiting for a core, which a
cancel drops at once, unless ``cancel = "queue"``), then its ``compute`` (which ``cancel =
"finish"`` lets run to its end).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Protocol

from asyncopt.errors import check, check_choice, check_float, check_int

CANCELS = ("preempt", "finish", "queue")
KEYS = ("cores", "cancel", "eval_time")


def resolve_machine(spec: Mapping[str, Any], trace: bool) -> dict[str, Any]:
    """The machine options of a ``[speed]`` spec, validated, defaults filled in (``cancel``:
    "finish" for a trace, else "preempt"; ``eval_time``: 0, and for a trace left out: the trace
    speed model takes the trace's measured time when it has one)."""
    out: dict[str, Any] = {}
    if spec.get("cores") is not None:
        out["cores"] = check_int("speed.cores", spec["cores"], 0)
    if "cancel" in spec or not trace:  # a trace's default is its runtime's (trace.py)
        out["cancel"] = check_choice("speed.cancel", spec.get("cancel", "preempt"), CANCELS)
    value = spec.get("eval_time", None if trace else 0.0)
    if value is not None and not (trace and value == "trace"):
        check(isinstance(value, (int, float)) and not isinstance(value, bool), "speed.eval_time",
              value, "seconds >= 0 per evaluation" + (', or "trace"' if trace else ""))
        value = check_float("speed.eval_time", value, 0.0)
    if value is not None:
        out["eval_time"] = value
    return out


def describe_machine(cores: int | None, cancel: str, eval_time: float) -> str:
    """The machine options in words ("" for the defaults of the papers' model)."""
    words = f"; {cores} shared cores" if cores else ""
    words += {"finish": "; a cancelled gradient is finished first",
              "queue": "; every job sent runs, cancelled or not"}.get(cancel, "")
    return words + (f"; {eval_time:g} s per evaluation" if eval_time > 0 else "")


class Cores:
    """Processor sharing of ``cores`` cores among the computations in progress (see the module
    docstring). Keys name the computations; times are the simulator's clock."""

    def __init__(self, cores: int, now: float = 0.0) -> None:
        self.cores = cores
        self.work = 0.0  # W at time ``self.at``
        self.at = now
        self._ends: dict[Hashable, float] = {}  # key -> W at its completion
        self._heap: list[tuple[float, int, Hashable]] = []
        self._order = 0

    def __len__(self) -> int:
        return len(self._ends)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._ends

    def rate(self) -> float:
        """Each computation's progress per second now: min(1, C/k)."""
        k = len(self._ends)
        return 1.0 if k <= self.cores else self.cores / k

    def next_end(self) -> float:
        """The time the next computation completes (∞ when none is in progress)."""
        heap, ends = self._heap, self._ends
        while heap and ends.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)  # removed, or re-added
        if not heap:
            return math.inf
        return self.at + max(0.0, heap[0][0] - self.work) / self.rate()

    def peek(self) -> Hashable | None:
        """The key of the next completion (None when none is in progress)."""
        return self._heap[0][2] if self.next_end() < math.inf else None

    def advance(self, now: float) -> None:
        """Bring the work clock to ``now`` (never past :meth:`next_end`)."""
        if now > self.at:
            self.work += (now - self.at) * self.rate()
            self.at = now

    def add(self, key: Hashable, work: float, now: float) -> None:
        """A computation of ``work`` seconds (alone on a core) starts at ``now``."""
        self.advance(now)
        end = self.work + work
        self._ends[key] = end
        self._order += 1
        heapq.heappush(self._heap, (end, self._order, key))

    def remove(self, key: Hashable, now: float) -> None:
        """The computation ``key`` stops unfinished at ``now`` (preempted)."""
        self.advance(now)
        self._ends.pop(key, None)

    def pop(self) -> tuple[float, Hashable]:
        """The next completion: its time and key (the clock moves there)."""
        at = self.next_end()
        end, _, key = heapq.heappop(self._heap)
        self.advance(at)
        self.work = max(self.work, end)  # exactly its end, whatever the rounding
        del self._ends[key]
        return at, key


class Job(Protocol):
    """What :class:`SharedCores` reads and sets on a simulator's job."""

    worker: int
    order: int
    before: float  # seconds (alone on a core) before its computation
    compute: float  # its computation's seconds alone on a core
    started: float  # set: when its computation began


SERVER = -1  # the server's key among the computations sharing the cores


class SharedCores:
    """Jobs and the server's work on ``cores`` shared cores (see the module docstring). What a
    cancel does is ``cancel``'s: ``"preempt"`` drops the job; ``"finish"`` lets its computation
    run to its end, its worker's next job waiting for it (a cancelled job that still waits is
    dropped); ``"queue"`` runs every job, cancelled or not, in the order it was started."""

    def __init__(self, cores: int, cancel: str) -> None:
        self.cores = Cores(cores)
        self.cancel_mode = cancel
        self._running: dict[int, tuple[Job, bool]] = {}  # order -> (job, in its computation)
        self._busy: dict[int, int] = {}  # worker -> the order of the job it runs
        self._waiting: dict[int, list[Job]] = {}  # worker -> its jobs waiting for it, in order
        self._dropped: set[int] = set()  # orders of cancelled jobs that run all the same

    def start(self, job: Job, now: float) -> None:
        """``job`` is started at ``now`` (it begins once its worker is free)."""
        if job.worker in self._busy:
            self._waiting.setdefault(job.worker, []).append(job)
        else:
            self._begin(job, now)

    def cancel(self, job: Job, now: float) -> None:
        """``job`` is cancelled at ``now`` (see the class docstring)."""
        waiting = self._waiting.get(job.worker, [])
        if any(other is job for other in waiting):
            if self.cancel_mode == "queue":
                self._dropped.add(job.order)
            else:
                waiting.remove(job)
        elif job.order in self._running:
            computing = self._running[job.order][1]
            if self.cancel_mode == "queue" or (self.cancel_mode == "finish" and computing):
                self._dropped.add(job.order)
            else:
                del self._running[job.order]
                self.cores.remove(job.order, now)
                self._next(job.worker, now)

    def next_end(self) -> float:
        return self.cores.next_end()

    def complete(self) -> tuple[float, Job | None]:
        """The next completion: its time, and the job whose gradient is then computed (None
        when it was a job's time before its computation, or a dropped computation)."""
        at, order = self.cores.pop()
        job, computing = self._running.pop(order)
        if not computing:
            job.started = at
            self._running[order] = (job, True)
            self.cores.add(order, job.compute, at)
            return at, None
        self._next(job.worker, at)
        if job.order in self._dropped:
            self._dropped.discard(job.order)
            return at, None
        return at, job

    def serve(self, seconds: float, now: float, ready: Callable[[float, Job], None]) -> float:
        """The server works ``seconds`` (alone on a core) from ``now``; computations that end
        meanwhile go to ``ready``. Answers when the server is done."""
        self.cores.add(SERVER, seconds, now)
        while self.cores.peek() != SERVER:
            at, job = self.complete()
            if job is not None:
                ready(at, job)
        return self.cores.pop()[0]

    def _next(self, worker: int, now: float) -> None:
        """``worker`` is free at ``now``: its first waiting job begins."""
        del self._busy[worker]
        waiting = self._waiting.get(worker)
        if waiting:
            self._begin(waiting.pop(0), now)

    def _begin(self, job: Job, now: float) -> None:
        self._busy[job.worker] = job.order
        if job.before > 0.0:
            self._running[job.order] = (job, False)
            self.cores.add(job.order, job.before, now)
        else:
            job.started = now
            self._running[job.order] = (job, True)
            self.cores.add(job.order, job.compute, now)
