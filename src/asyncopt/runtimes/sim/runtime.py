"""``runtime = "sim"``: the registry's constructor of the simulator (:mod:`.loop`), with its
options validated."""

from __future__ import annotations

from asyncopt.errors import ConfigError, check_int
from asyncopt.problems.base import Problem
from asyncopt.runtimes.common.resources import PROCESSES_PER_CPU, Footprint, available_cpus
from asyncopt.runtimes.sim.loop import Simulator
from asyncopt.runtimes.sim.speed import SpeedModel


def build(problem: Problem, speed: SpeedModel, seed: int, threads: int = 1,
          batch: int = 1, ahead: int = 0, checkpoint_every: int = 0) -> Simulator:
    """The runtime registry's constructor for ``runtime = "sim"``.

    ``threads``: torch intra-op threads while simulating (restored afterwards). One gradient at
    a time of a small model gains nothing from more, and on a busy machine extra threads make it
    many times slower (measured 17× on 2 cores with the other one loaded). Raise it for big models.
    ``batch``: at most this many pending gradients at one snapshot are evaluated together
    (1, the default: one at a time); see the module docstring. Off by default: on the 2-core
    CPU it made the MNIST comparison slower, not faster (benchmarks/RESULTS.md, "Simulator
    speed"), since a 100k-parameter gradient costs its memory traffic whether batched or not
    and early work that a protocol then cancels is wasted.
    ``ahead``: compute up to this many pending gradients ahead of the event loop, in a
    background thread (0, the default: none); see :mod:`asyncopt.runtimes.sim.ahead`. The
    problem's ``loss_and_grad`` then runs on another thread than its ``evaluate``. Not together
    with ``batch`` > 1.
    ``checkpoint_every``: write ``RUN_DIR/checkpoint.pt`` every N steps (0: never), with the
    pending jobs (:meth:`Simulator.state`): ``asyncopt run --resume`` continues the simulation
    exactly, bit for bit with ``batch = 1``.
    """
    ahead = check_int("runtime_options.ahead", ahead, 0)
    batch = check_int("runtime_options.batch", batch, 1)
    if ahead and batch > 1:
        raise ConfigError("runtime_options.ahead", ahead,
                          "0 when runtime_options.batch > 1 (one or the other)")
    checkpoint_every = check_int("runtime_options.checkpoint_every", checkpoint_every, 0)
    if getattr(speed, "cores", None) and (ahead or checkpoint_every):
        raise ConfigError("speed.cores", speed.cores, "left out with runtime_options.ahead or "
                          "checkpoint_every (computations sharing cores are neither computed "
                          "ahead nor checkpointed yet)")
    if ahead and checkpoint_every:
        raise ConfigError("runtime_options.ahead", ahead, "0 when runtime_options."
                          "checkpoint_every > 0 (a checkpoint of gradients computed ahead is not "
                          "written yet)")
    cpus, _ = available_cpus()  # more threads than that only wait for each other
    simulator = Simulator(problem, speed, seed, threads=check_int(
        "runtime_options.threads", threads, 1, PROCESSES_PER_CPU * cpus), batch=batch, ahead=ahead)
    simulator.checkpoint_every = checkpoint_every
    # every worker may hold a snapshot of its own version; ``batch`` or ``ahead`` gradients
    # are computed at once
    simulator.footprint = Footprint(computing=max(batch, ahead + 1),
                                    snapshots=problem.num_workers)
    return simulator
