"""``runtime = "processes"``, server mode: real worker processes on one machine, one server.

APAM's master–worker design (Xu et al., *Parallel and distributed asynchronous adaptive
stochastic gradient methods*), for any protocol and rule: the main process is the server. It runs
the :class:`~asyncopt.runtimes.coordinator.Coordinator` (protocol + rule, so optimizer state
exists once and is never raced on, unlike Hogwild-style shared optimizers), and after every server
step it publishes the new model into shared memory (:class:`~.shared.SharedModel`, a seqlocked
double buffer with a version counter). N worker processes (:mod:`.worker`) read the latest model
from there when told to start, compute one stochastic gradient on their own shard and hand it
back through a shared slot; the arrival carries the version the worker read, so the coordinator
measures every delay.

Protocol replies are executed as in the simulator (:mod:`asyncopt.runtimes.sim.loop`):
``start`` = the worker computes at the latest published model (at least the version of the
start), ``cancel`` = its in-flight gradient is discarded (each start gets a new job number, and a
gradient of an older job is dropped when it arrives). ``now`` is wall seconds since every worker
was ready (process start-up does not count against a time budget). Evaluations run in the main
process and block the server while they run. The main process uses one torch thread during the
run (its own setting is restored afterwards): see the comment in :meth:`ProcessRuntime.run`.

A worker that dies (SIGKILL, a crash outside the problem's code) is detected through its process
sentinel: a ``cancel`` row is recorded for its in-flight gradient, a ``RuntimeWarning`` names it,
and the run goes on with the others; if none is left, the run stops with status ``failed``. An
exception raised by the problem in a worker stops the run and is re-raised here with the
worker's traceback. Whatever ends the run (budget, Ctrl-C, an error), every worker process is
stopped before :meth:`ProcessRuntime.run` returns or raises.

``runtime_options.device`` other than ``"cpu"`` (:mod:`.device`, written for GPUs and never run
on one yet): the server's model and rule state, the shared model and the gradient slots live on
the device (:mod:`.device_shared`), each worker computes on its own device, and everything is
moved back to the CPU before :meth:`ProcessRuntime.run` returns.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from asyncopt.errors import check, check_choice, check_float, check_int
from asyncopt.problems.base import Problem
from asyncopt.protocols.base import Arrival, Reply
from asyncopt.runtimes.coordinator import Coordinator
from asyncopt.runtimes.processes.blocks import BLOCKS
from asyncopt.runtimes.processes.device import DevicePlan, check_plan, place, plan_devices, restore
from asyncopt.runtimes.processes.device_shared import gradient_slots, shared_model
from asyncopt.runtimes.processes.lockfree import LockFreeRuntime, dump_rule
from asyncopt.runtimes.processes.pool import WorkerPool, check_picklable, poll_timeout
from asyncopt.runtimes.processes.servers import ServersRuntime
from asyncopt.runtimes.processes.shared import GradientSlots, template
from asyncopt.runtimes.processes.worker import CANCEL, worker_main


class ProcessRuntime:
    """Drives a coordinator with gradients from ``problem.num_workers`` worker processes."""

    name = "processes"
    asks_model_for = False  # workers read the latest published model themselves

    def __init__(self, problem: Problem, speed: Any, seed: int, *, start_method: str,
                 time_scale: float, startup_timeout: float,
                 devices: DevicePlan | None = None) -> None:
        self.problem, self.speed, self.seed = problem, speed, seed
        self.devices = devices  # None: the CPU (see .device for a GPU)
        self.start_method, self.time_scale = start_method, time_scale
        self.startup_timeout = startup_timeout
        self.now = 0.0
        self.read_retries = 0  # torn model reads that the seqlock caught and repeated
        self._jobs: list[int | None] = [None] * problem.num_workers  # current job, or idle
        self._started: list[int] = [0] * problem.num_workers  # version at the current job's start
        self._job_counter = 0
        self._published = -1

    def run(self, coordinator: Coordinator) -> None:
        """Start the workers, serve their gradients until the coordinator says stop, stop them."""
        server = coordinator.protocol.server
        place(self.devices, server, self.problem)
        try:
            self._serve(coordinator)
        finally:
            restore(self.devices, server, self.problem)

    def _serve(self, coordinator: Coordinator) -> None:
        params = coordinator.protocol.server.params
        self.model = shared_model(self.devices, template(params))
        slots = gradient_slots(self.devices, self.model.like, self.problem.num_workers)
        self.pool = WorkerPool(self.problem.num_workers, worker_main,
                               (self.problem, self.model, slots, self.speed, self.seed,
                                self.time_scale), start_method=self.start_method,
                               devices=self.devices)
        threads = torch.get_num_threads()
        # The server's work per arrival is memory-bound and small; with several intra-op threads
        # it waits for threads the OS lent to the workers (an 800 KB clone took 9 ms instead of
        # 0.05 ms on a loaded 2-core machine), so it runs on one thread while they compute.
        torch.set_num_threads(1)
        try:
            self.pool.wait_ready(self.startup_timeout)
            self._t0 = time.perf_counter()
            self._publish(coordinator)
            self._apply(coordinator, coordinator.begin(self.now))
            while coordinator.stop_reason is None:
                if not any(job is not None for job in self._jobs):
                    self._stalled(coordinator)
                    break
                events = self.pool.events(poll_timeout(coordinator, self._t0))
                self.now = time.perf_counter() - self._t0
                if not coordinator.advance(self.now):
                    break
                for worker, kind, payload in events:
                    if coordinator.stop_reason is not None:
                        break
                    if kind == "grad":
                        self._arrive(coordinator, worker, slots, *payload)
                    elif kind == "dead":
                        self._died(coordinator, worker)
                    else:
                        raise RuntimeError(f"worker process {worker} raised:\n{payload[0]}")
        finally:
            self.pool.close()
            torch.set_num_threads(threads)

    def _arrive(self, coordinator: Coordinator, worker: int, slots: GradientSlots, job: int,
                version: int, loss: float, compute_time: float, retries: int) -> None:
        if job != self._jobs[worker]:
            return  # a cancelled or superseded job: its slot may already hold newer work
        self._jobs[worker] = None
        self.read_retries += retries
        arrival = Arrival(worker, version, slots.take(worker), loss, compute_time)
        self._apply(coordinator, coordinator.arrive(self.now, arrival))

    def _apply(self, coordinator: Coordinator, reply: Reply) -> None:
        self._publish(coordinator)  # before any start: a worker never reads an older model
        for worker in reply.cancel:
            if self._jobs[worker] is not None:
                coordinator.cancelled(self.now, worker, self._started[worker])
                self._jobs[worker] = None
                if worker not in reply.start:
                    self.pool.send(worker, CANCEL, self.now)
        for worker in reply.start:
            if not self.pool.alive[worker]:
                continue  # a dead worker cannot start; its death was recorded once
            self._job_counter += 1
            self._jobs[worker], self._started[worker] = self._job_counter, coordinator.version
            if not self.pool.send(worker, self._job_counter, self.now):
                self._died(coordinator, worker)

    def _publish(self, coordinator: Coordinator) -> None:
        if coordinator.version != self._published:
            self._published = coordinator.version
            self.model.publish(coordinator.protocol.server.params, self._published)

    def _died(self, coordinator: Coordinator, worker: int) -> None:
        if not self.pool.alive[worker]:
            return
        if self._jobs[worker] is not None:
            coordinator.cancelled(self.now, worker, self._started[worker])
            self._jobs[worker] = None
        self.pool.bury(worker, self.now, coordinator)
        self._apply(coordinator, coordinator.lost(self.now, worker))

    def _stalled(self, coordinator: Coordinator) -> None:
        died = self.pool.died
        lost = f"; worker(s) {sorted(died)} died and the protocol waits for them" if died else ""
        coordinator.stop(f"no worker is computing: the protocol left every worker idle{lost}",
                         status="stalled")


def build(problem: Problem, speed: Any, seed: int, *, start_method: str, time_scale: float,
          startup_timeout: float, mode: str, blocks: str, block_fraction: float,
          warmup_steps: int, servers: int, device: str
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
      ``partition`` takes full-model steps only;
    * ``servers`` (server mode only): K ≥ 1 server processes, one per block of tensors
      (:mod:`.servers`, protocol ``asgd`` only); 1 = the main process is the one server;
    * ``device``: ``cpu`` (default), ``cuda``, ``cuda:K``, or a list of them, one per worker
      round-robin (:mod:`.device`: written for GPUs, never run on one yet).
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
    servers = check_int("runtime_options.servers", servers, 1)
    if plan is not None:
        check_plan(plan, device, problem, mode=mode, servers=servers)
    if mode == "server":
        check(blocks == "whole", "runtime_options.blocks", blocks,
              "'whole' with mode = 'server' (blocks are a lock-free option)")
        if servers > 1:
            dump_rule(None)  # each server applies the rule: fail now if it cannot reach them
            return ServersRuntime(problem, speed, seed, **common, servers=servers)
        return ProcessRuntime(problem, speed, seed, **common, devices=plan)
    check(servers == 1, "runtime_options.servers", servers,
          "1 with mode = 'lockfree' (there is no server: the workers step the model)")
    dump_rule(None)  # fail now, not after start-up, if the rule cannot reach the workers
    return LockFreeRuntime(problem, speed, seed, **common, blocks=blocks,
                           block_fraction=block_fraction, warmup_steps=warmup_steps,
                           devices=plan)
