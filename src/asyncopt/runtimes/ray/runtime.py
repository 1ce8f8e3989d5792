"""``runtime = "ray"``: the registry's constructor of the Ray runtime, with its options
validated: one server on the driver (:mod:`.central`) or K block server actors (:mod:`.sharded`).
"""

from __future__ import annotations

from typing import Any

from asyncopt.errors import ConfigError, check_choice, check_float, check_int
from asyncopt.problems.base import Problem
from asyncopt.runtimes.common.layout import CUTS
from asyncopt.runtimes.common.resources import Footprint
from asyncopt.runtimes.ray import cluster, local
from asyncopt.runtimes.ray.central import RayRuntime
from asyncopt.runtimes.ray.sharded import ShardedRuntime

TRANSPORTS = ("auto", "object_store")

def build(problem: Problem, speed: Any, seed: int, *, address: str, time_scale: float,
          max_restarts: int, checkpoint_every: int, worker_cpus: float, placement: str,
          startup_timeout: float, servers: int, layout: str, transport: str,
          oversubscribe: bool, runtime_env: dict[str, Any]) -> RayRuntime:
    """The runtime registry's constructor for ``runtime = "ray"``; options (defaults in
    :data:`~asyncopt.runtimes.registry.RUNTIMES`):

    * ``address``: which Ray, by Ray's rules (:mod:`.cluster`): ``""`` = ``RAY_ADDRESS`` or a
      private local Ray on 127.0.0.1, ``"local"``, ``"auto"``, ``"HOST:PORT"``, ``"ray://..."``;
    * ``runtime_env``: Ray's runtime environment for the run (``working_dir``,
      ``py_modules``, ``pip``, ``env_vars``): how asyncopt and the model code reach a
      cluster's nodes;
    * ``oversubscribe``: let a private local Ray have more worker CPUs than this process may
      use (refused otherwise, before anything starts);
    * ``time_scale``: wall seconds per speed-model unit (0: no emulated slowdown);
    * ``max_restarts``: how often Ray restarts a dead worker actor (-1: always);
    * ``checkpoint_every``: write the server state every N steps (0: never);
    * ``worker_cpus``: CPUs each worker actor reserves (fractions allowed);
    * ``placement``: ``spread`` (over nodes) or ``default`` (Ray packs);
    * ``startup_timeout``: seconds the workers' CPUs may take to be reserved (a placement
      group, :mod:`.placement`) and the actors to start;
    * ``transport``: ``auto`` = shared memory for worker actors on the driver's node, the
      object store for the others (:mod:`.shm`); ``object_store`` = the object store for all;
    * ``servers``: 1 = the driver is the one server (every protocol, restarts, checkpoints);
      K ≥ 2 = K block server actors that the workers talk to directly (:mod:`.sharded`,
      :mod:`.servers`; protocol ``asgd`` only);
    * ``layout``: how K block servers cut the model, ``tensors`` or ``ranges``
      (:class:`~asyncopt.runtimes.common.layout.Layout`, the same in the processes runtime).
    """
    target = cluster.target(address)
    if not isinstance(oversubscribe, bool):
        raise ConfigError("runtime_options.oversubscribe", oversubscribe, "true or false")
    options = dict(
        target=target,
        time_scale=check_float("runtime_options.time_scale", time_scale, 0.0),
        max_restarts=check_int("runtime_options.max_restarts", max_restarts, -1),
        checkpoint_every=check_int("runtime_options.checkpoint_every", checkpoint_every, 0),
        worker_cpus=check_float("runtime_options.worker_cpus", worker_cpus, 0.0,
                                strict_minimum=True),
        placement=check_choice("runtime_options.placement", placement, ("default", "spread")),
        startup_timeout=check_float("runtime_options.startup_timeout", startup_timeout, 0.0,
                                    strict_minimum=True),
        transport=check_choice("runtime_options.transport", transport, TRANSPORTS),
        runtime_env=cluster.check_runtime_env(runtime_env))
    servers = check_int("runtime_options.servers", servers, 1)
    if servers == 1:
        runtime = RayRuntime(problem, speed, seed, **options)
    else:
        runtime = ShardedRuntime(problem, speed, seed, servers=servers,
                                 layout=check_choice("runtime_options.layout", layout, CUTS),
                                 **options)
    if target.private and not local.import_ray().is_initialized():
        # before Ray starts: a private local Ray has room for the workers, or is refused
        runtime.num_cpus = local.check_fits(problem.num_workers, runtime.worker_cpus,
                                            oversubscribe)
    runtime.footprint = footprint(problem.num_workers, servers, target.private,
                                  options["transport"])
    return runtime


def footprint(workers: int, servers: int, private: bool, transport: str) -> Footprint:
    """What a run holds on this machine, for the memory check made before Ray starts.

    A private local Ray runs every actor here: each worker actor is a process with torch and
    its own copy of the whole problem (unpickled from the object store, which holds one more),
    and with ``transport = "auto"`` a model slot and a gradient slot per worker in ``/dev/shm``
    (:mod:`.shm`); K ≥ 2 block servers are K more processes. On a cluster the actors' memory
    is on nodes Ray chooses, so only the driver's part (the protocol's tables) is priced."""
    if not private:
        return Footprint(computing=0)
    return Footprint(computing=0, processes=workers, servers=servers if servers > 1 else 0,
                     problem_copies=workers + 1,
                     shared_models=2 * workers if transport == "auto" and servers == 1 else 0)
