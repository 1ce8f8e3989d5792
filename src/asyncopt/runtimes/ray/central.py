"""``runtime = "ray"``: worker actors on a Ray cluster, one server, the same coordinator.

The driver is the parameter server, as in APAM's master–worker design (Xu et al.) and the
processes runtime: it runs the :class:`~asyncopt.runtimes.coordinator.Coordinator` (protocol,
rule state, version counter, history), so optimizer state exists once. ``problem.num_workers``
worker actors (:mod:`.actors`) each own a data shard. The loop is Ray's asynchronous
parameter-server pattern (``ray.wait`` on the gradients in flight), with the transfers cut to
one buffer each way:

    a start:     v, x = protocol.model_for(worker)   (the current model, unless a protocol says)
                 ref = ray.put(flat x)                (once per version; inline if < 64 KiB)
                 worker.compute.remote(ref, v)        (the worker reads ref zero-copy)
    an arrival:           g = ray.get(first ready)             (a read-only view of the store)

Delays come from versions, as everywhere: a task carries the version of the model it was given.
Replies are executed as in the other runtimes; a cancelled task runs to its end and its
gradient is ignored (tasks carry job numbers), so a restart's new task begins once the running
one ends, as the processes workers and the simulator's ``cancel = "finish"`` do. A task that
was cancelled while it still waited in its actor's queue runs too: ``ray.cancel`` would drop
it, but calling it on every cancel halved Rennala's steps per second (Ray 2.60, 3 local
actors). ``now`` is wall seconds since every worker was ready.

Faults: a worker actor that dies (its process killed, its node lost) is restarted by Ray up to
``max_restarts`` times; the history gets a ``lost`` row and a ``restart`` row, and the worker
rejoins through the protocol (:meth:`~asyncopt.runtimes.coordinator.Coordinator.restarted`)
at the current model once it answers a probe; until then the protocol waits for it as for a
slow worker. Past ``max_restarts`` it is lost for good
(:meth:`~asyncopt.runtimes.coordinator.Coordinator.lost`). The server's state never leaves the
driver; with ``checkpoint_every = N`` it is written to ``RUN_DIR/checkpoint.pt`` every N steps
(:mod:`asyncopt.resume`), and ``asyncopt run --resume RUN_DIR`` continues from it.

Transport (``runtime_options.transport``): with ``"auto"`` a worker actor on the driver's node
(same Ray node id, decided when it starts and again when it restarts) gets its model and
returns its gradient through shared memory (:mod:`.shm`: a model slot and a gradient slot per
such worker in one ``/dev/shm`` file; the driver writes the model into the worker's slot when
it starts a job), its task carrying only the version and returning (None, version, loss,
time); workers on other nodes, or every worker with ``"object_store"``, use the object store
as above. Delays are measured from versions on both paths.

With ``runtime_options.servers = K ≥ 2`` the server is sharded among K server actors that the
workers talk to directly, and the driver only records (:mod:`.sharded`, :mod:`.servers`).
"""

from __future__ import annotations

import time
import warnings
import weakref
from contextlib import ExitStack
from typing import Any

import torch

from asyncopt import tree
from asyncopt.problems.base import Problem
from asyncopt.runtimes.common.resources import available_cpus
from asyncopt.runtimes.coordinator import Coordinator
from asyncopt.runtimes.ray import actors, cluster, local, placement, shm
from asyncopt.runtimes.source import (
    Arrived,
    Event,
    Lost,
    RealTimeSource,
    Restarted,
    Restarting,
)
from asyncopt.tree import Params

_PROBE = -1  # the job number of a ``ready`` probe sent to a restarting actor
_PROBE_EVERY = 0.05  # seconds between probes of an actor that is not back yet
_KEPT_MODELS = 8
_INLINE_BYTES = 64 * 1024


class RayRuntime(RealTimeSource):
    """Gradients from ``problem.num_workers`` Ray worker actors; the driver is the server."""

    name = "ray"

    def __init__(self, problem: Problem, speed: Any, seed: int, *, target: cluster.Target,
                 time_scale: float, max_restarts: int, checkpoint_every: int,
                 worker_cpus: float, placement: str, startup_timeout: float,
                 transport: str = "auto", runtime_env: dict[str, Any] | None = None,
                 num_cpus: int = 1) -> None:
        super().__init__()
        self.problem, self.speed, self.seed = problem, speed, seed
        self.target, self.time_scale = target, time_scale
        self.runtime_env, self.num_cpus = runtime_env or {}, num_cpus
        self.max_restarts, self.checkpoint_every = max_restarts, checkpoint_every
        self.worker_cpus, self.placement = worker_cpus, placement
        self.startup_timeout = startup_timeout
        self.nodes: list[str] = []  # node id of each worker actor, as first placed
        self.deaths = [0] * problem.num_workers
        self.workers: list[Any] = []
        self._pending: dict[Any, tuple[int, int]] = {}  # task ref -> (worker, job or _PROBE)
        self._restarting: dict[int, float | None] = {}  # worker -> when to probe (None: sent)
        self._lost: set[int] = set()
        self._models: dict[int, Any] = {}  # version -> object ref of its flat model
        self._stack = ExitStack()
        # a run refused after its runtime was built (it never opens) disconnects too
        self._disconnect = weakref.finalize(self, self._stack.close)
        self.reservation: placement.Reservation | None = None
        self._callers_ray = False  # whether Ray was initialized by the caller, not by this run
        self.transport = transport
        self.shm = shm.SharedTransport(problem.num_workers)
        self.ray: Any = None  # the ray module once connected

    def open(self, coordinator: Coordinator) -> None:
        """Reserve the workers' CPUs, start the worker actors, wait until they are ready."""
        self.connect()
        ray = self.ray
        self._like = coordinator.protocol.server.params  # the layout gradients come back in
        shapes = {k: (tuple(v.shape), v.dtype) for k, v in self._like.items()}
        remote = ray.remote(actors.GradientWorker)
        options = dict(max_restarts=self.max_restarts, max_task_retries=0)
        # one copy in the object store for every actor, kept alive by this reference until
        # close, handed to each actor by its first `ready` and again after a restart (not to
        # its constructor: see .actors)
        self._problem_ref = ray.put(self.problem)
        self.workers = [self.place(remote, w, **options).remote(
            None, w, shapes, self.speed, self.seed, self.time_scale)
            for w in range(self.problem.num_workers)]
        self._wait_ready(ray)
        if set(self.nodes) == {ray.get_runtime_context().get_node_id()}:
            self.cpus = available_cpus()[0]  # every actor on this machine, with the driver
        if self.transport == "auto":
            self.shm.open(ray, self.workers, self.nodes, shapes)
        self.clock.reset(coordinator.now)  # a resumed run goes on on its clock

    def connect(self) -> None:
        """Connect to Ray (or start a private one) until :meth:`close`. ``train`` calls it
        through :func:`~asyncopt.runtimes.preflight.preflight`, after the checks (a refused
        run starts no Ray) and before the run writes anything (a Ray that cannot be joined is
        a ConfigError that leaves no run directory); :meth:`open` calls it otherwise."""
        if self.ray is not None:
            return
        self._callers_ray = local.import_ray().is_initialized()
        self.ray = self._stack.enter_context(cluster.connected(
            self.target, self.num_cpus, self.runtime_env))

    def place(self, remote: Any, worker: int, **options: Any) -> Any:
        """The actor class ``remote`` with ``options``, in worker ``worker``'s bundle of the
        run's placement group (``worker_cpus`` CPUs), reserved (all the workers' CPUs at
        once) on the first call (:mod:`.placement`)."""
        if self.reservation is None:
            self.reservation = placement.Reservation(
                self.ray, self.problem.num_workers, self.worker_cpus, self.placement)
            self.reservation.wait(self.startup_timeout)
        return remote.options(num_cpus=self.worker_cpus, **options,
                              scheduling_strategy=self.reservation.strategy(worker))

    def close(self) -> None:
        try:
            if self.workers:
                for worker in self.workers:
                    self.ray.kill(worker, no_restart=True)
            if self.reservation is not None and self._callers_ray:
                # in a Ray session of the caller's, which goes on; a session this run opened
                # removes the group as its job ends (removing it by hand would wait forever
                # for a raylet that a signal to the whole process group has killed)
                self.reservation.remove()
            self._models.clear()
            self._problem_ref = None
            self.shm.close()
        finally:
            self._disconnect()

    def _wait_ready(self, ray: Any) -> None:
        refs = [worker.ready.remote(self._problem_ref) for worker in self.workers]
        _, waiting = ray.wait(refs, num_returns=len(refs), timeout=self.startup_timeout)
        if waiting:
            raise RuntimeError(f"{len(waiting)} of {len(refs)} Ray worker actors did not start "
                               f"within {self.startup_timeout:g} s "
                               f"(runtime_options.startup_timeout); see `ray status`")
        try:
            self.nodes = ray.get(refs)
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as error:
            # its constructor failed, or unpickling the problem that `ready` hands it
            raise RuntimeError(f"a Ray worker actor failed to start (the problem must be "
                               f"importable on every node):\n{error}") from error

    def start(self, worker: int, job: int, version: int, params: Params) -> bool:
        if self.shm.shared[worker]:
            self.shm.send(worker, params)
            ref = self.workers[worker].compute_shared.remote(version, self.now())
        else:
            ref = self.workers[worker].compute.remote(self._model_ref(version, params),
                                                      version, self.now())
        self._pending[ref] = (worker, job)
        return True

    def wait(self, timeout: float) -> list[Event]:
        """The first task done (a gradient, a failure, a probe's answer), and probes sent to
        the restarting actors that are due."""
        self._probe()
        if not self._pending:
            time.sleep(timeout)
            return []
        ready, _ = self.ray.wait(list(self._pending), num_returns=1, timeout=timeout)
        return [event for ref in ready if (event := self._result(ref)) is not None]

    def _result(self, ref: Any) -> Event | None:
        worker, job = self._pending.pop(ref)
        exceptions = self.ray.exceptions
        try:
            result = self.ray.get(ref)
        except exceptions.RayActorError as error:
            return self._failed(worker, job, error)
        except exceptions.RayTaskError:
            if job != _PROBE and self.shm.shared[worker]:
                return None  # a cancelled job may have read a model being overwritten (.shm)
            raise
        if job == _PROBE:
            del self._restarting[worker]
            self.shm.shared[worker] = result is True  # a `connect` probe: attached again
            return Restarted(worker)
        grad, version, loss, compute_time = result
        return Arrived(worker, job, version, compute_time, (loss, grad))

    def receive(self, arrived: Arrived) -> tuple[float, Params]:
        loss, grad = arrived.payload
        if grad is None:  # in the worker's gradient slot
            flat = self.shm.gradient(arrived.worker)
        else:
            with warnings.catch_warnings():  # a read-only view of the object store: rules
                warnings.simplefilter("ignore", UserWarning)  # and protocols never write it
                flat = torch.from_numpy(grad)
        return loss, tree.unflatten(flat, self._like)

    def _model_ref(self, version: int, params: Any) -> Any:
        """The model of ``version`` as a task argument: put into the object store once and
        shared by every start at that version (the last few versions are kept, for protocols
        that hand out older ones: ``Protocol.model_for``); a small model goes inline."""
        ref = self._models.get(version)
        if ref is None:
            flat = actors.flat_numpy(params)
            # a small model travels inside the task itself (Ray inlines arguments under
            # 100 KiB), cheaper than a put and a fetch; steps are out of place, so the view
            # ``flat`` of the server's parameters never changes
            ref = flat if flat.nbytes < _INLINE_BYTES else self.ray.put(flat)
            self._models[version] = ref
            if len(self._models) > _KEPT_MODELS:
                del self._models[next(iter(self._models))]
        return ref

    def _failed(self, worker: int, job: int, error: Exception) -> Event | None:
        """A task of ``worker`` failed because its actor died. Ray restarts the actor (the
        error is then ``ActorUnavailableError``) until ``max_restarts`` is spent (then
        ``ActorDiedError``): probe it until it answers, then it rejoins; or lose it for good."""
        gone = isinstance(error, self.ray.exceptions.ActorDiedError)
        if worker in self._lost:
            return None  # a stale task of a worker lost already
        if job == _PROBE or worker in self._restarting:
            if gone:
                return self._lose(worker)
            if job == _PROBE:
                self._restarting[worker] = self.now() + _PROBE_EVERY  # not back: ask again
            return None
        self.shm.shared[worker] = False
        self.deaths[worker] += 1
        if gone:
            return self._lose(worker)
        self._restarting[worker] = self.now()
        return Restarting(worker, f"Ray worker actor {worker} died")

    def _lose(self, worker: int) -> Event:
        self._restarting.pop(worker, None)
        self._lost.add(worker)
        return Lost(worker, f"Ray worker actor {worker} died; no restarts left")

    def _probe(self) -> None:
        """Ask each restarting actor that is due whether it is back (``ready``)."""
        for worker, due in list(self._restarting.items()):
            if due is not None and due <= self.now():
                self._restarting[worker] = None
                self._pending[self.shm.probe(self.workers[worker], worker,
                                             self._problem_ref)] = (worker, _PROBE)
