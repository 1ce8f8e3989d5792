"""The protocol interface: arrivals in, replies out, and the server that owns the model.

A **protocol** answers: *when* does the server step, with *which* aggregate, and what does each
worker do next? Every runtime (simulator, processes, Ray) drives a protocol the same way:

    reply = protocol.begin()                 # which workers start, at version 0
    loop:  reply = protocol.handle(arrival)  # one gradient came back

An :class:`Arrival` carries the model ``version`` the gradient was computed at; the protocol knows
the server's current version, so every delay ``δ = server.version - arrival.version`` is measured,
never assumed. A :class:`Reply` says what happened to that gradient (:class:`Action`), which
workers start a new gradient at the server's *current* model, and which in-flight computations are
cancelled. That is enough for every method of the five papers implemented here: buffering
(minibatch, Ringleader), per-worker tables (IA²SGD, Malenia, Ringleader), cancelling in-flight work
(Ringmaster with calculation stops), and restarting all workers (Malenia, Rennala, minibatch).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from asyncopt.protocols.state import entry, integer, need, workers
from asyncopt.protocols.stepper import Stepper, finite
from asyncopt.rules.base import Rule
from asyncopt.tree import Params


class Action(StrEnum):
    """What the protocol did with one arrived gradient."""

    STEP = "step"  # used in a server step taken on this arrival
    BUFFER = "buffer"  # kept; used in a later step (minibatch, tables, Ringleader buffers)
    DROP = "drop"  # discarded on purpose (too stale, or the rule refused it)
    REJECT = "reject"  # not finite (NaN/Inf): counted, never applied
    CANCEL = "cancel"  # in-flight work stopped before it arrived (recorded by the runtime)
    LOST = "lost"  # the worker itself is gone (its process or actor died): see Protocol.lose
    RESTART = "restart"  # a dead worker is back (Ray restarted its actor): see Protocol.rejoin


@dataclass(frozen=True, slots=True)
class Arrival:
    """One gradient, computed by ``worker`` at model ``version``."""

    worker: int
    version: int
    grads: Params
    loss: float
    compute_time: float = 0.0


@dataclass(frozen=True, slots=True)
class Reply:
    """The protocol's answer to one arrival (or to ``begin``).

    ``start``: workers that start computing a new gradient at the server's current model.
    ``cancel``: workers whose in-flight computation is abandoned (listed again in ``start`` to
    restart them). A worker in neither list keeps doing what it does (or stays idle).
    """

    action: Action | None = None  # None only for ``begin``
    start: tuple[int, ...] = ()
    cancel: tuple[int, ...] = ()
    delay: int = 0


class Server(Stepper):
    """The model, the rule's state and the version counter: optimizer state exists once.

    Steps are out of place (:class:`~asyncopt.protocols.stepper.Stepper`, the one step path):
    each version's ``params`` is a fresh dict of fresh tensors that is never modified afterwards,
    so a reference to ``server.params`` taken at version v *is* the model of version v. Runtimes
    hand that reference to a worker instead of copying the model. In the modes without a
    central server the runtime puts the model's own counter here (the lock-free workers' shared
    one, the block servers' least version), so ``version`` always reads the model's.
    """

    def __init__(self, params: Params, rule: Rule) -> None:
        super().__init__(params, rule, in_place=False)


class Protocol(ABC):
    """Base class: keeps the server, the worker count and which worker computes at which version.

    Subclasses implement :meth:`receive` for finite gradients; :meth:`handle` rejects non-finite
    ones first (the model is never touched by a NaN) and keeps ``in_flight`` up to date.
    """

    name: str = "protocol"
    needs_every_worker: bool = False
    """True when the update needs a contribution from every worker (Malenia, Ringleader,
    IA²SGD): such a protocol cannot go on once a worker is lost."""
    needs_server: bool = True
    """True when one central server must see every arrival (to buffer, wait for several
    workers, cancel, or hand out models); False when each arrival is a step of its own that
    lock-free workers or block servers can apply where they are (asgd)."""
    needs_model_for: bool = False
    """True when a worker must compute at the model :meth:`model_for` hands out (the artificial
    delay): only a runtime that asks it (``asks_model_for``) can run the protocol."""

    def __init__(self, server: Server, num_workers: int) -> None:
        self.server = server
        self.num_workers = num_workers
        self.in_flight: dict[int, int] = {}  # worker -> version its current computation started at
        self.alive: set[int] = set(range(num_workers))
        self._resumed = False  # load_state_dict happened and begin has not yet

    @property
    def version(self) -> int:
        return self.server.version

    held_field: str = "workers"
    """The configuration field that :meth:`held_models` grows with, for the memory estimate's
    message."""

    def held_models(self) -> int:
        """How many model-sized tensors this protocol may hold at once besides the model
        (gradient tables, buffered gradients, past models): the memory estimate
        (:mod:`asyncopt.runtimes.common.resources`) counts them before a run starts."""
        return 0

    def begin(self) -> Reply:
        """Start every worker at the initial model; after :meth:`load_state_dict`, restart
        exactly the workers that were computing at the checkpoint, at the restored model."""
        start = sorted(self.in_flight) if self._resumed else range(self.num_workers)
        self._resumed = False
        return self._track(Reply(start=tuple(start)))

    def proceed(self) -> None:
        """Instead of :meth:`begin` after :meth:`load_state_dict`, when the runtime restored
        the work in flight too (the simulator): ``in_flight`` stays as saved."""
        self._resumed = False

    def handle(self, arrival: Arrival) -> Reply:
        """Process one arrival; the worker that sent it is no longer in flight."""
        self.in_flight.pop(arrival.worker, None)
        delay = self.server.version - arrival.version
        if not finite(arrival.grads, arrival.loss):
            reply = Reply(Action.REJECT, start=(arrival.worker,), delay=delay)
        else:
            reply = self.receive(arrival, delay)
        return self._track(reply)

    def model_for(self, worker: int) -> tuple[int, Params]:
        """``(version, params)`` that ``worker``, starting now, computes its gradient at: the
        server's current model. Runtimes ask this for every worker in ``Reply.start``; the
        artificial-delay protocol (APAM's delay study) overrides it to hand out an older one."""
        return self.server.version, self.server.params

    def lose(self, worker: int) -> Reply:
        """``worker`` is gone for good (a real runtime saw its process or actor die): it is never
        started again, and the protocol goes on with the others where its update allows."""
        self.alive.discard(worker)
        self.in_flight.pop(worker, None)
        return self._track(self.on_lost(worker))

    def rejoin(self, worker: int) -> Reply:
        """``worker`` died and is back (a restarted Ray actor): its in-flight computation is
        lost, and it starts again at the current model, as if that computation had just begun."""
        self.alive.add(worker)
        self.in_flight.pop(worker, None)
        return self._track(Reply(Action.RESTART, start=(worker,)))

    def on_lost(self, worker: int) -> Reply:
        """Override to react to a lost worker (e.g. stop waiting for its gradient)."""
        return Reply(Action.LOST)

    def state_dict(self) -> dict[str, Any]:
        """The protocol's state as numbers, lists, dicts and tensors (copies), which
        ``torch.load(weights_only=True)`` reads back: here what every protocol has, which
        workers are alive and which compute since which version; subclasses add their
        buffers, tables and counters. Options fixed by the configuration are not saved."""
        return {"kind": type(self).__name__, "num_workers": self.num_workers,
                "alive": sorted(self.alive),
                "in_flight": [[w, v] for w, v in sorted(self.in_flight.items())]}

    def check_state(self, state: Any) -> None:
        """Raise :class:`~asyncopt.errors.ConfigError` naming the first field of a saved
        ``state`` that this protocol (its class, worker count, model) cannot restore."""
        kind, name = entry(state, "kind", ""), type(self).__name__
        need(kind == name, "kind", kind, f"{name!r}, the protocol the run's configuration "
             f"builds (protocol {self.name!r} with these options)")
        n = entry(state, "num_workers", "")
        need(n == self.num_workers, "num_workers", n, f"{self.num_workers}, the run's workers")
        alive = workers(entry(state, "alive", ""), "alive", n)
        need(bool(alive), "alive", alive, "at least one live worker")
        pairs = entry(state, "in_flight", "")
        need(isinstance(pairs, list) and all(isinstance(p, list | tuple) and len(p) == 2
                                             for p in pairs), "in_flight", pairs,
             "a list of [worker, version] pairs")
        computing = workers([p[0] for p in pairs], "in_flight", n)
        need(set(computing) <= set(alive), "in_flight", pairs, f"live workers only ({alive})")
        for _, version in pairs:
            integer(version, "in_flight")

    def load_state_dict(self, state: Any) -> None:
        """Restore a :meth:`state_dict` into this fresh protocol, whose server already holds
        the checkpoint's model and version. ``state`` is checked first (:meth:`check_state`):
        nothing changes if it does not fit.

        The gradients in flight at the checkpoint are lost with the workers that computed
        them, so the next :meth:`begin` restarts exactly the workers that were computing, at
        the restored version v, and no others (a worker idle at the checkpoint, e.g. one whose
        gradient waits in a minibatch, stays idle). A restarted worker's next delay counts
        from v, not from the older version its lost computation had started at: the first
        delays after a resume are those of workers synchronized at v (smaller than the
        uninterrupted run's), and the ``in_flight`` start versions saved are not reused."""
        self.check_state(state)
        self._load_state(state)
        self._resumed = True

    def _load_state(self, state: dict[str, Any]) -> None:
        """Restore a checked state; overrides call this and then restore their own fields."""
        self.alive = set(state["alive"])
        self.in_flight = {int(w): int(v) for w, v in state["in_flight"]}

    @abstractmethod
    def receive(self, arrival: Arrival, delay: int) -> Reply:
        """The policy: step, buffer or drop this finite gradient, and say who computes next."""

    def restart_all(self, action: Action, delay: int) -> Reply:
        """Cancel every in-flight computation and start every live worker at the current model."""
        return Reply(action, start=tuple(sorted(self.alive)),
                     cancel=tuple(sorted(self.in_flight)), delay=delay)

    def _track(self, reply: Reply) -> Reply:
        for worker in reply.cancel:
            self.in_flight.pop(worker, None)
        version, alive, dead = self.server.version, self.alive, False
        for worker in reply.start:
            if worker in alive:
                self.in_flight[worker] = version
            else:
                dead = True
        if dead:  # a lost worker is never started: the runtime must not see it
            reply = replace(reply, start=tuple(w for w in reply.start if w in alive))
        return reply
