"""What a runtime is: an *event source* that the one driver (:mod:`.driver`) runs.

A runtime decides only where gradients come from and on what clock. It implements

    open(coordinator)                   start its workers (processes, actors); ready to start jobs
    start(worker, job, version, params) worker starts job number ``job`` at that model
                                        (False: the worker is dead)
    cancel(worker, job)                 that job's result will not be wanted
    wait(timeout) -> [event, ...]       the next events, waiting at most ``timeout`` seconds
    receive(arrived) -> (loss, grads)   the gradient of an :class:`Arrived` the driver handles
    now()                               its clock: virtual seconds, or wall seconds
    stop()                              the run is ending: workers that step by themselves stop
    close()                             stop everything it started, whatever happened

and the driver owns the rest: the job table, the execution of every protocol reply, stall
detection, the thread setting, checkpoints and signals. SimPy's shape: one loop, and a real-time
environment differs from the simulated one only in how it waits.

Events: :class:`Arrived` (a job's gradient is back), :class:`Applied` (a worker or a block server
applied a gradient by itself: lock-free mode, block servers), :class:`Ended` (such a worker's
loop ended), :class:`Lost` (a worker died for good), :class:`Restarting` and :class:`Restarted`
(a worker died and its runtime brings it back), :class:`Failed` (the run cannot go on).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from asyncopt.tree import Params

if TYPE_CHECKING:
    from asyncopt.runtimes.coordinator import Coordinator


@dataclass(frozen=True, slots=True)
class Arrived:
    """Job ``job`` of ``worker``, computed at model ``version``, is done; ``payload`` is what
    the source needs to hand its gradient over (:meth:`EventSource.receive`)."""

    worker: int
    job: int
    version: int
    compute_time: float
    payload: Any = None


@dataclass(frozen=True, slots=True)
class Applied:
    """``worker``'s gradient was applied (or, with ``action``, dropped or rejected) where it was
    computed or by block servers; ``version`` is the model's version after it as the worker saw
    it (the model's own counter is the one the source put into ``protocol.server.counter``)."""

    worker: int
    action: str
    version: int
    delay: int
    loss: float
    compute_time: float


@dataclass(frozen=True, slots=True)
class Ended:
    """``worker``'s own loop of steps ended (its step budget, or the stop flag)."""

    worker: int


@dataclass(frozen=True, slots=True)
class Lost:
    """``worker`` died and does not come back."""

    worker: int
    why: str = ""


@dataclass(frozen=True, slots=True)
class Restarting:
    """``worker`` died and its runtime restarts it (its job in flight is lost)."""

    worker: int
    why: str = ""


@dataclass(frozen=True, slots=True)
class Restarted:
    """``worker`` is back after :class:`Restarting`."""

    worker: int


@dataclass(frozen=True, slots=True)
class Failed:
    """The run cannot go on (e.g. a block server died): ``reason`` says why."""

    reason: str


Event = Arrived | Applied | Ended | Lost | Restarting | Restarted | Failed


@dataclass(frozen=True)
class Copy:
    """What a checkpoint saves of the model when the coordinator's server does not hold it,
    copied by the source at one moment (:meth:`EventSource.snapshot`).

    ``params``, ``rule_state`` (leaves in pytree order) and ``version``: a model that workers
    step in shared memory (lock-free mode), copied under the version lock, with ``events`` the
    steps reported up to that moment (the driver records them before it saves, so the history
    holds a row for every version of the copy). ``blocks``: K block servers' snapshots (their
    block, rule state and version), each read at its server's own moment.
    """

    params: Params | None = None
    rule_state: list[Any] | None = None
    version: int | None = None
    blocks: list[dict[str, Any]] | None = None
    events: list[Event] = field(default_factory=list)
    worker_states: list[list[Any]] | None = None
    """Lock-free workers' private heavy-ball buffers (``runtime_options.momentum =
    "per_worker"``), leaves per worker, or None."""


class EventSource:
    """Base class of the runtimes: defaults for what most sources do not need, and
    :meth:`run`, the registry's entry point, which hands the source to the driver."""

    name = "source"
    asks_model_for = True
    """Whether a job starts at the model the protocol hands out (``params`` of :meth:`start`),
    rather than at whatever the worker reads itself (shared memory, block servers)."""
    reports_steps = False
    """Whether workers apply gradients themselves and report :class:`Applied` events (lock-free
    mode, block servers): such a run is drained at its end, so every applied step is recorded."""
    threads = 1
    """torch's intra-op threads in the driver's process while the run lasts (restored after)."""
    checkpoint_every = 0
    """Write a checkpoint every this many steps (0: never)."""
    cpus: int | None = None
    """The CPUs that the workers and the server shared, when they all ran on this machine (set
    by :meth:`open`; the summary's ``cpus``, which a trace of the run reads)."""

    def run(self, coordinator: Coordinator) -> None:
        """Drive ``coordinator`` with this source's events until it says stop."""
        from asyncopt.runtimes.driver import Driver

        Driver(self, coordinator).run()

    def open(self, coordinator: Coordinator) -> None:
        """Start the workers; return once they are ready for :meth:`start`."""

    def start(self, worker: int, job: int, version: int, params: Params) -> bool:
        raise NotImplementedError

    def cancel(self, worker: int, job: int) -> None:
        """The driver no longer wants ``job``'s result (it drops it if it comes anyway)."""

    def wait(self, timeout: float) -> list[Event]:
        raise NotImplementedError

    def receive(self, arrived: Arrived) -> tuple[float, Params]:
        """``(loss, grads)`` of an arrival that the driver handles (not called for stale jobs,
        nor once the run stops, so a source may compute or fetch the gradient only here)."""
        return arrived.payload

    def now(self) -> float:
        raise NotImplementedError

    def stop(self) -> None:
        """The run ends: workers that step by themselves stop (their last reports follow)."""

    def snapshot(self) -> Copy | None:
        """The model for a checkpoint where the coordinator's server does not hold it (lock-free
        workers, block servers), :class:`Copy`; an empty one when the server holds it (the
        driver's own process, between events: nothing else changes it); None when no checkpoint
        can be taken now (a block server died: the run fails)."""
        return Copy()

    def server_versions(self) -> list[int] | None:
        """With K block servers, each one's version once the run has drained (the steps it
        applied, which the summary reports), or None."""
        return None

    def state(self) -> dict[str, Any] | None:
        """What the source needs to continue a checkpointed run exactly (the simulator: its
        pending jobs), or None: the real runtimes do not save work in flight, and their workers
        restart at the checkpoint's version."""
        return None

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state`, before the driver's loop starts."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop every process and actor this source started; called whatever happened."""


class RealTimeSource(EventSource):
    """A source on the wall clock: ``now`` is seconds since its workers were ready (its
    :meth:`open` calls ``self.clock.reset(coordinator.now)``)."""

    def __init__(self) -> None:
        self.clock = WallClock()

    def now(self) -> float:
        return self.clock()


class WallClock:
    """Wall seconds since :meth:`reset` (a resumed run goes on from its checkpoint's clock)."""

    def __init__(self) -> None:
        self._origin = time.perf_counter()

    def reset(self, now: float = 0.0) -> None:
        self._origin = time.perf_counter() - now

    def __call__(self) -> float:
        return time.perf_counter() - self._origin
