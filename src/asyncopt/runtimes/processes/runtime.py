"""``runtime = "processes"``, server mode: real worker processes on one machine, one server.

APAM's master–worker design (Xu et al., *Parallel and distributed asynchronous adaptive
stochastic gradient methods*), for any protocol and rule: the main process is the server. It runs
the :class:`~asyncopt.runtimes.coordinator.Coordinator` (protocol + rule, so optimizer state
exists once and is never raced on, unlike Hogwild-style shared optimizers), and after every server
step it publishes the new model into shared memory
(:class:`~asyncopt.runtimes.common.shared.SharedModel`, a seqlocked double buffer with a version
counter). N worker processes (:mod:`.worker`) read the latest model
from there when told to start, compute one stochastic gradient on their own shard and hand it
back through a shared slot; the arrival carries the version the worker read, so the coordinator
measures every delay.

This module is the event source; the driver (:mod:`asyncopt.runtimes.driver`) executes the
protocol's replies as in every runtime: ``start`` = the worker computes at the latest published
model (published before the start), ``cancel`` = its in-flight gradient is discarded (each start
gets a new job number, and a gradient of an older job is dropped when it arrives; a CANCEL is
sent at the next wait unless a new job superseded it). ``now`` is wall seconds since every worker
was ready (process start-up does not count against a time budget). Evaluations run in the main
process and block the server while they run. The main process uses one torch thread during the
run (the driver restores its setting afterwards): the server's work per arrival is memory-bound
and small, and with several intra-op threads it waits for threads the OS lent to the workers.

A worker that dies (SIGKILL, a crash outside the problem's code) is detected through its process
sentinel and reported as :class:`~asyncopt.runtimes.source.Lost`: the driver records a
``cancel`` row for its in-flight gradient and a ``lost`` row, warns, and the run goes on with the
others; if none is left, the run stops with status ``failed``. An exception raised by the
problem in a worker stops the run and is re-raised here with the worker's traceback. Whatever
ends the run (budget, a signal, an error), every worker process is stopped before the run
returns or raises.

``runtime_options.device`` other than ``"cpu"`` (:mod:`.device`, written for GPUs and never run
on one yet): the server's model and rule state, the shared model and the gradient slots live on
the device (:mod:`.device_shared`), each worker computes on its own device, and everything is
moved back to the CPU when the run ends.
"""

from __future__ import annotations

from typing import Any

from asyncopt.errors import check, check_choice, check_float, check_int
from asyncopt.problems.base import Problem
from asyncopt.runtimes.common.layout import CUTS
from asyncopt.runtimes.common.resources import Footprint, available_cpus, check_cpus
from asyncopt.runtimes.common.shared import template
from asyncopt.runtimes.coordinator import Coordinator
from asyncopt.runtimes.processes.blocks import BLOCKS
from asyncopt.runtimes.processes.device import DevicePlan, check_plan, place, plan_devices, restore
from asyncopt.runtimes.processes.device_shared import gradient_slots, shared_model
from asyncopt.runtimes.processes.lockfree import LockFreeRuntime, dump_rule
from asyncopt.runtimes.processes.momentum import MOMENTA
from asyncopt.runtimes.processes.pool import WorkerPool, check_picklable
from asyncopt.runtimes.processes.servers import ServersRuntime
from asyncopt.runtimes.processes.worker import CANCEL, worker_main
from asyncopt.runtimes.source import Arrived, Event, Lost, RealTimeSource
from asyncopt.tree import Params


class ProcessRuntime(RealTimeSource):
    """Gradients from ``problem.num_workers`` worker processes; the main process is the server."""

    name = "processes"
    asks_model_for = False  # workers read the latest published model themselves

    def __init__(self, problem: Problem, speed: Any, seed: int, *, start_method: str,
                 time_scale: float, startup_timeout: float, checkpoint_every: int,
                 devices: DevicePlan | None = None) -> None:
        super().__init__()
        self.problem, self.speed, self.seed = problem, speed, seed
        self.devices = devices  # None: the CPU (see .device for a GPU)
        self.start_method, self.time_scale = start_method, time_scale
        self.startup_timeout, self.checkpoint_every = startup_timeout, checkpoint_every
        self.read_retries = 0  # torn model reads that the seqlock caught and repeated
        self._published = -1
        self._cancelled: set[int] = set()
        self._server: Any = None

    def open(self, coordinator: Coordinator) -> None:
        """Move the server to its device, share the model, start the workers, publish."""
        self._server = server = coordinator.protocol.server
        place(self.devices, server, self.problem)
        self.model = shared_model(self.devices, template(server.params))
        self.slots = gradient_slots(self.devices, self.model.like, self.problem.num_workers)
        self.pool = WorkerPool(self.problem.num_workers, worker_main,
                               (self.problem, self.model, self.slots, self.speed, self.seed,
                                self.time_scale), start_method=self.start_method,
                               devices=self.devices)
        self.pool.wait_ready(self.startup_timeout)
        self.cpus = available_cpus()[0]
        self.clock.reset(coordinator.now)
        self._publish(server.version, server.params)

    def start(self, worker: int, job: int, version: int, params: Params) -> bool:
        self._publish(version, params)  # before the start: a worker never reads an older model
        self._cancelled.discard(worker)  # the new job supersedes the old one
        if self.pool.send(worker, job, self.now()):
            return True
        self._bury(worker)
        return False

    def cancel(self, worker: int, job: int) -> None:
        self._cancelled.add(worker)  # sent at the next wait, unless a new job comes first

    def wait(self, timeout: float) -> list[Event]:
        for worker in self._cancelled:
            self.pool.send(worker, CANCEL, self.now())
        self._cancelled.clear()
        events: list[Event] = []
        for worker, kind, payload in self.pool.events(timeout):
            if kind == "grad":
                job, version, loss, compute_time, retries = payload
                self.read_retries += retries
                events.append(Arrived(worker, job, version, compute_time, loss))
            elif kind == "dead":
                if self.pool.alive[worker]:
                    events.append(Lost(worker, self._bury(worker)))
            else:
                raise RuntimeError(f"worker process {worker} raised:\n{payload[0]}")
        return events

    def receive(self, arrived: Arrived) -> tuple[float, Params]:
        return arrived.payload, self.slots.take(arrived.worker)

    def close(self) -> None:
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.close()
        if self._server is not None:
            restore(self.devices, self._server, self.problem)

    def _publish(self, version: int, params: Params) -> None:
        if version != self._published:
            self._published = version
            self.model.publish(params, version)

    def _bury(self, worker: int) -> str:
        return f"worker process {worker} died (exit code {self.pool.mark_dead(worker)})"


def build(problem: Problem, speed: Any, seed: int, *, start_method: str, time_scale: float,
          startup_timeout: float, mode: str, blocks: str, block_fraction: float,
          warmup_steps: int, backprop: str, momentum: str, servers: int, layout: str,
          device: str, checkpoint_every: int, oversubscribe: bool
          ) -> ProcessRuntime | LockFreeRuntime | ServersRuntime:
    """The runtime registry's constructor for ``runtime = "processes"``; the options (defaults in
    :data:`~asyncopt.runtimes.registry.RUNTIMES`) are validated here:

    * ``start_method``: ``spawn`` or ``forkserver`` (never ``fork``: a forked process inherits
      torch's thread pools in an undefined state);
    * ``time_scale``: wall seconds per speed-model unit; a gradient of worker i takes at least
      ``time_scale × speed.compute_time(i, now)`` (0: no emulated slowdown);
    * ``startup_timeout``: seconds the workers get to import torch and unpickle the problem;
    * ``mode``: ``server`` (this module) or ``lockfree`` (:mod:`.lockfree`: workers update a
      shared model and a shared rule state themselves; protocol ``asgd`` only);
    * ``blocks`` (lock-free only): ``whole``, ``partition`` (PASSM+) or ``random``
      (Gratton–Toint), see :mod:`.blocks`; ``block_fraction`` in (0, 1], the share of the
      tensors a random block takes; ``warmup_steps`` ≥ 0, the shared version before which
      ``partition`` takes full-model steps only; ``backprop``: ``block`` (a block step forms
      only the block's gradient, :mod:`.lockfree_worker`) or ``full`` (the whole gradient,
      restricted to the block: the same numbers at the full cost); ``momentum``: ``shared``
      (one heavy-ball buffer for every worker) or ``per_worker`` (each its own, as the PASSM+
      authors' code: :mod:`.momentum`);
    * ``servers`` (server mode only): K ≥ 1 server processes, one per block (:mod:`.servers`,
      protocol ``asgd`` only); 1 = the main process is the one server; ``layout``: how the
      model is cut into the K blocks, ``tensors`` or ``ranges``
      (:class:`~asyncopt.runtimes.common.layout.Layout`, the same in the Ray runtime);
    * ``device``: ``cpu`` (default), ``cuda``, ``cuda:K``, or a list of them, one per worker
      round-robin (:mod:`.device`: written for GPUs, never run on one yet);
    * ``checkpoint_every``: write ``RUN_DIR/checkpoint.pt`` every N steps (0: never), for
      ``asyncopt run --resume``, in every mode (lock-free: a copy under the version lock; block
      servers: each server's snapshot at its own moment);
    * ``oversubscribe``: allow more than 4 worker and server processes per CPU this process
      may use (:mod:`asyncopt.runtimes.common.resources`; refused by default, before any
      process starts).

    The source also declares what :func:`~asyncopt.runtimes.preflight.preflight` checks
    against the protocol and the machine before the run starts: ``serverless`` (lock-free
    workers and block servers) and ``footprint``.
    """
    plan = plan_devices(device, problem.num_workers)
    check(plan is not None or problem.device.type == "cpu", "runtime_options.device", device,
          f"{str(problem.device)!r}, the device the problem was moved to (Problem.to), or the "
          f"problem moved back with problem.to('cpu')")
    check_picklable(problem)
    common = {
        "start_method": check_choice("runtime_options.start_method", start_method,
                                     ("spawn", "forkserver")),
        "time_scale": check_float("runtime_options.time_scale", time_scale, 0.0),
        "startup_timeout": check_float("runtime_options.startup_timeout", startup_timeout, 0.0,
                                       strict_minimum=True)}
    mode = check_choice("runtime_options.mode", mode, ("server", "lockfree"))
    blocks = check_choice("runtime_options.blocks", blocks, BLOCKS)
    block_fraction = check_float("runtime_options.block_fraction", block_fraction, 0.0, 1.0,
                                 strict_minimum=True)
    warmup_steps = check_int("runtime_options.warmup_steps", warmup_steps, 0)
    backprop = check_choice("runtime_options.backprop", backprop, ("block", "full"))
    momentum = check_choice("runtime_options.momentum", momentum, MOMENTA)
    servers = check_int("runtime_options.servers", servers, 1)
    check(isinstance(oversubscribe, bool), "runtime_options.oversubscribe", oversubscribe,
          "true or false")
    n = problem.num_workers
    check_cpus(n + (servers if servers > 1 else 0), oversubscribe=oversubscribe, value=n,
               what="worker and server processes" if servers > 1 else "worker processes")
    checkpoint_every = check_int("runtime_options.checkpoint_every", checkpoint_every, 0)
    if plan is not None:
        check_plan(plan, device, problem, mode=mode, servers=servers)
    if mode == "server":
        check(blocks == "whole", "runtime_options.blocks", blocks,
              "'whole' with mode = 'server' (blocks are a lock-free option)")
        check(backprop == "block", "runtime_options.backprop", backprop,
              "'block' with mode = 'server' (block gradients are a lock-free option)")
        check(momentum == "shared", "runtime_options.momentum", momentum,
              "'shared' with mode = 'server' (the server holds the one optimizer state)")
        if servers > 1:
            dump_rule(None)  # each server applies the rule: fail now if it cannot reach them
            engine: Any = ServersRuntime(problem, speed, seed, **common, servers=servers,
                                         layout=check_choice("runtime_options.layout", layout,
                                                             CUTS),
                                         checkpoint_every=checkpoint_every)
            engine.serverless = ("runtime_options.servers", servers)
            # the servers' blocks and a gradient slot per worker in /dev/shm
            engine.footprint = Footprint(computing=0, processes=n, servers=servers,
                                         shared_models=1 + n)
            return engine
        engine = ProcessRuntime(problem, speed, seed, **common, devices=plan,
                                checkpoint_every=checkpoint_every)
        # the published model's double buffer and a gradient slot per worker in /dev/shm (on
        # a GPU they are device memory, which this estimate does not price)
        engine.footprint = Footprint(computing=0, processes=n,
                                     shared_models=(2 + n) if plan is None else 0)
        return engine
    check(servers == 1, "runtime_options.servers", servers,
          "1 with mode = 'lockfree' (there is no server: the workers step the model)")
    dump_rule(None)  # fail now, not after start-up, if the rule cannot reach the workers
    engine = LockFreeRuntime(problem, speed, seed, **common, blocks=blocks,
                             block_fraction=block_fraction, warmup_steps=warmup_steps,
                             backprop=backprop, momentum=momentum,
                             checkpoint_every=checkpoint_every, devices=plan)
    engine.serverless = ("runtime_options.mode", "lockfree")
    # the shared model (and with per-worker momentum each worker's buffers) and the rule's
    # shared state in /dev/shm
    per_worker = n if momentum == "per_worker" else 0
    engine.footprint = Footprint(computing=0, processes=n,
                                 shared_models=(1 + per_worker) if plan is None else 0,
                                 shared_state=plan is None)
    return engine
