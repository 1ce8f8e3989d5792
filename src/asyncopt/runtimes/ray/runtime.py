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
Replies are executed as in the other runtimes; a cancelled task runs to its end and its gradient
is ignored (tasks carry job numbers). ``now`` is wall seconds since every worker was ready.

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
from typing import Any

import numpy as np
import torch

from asyncopt import resume, tree
from asyncopt.errors import ConfigError, check_choice, check_float, check_int
from asyncopt.problems.base import Problem
from asyncopt.protocols.base import Arrival, Reply
from asyncopt.runtimes.coordinator import Coordinator
from asyncopt.runtimes.processes.pool import poll_timeout
from asyncopt.runtimes.ray import actors, cluster, shm

_PROBE = -1  # the job number of a ``ready`` probe sent to a restarting actor
_PROBE_EVERY = 0.05  # seconds between probes of an actor that is not back yet
_KEPT_MODELS = 8
_INLINE_BYTES = 64 * 1024
TRANSPORTS = ("auto", "object_store")


class RayRuntime:
    """Drives a coordinator with gradients from ``problem.num_workers`` Ray worker actors."""

    name = "ray"
    asks_model_for = True

    def __init__(self, problem: Problem, speed: Any, seed: int, *, address: str,
                 time_scale: float, max_restarts: int, checkpoint_every: int,
                 worker_cpus: float, placement: str, startup_timeout: float,
                 transport: str = "auto") -> None:
        self.problem, self.speed, self.seed = problem, speed, seed
        self.address, self.time_scale = address, time_scale
        self.max_restarts, self.checkpoint_every = max_restarts, checkpoint_every
        self.worker_cpus, self.placement = worker_cpus, placement
        self.startup_timeout = startup_timeout
        self.now = 0.0
        self.nodes: list[str] = []  # node id of each worker actor, as first placed
        self.deaths = [0] * problem.num_workers
        self._pending: dict[Any, tuple[int, int]] = {}  # task ref -> (worker, job or _PROBE)
        self._restarting: dict[int, float | None] = {}  # worker -> when to probe (None: sent)
        self._jobs: list[int | None] = [None] * problem.num_workers
        self._started = [0] * problem.num_workers
        self._job_counter = 0
        self._models: dict[int, Any] = {}  # version -> object ref of its flat model
        self._checkpointed = -1
        self.transport = transport
        self.shm = shm.SharedTransport(problem.num_workers)

    def run(self, coordinator: Coordinator) -> None:
        """Start the worker actors, serve their gradients until the coordinator says stop."""
        n = self.problem.num_workers
        with cluster.connected(self.address, num_cpus=None if self.address else
                               max(1, int(np.ceil(n * self.worker_cpus)))) as ray:
            self.ray = ray
            self._check_room(ray, n)
            shapes = {k: (tuple(v.shape), v.dtype)
                      for k, v in coordinator.protocol.server.params.items()}
            remote = ray.remote(actors.GradientWorker).options(
                num_cpus=self.worker_cpus, max_restarts=self.max_restarts, max_task_retries=0,
                scheduling_strategy=self.placement.upper())
            # one copy in the object store for every actor, kept alive by this reference for
            # the whole run: a restarted actor is built from it again
            problem = ray.put(self.problem)
            self.workers = [remote.remote(problem, w, shapes, self.speed,
                                          self.seed, self.time_scale) for w in range(n)]
            try:
                self._wait_ready(ray)
                if self.transport == "auto":
                    self.shm.open(ray, self.workers, self.nodes, shapes)
                self._serve(coordinator)
            finally:
                for worker in self.workers:
                    ray.kill(worker, no_restart=True)
                self._models.clear()
                self.shm.close()

    def _check_room(self, ray: Any, n: int) -> None:
        cpus = cluster.free_cpus(ray)
        if n * self.worker_cpus > cpus:
            raise ConfigError("workers", n, f"at most {int(cpus // self.worker_cpus)} worker "
                              f"actors: the Ray cluster has {cpus:g} CPUs and each worker takes "
                              f"runtime_options.worker_cpus = {self.worker_cpus:g}")

    def _wait_ready(self, ray: Any) -> None:
        refs = [worker.ready.remote() for worker in self.workers]
        _, waiting = ray.wait(refs, num_returns=len(refs), timeout=self.startup_timeout)
        if waiting:
            raise RuntimeError(f"{len(waiting)} of {len(refs)} Ray worker actors did not start "
                               f"within {self.startup_timeout:g} s "
                               f"(runtime_options.startup_timeout); see `ray status`")
        try:
            self.nodes = ray.get(refs)
        except ray.exceptions.RayActorError as error:
            raise RuntimeError(f"a Ray worker actor failed to start (the problem must be "
                               f"importable on every node):\n{error}") from error

    def _serve(self, coordinator: Coordinator) -> None:
        ray = self.ray
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the server's work per arrival is small and memory-bound
        try:
            self._t0 = time.perf_counter() - coordinator.now  # a resumed run goes on its clock
            self.now = coordinator.now
            self._apply(coordinator, coordinator.begin(self.now))
            while coordinator.stop_reason is None:
                self._probe()
                if not self._pending and not self._restarting:
                    coordinator.stop("no worker is computing: the protocol left every worker "
                                     "idle", status="stalled")
                    break
                ready, _ = ray.wait(list(self._pending), num_returns=1,
                                    timeout=poll_timeout(coordinator, self._t0))
                self.now = time.perf_counter() - self._t0
                if not coordinator.advance(self.now):
                    break
                for ref in ready:
                    self._arrive(coordinator, ref)
                self._checkpoint(coordinator)
        finally:
            torch.set_num_threads(threads)

    def _arrive(self, coordinator: Coordinator, ref: Any) -> None:
        worker, job = self._pending.pop(ref)
        try:
            result = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as error:
            self._failed(coordinator, worker, job, error)
            return
        except self.ray.exceptions.RayTaskError:
            if job != self._jobs[worker] and self.shm.shared[worker]:
                return  # a cancelled job may have read a model being overwritten (see .shm)
            raise
        if job == _PROBE:
            del self._restarting[worker]
            self.shm.shared[worker] = result is True  # a `connect` probe: attached again
            self._apply(coordinator, coordinator.restarted(self.now, worker))
            return
        grad, version, loss, compute_time = result
        if job != self._jobs[worker] or coordinator.stop_reason is not None:
            return  # a cancelled or superseded job
        self._jobs[worker] = None
        if grad is None:  # in the worker's gradient slot
            flat = self.shm.gradient(worker)
        else:
            with warnings.catch_warnings():  # a read-only view of the object store: rules
                warnings.simplefilter("ignore", UserWarning)  # and protocols never write it
                flat = torch.from_numpy(grad)
        arrival = Arrival(worker, version, tree.unflatten(flat, coordinator.protocol.server
                                                           .params), loss, compute_time)
        self._apply(coordinator, coordinator.arrive(self.now, arrival))

    def _apply(self, coordinator: Coordinator, reply: Reply) -> None:
        for worker in reply.cancel:
            if self._jobs[worker] is not None:
                coordinator.cancelled(self.now, worker, self._started[worker])
                self._jobs[worker] = None
        for worker in reply.start:
            if worker in self._restarting:
                continue  # it starts when it is back (Coordinator.restarted)
            version, params = coordinator.protocol.model_for(worker)
            self._job_counter += 1
            self._jobs[worker], self._started[worker] = self._job_counter, version
            if self.shm.shared[worker]:
                self.shm.send(worker, params)
                ref = self.workers[worker].compute_shared.remote(version, self.now)
            else:
                ref = self.workers[worker].compute.remote(self._model_ref(version, params),
                                                          version, self.now)
            self._pending[ref] = (worker, self._job_counter)

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

    def _failed(self, coordinator: Coordinator, worker: int, job: int, error: Exception) -> None:
        """A task of ``worker`` failed because its actor died. Ray restarts the actor (the
        error is then ``ActorUnavailableError``) until ``max_restarts`` is spent (then
        ``ActorDiedError``): probe it until it answers, then it rejoins; or lose it for good."""
        gone = isinstance(error, self.ray.exceptions.ActorDiedError)
        if gone and self._jobs[worker] is None and worker not in self._restarting:
            return  # a failed stale task of a worker already lost
        if job == _PROBE or worker in self._restarting:
            if gone:
                self._restarting.pop(worker, None)
                self._lose(coordinator, worker)
            elif job == _PROBE:
                self._restarting[worker] = self.now + _PROBE_EVERY  # not back yet: ask again
            return
        self._jobs[worker] = None
        self.shm.shared[worker] = False
        self.deaths[worker] += 1
        warnings.warn(f"Ray worker actor {worker} died at {self.now:.3f} s"
                      + ("; no restarts left" if gone else "; Ray restarts it"),
                      RuntimeWarning, stacklevel=2)
        if gone:
            self._lose(coordinator, worker)
        else:
            coordinator.restarting(self.now, worker)
            self._restarting[worker] = self.now

    def _lose(self, coordinator: Coordinator, worker: int) -> None:
        self._jobs[worker] = None
        self._apply(coordinator, coordinator.lost(self.now, worker))

    def _probe(self) -> None:
        """Ask each restarting actor that is due whether it is back (``ready``)."""
        for worker, due in list(self._restarting.items()):
            if due is not None and due <= time.perf_counter() - self._t0:
                self._restarting[worker] = None
                self._pending[self.shm.probe(self.workers[worker], worker)] = (worker, _PROBE)

    def _checkpoint(self, coordinator: Coordinator) -> None:
        run_dir = coordinator.recorder.run_dir
        version = coordinator.version
        if (self.checkpoint_every and run_dir is not None and version != self._checkpointed
                and version % self.checkpoint_every == 0 and version > 0):
            self._checkpointed = version
            resume.save(coordinator, run_dir / resume.CHECKPOINT)


def build(problem: Problem, speed: Any, seed: int, *, address: str, time_scale: float,
          max_restarts: int, checkpoint_every: int, worker_cpus: float, placement: str,
          startup_timeout: float, servers: int, transport: str) -> RayRuntime:
    """The runtime registry's constructor for ``runtime = "ray"``; options (defaults in
    :data:`~asyncopt.runtimes.registry.RUNTIMES`):

    * ``address``: ``""`` starts a local Ray on 127.0.0.1; ``"HOST:PORT"`` joins a cluster;
    * ``time_scale``: wall seconds per speed-model unit (0: no emulated slowdown);
    * ``max_restarts``: how often Ray restarts a dead worker actor (-1: always);
    * ``checkpoint_every``: write the server state every N steps (0: never);
    * ``worker_cpus``: CPUs each worker actor reserves (fractions allowed);
    * ``placement``: ``spread`` (over nodes) or ``default`` (Ray packs);
    * ``startup_timeout``: seconds the actors get to start;
    * ``transport``: ``auto`` = shared memory for worker actors on the driver's node, the
      object store for the others (:mod:`.shm`); ``object_store`` = the object store for all;
    * ``servers``: 1 = the driver is the one server (every protocol, restarts, checkpoints);
      K ≥ 2 = K block server actors that the workers talk to directly (:mod:`.sharded`,
      :mod:`.servers`; protocol ``asgd`` only).
    """
    if not isinstance(address, str):
        raise ConfigError("runtime_options.address", address, "'' or 'HOST:PORT'")
    if address:
        cluster.check_address(address)
    options = dict(
        address=address,
        time_scale=check_float("runtime_options.time_scale", time_scale, 0.0),
        max_restarts=check_int("runtime_options.max_restarts", max_restarts, -1),
        checkpoint_every=check_int("runtime_options.checkpoint_every", checkpoint_every, 0),
        worker_cpus=check_float("runtime_options.worker_cpus", worker_cpus, 0.0,
                                strict_minimum=True),
        placement=check_choice("runtime_options.placement", placement, ("default", "spread")),
        startup_timeout=check_float("runtime_options.startup_timeout", startup_timeout, 0.0,
                                    strict_minimum=True),
        transport=check_choice("runtime_options.transport", transport, TRANSPORTS))
    servers = check_int("runtime_options.servers", servers, 1)
    if servers == 1:
        return RayRuntime(problem, speed, seed, **options)
    from asyncopt.runtimes.ray.sharded import ShardedRuntime

    return ShardedRuntime(problem, speed, seed, servers=servers, **options)
