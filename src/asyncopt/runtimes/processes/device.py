"""``runtime_options.device``: which device each process computes on (the processes runtime).

**Status: the CUDA path is written but has never run on a GPU** (it was developed on a machine
without one; issue 8). Its CPU-side logic — option checks, the device plan, moving the problem,
the server's model and the rule's state, the per-worker start-up and the synchronized shared
buffers — runs in the CPU tests through ``device = ["cpu", ...]``, which takes this path with
CPU tensors (``tests/test_devices.py``); the CUDA tests there are skipped without a GPU.

**Forms.** ``"cpu"`` (the default) is the plain runtime, untouched by this module. ``"cuda"``
(= ``cuda:0``, the first visible GPU) or ``"cuda:K"`` puts every process on one GPU: the model,
the rule's state, the gradient slots and the main process's evaluations live there, and every
worker computes there (several worker processes share the GPU, as in PASSM+'s single-GPU runs).
A list ``["cuda:0", "cuda:1", ...]`` gives worker i the device ``list[i mod len(list)]``; the
model and the rule's state live on the first one (the *home* device), so a worker on another GPU
reads the model and writes its gradient across the interconnect.

**Why this multi-GPU design.** One model, one rule state and one version counter on the home
GPU keep the algorithm exactly the one that runs on the CPU (every delay still measured from
versions, one optimizer state as APAM's master keeps it, Xu et al.); the extra cost is one model
read and one gradient write across GPUs per gradient, which for the papers' CNNs (ResNet-20:
0.27M parameters, 1 MB) is small beside a forward and backward pass. The alternatives were
rejected for now: one model per GPU with periodic averaging is another algorithm (local SGD),
and block-sharded servers across GPUs (PASSM+'s concurrent servers, :mod:`.servers`) would put
K more processes on each GPU. Several GPUs work in server mode only; in lock-free mode each
worker differentiates the shared tensors in place, so all of them must be on the model's GPU.
``servers = K ≥ 2`` stays CPU-only.

**Start-up.** Every worker process first calls :func:`device_main`: it selects its GPU, moves
its own data shard there once (``problem.to(device, worker=i)``, :meth:`~asyncopt.problems.base.
Problem.to`), and only then runs the worker loop and says it is ready. The problem is pickled to
the workers from its CPU tensors, as without a device; the model, the rule's state and the
gradient slots are CUDA tensors, which ``torch.multiprocessing`` sends as CUDA IPC handles (spawn
start method; the main process keeps the tensors alive until every worker has stopped).
"""

from __future__ import annotations

import contextlib
import re
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import torch

from asyncopt.errors import ConfigError, check
from asyncopt.problems.base import Problem
from asyncopt.protocols.base import Server

FORMS = "'cpu', 'cuda' or 'cuda:K', or a list of them (worker i on entry i mod its length)"
_DEVICE = re.compile(r"cpu|cuda(:\d+)?")
_local: torch.device | None = None  # the device of this worker process (set by device_main)


@dataclass(frozen=True)
class DevicePlan:
    """Where each process computes: ``home`` holds the model, the rule's state, the gradient
    slots and the main process's evaluations; worker i computes on ``workers[i]``."""

    home: torch.device
    workers: tuple[torch.device, ...]

    @property
    def distinct(self) -> list[torch.device]:
        """The devices in use, home first."""
        return list(dict.fromkeys((self.home, *self.workers)))


def plan_devices(device: Any, num_workers: int, cuda_count: int | None = None
                 ) -> DevicePlan | None:
    """Validate ``runtime_options.device``; None for ``"cpu"`` (the plain runtime), else the
    plan. Refused here, before any process starts: a malformed value, a CUDA device on a
    machine without one (or without that index: ``cuda_count``, default the machine's count),
    and a list that mixes the CPU and GPUs."""
    field = "runtime_options.device"
    names = list(device) if isinstance(device, (list, tuple)) else [device]
    check(len(names) > 0 and all(isinstance(name, str) and _DEVICE.fullmatch(name) is not None
                                 for name in names), field, device, FORMS)
    if device == "cpu":
        return None
    count = cuda_count if cuda_count is not None else (
        torch.cuda.device_count() if torch.cuda.is_available() else 0)
    kinds = {name.partition(":")[0] for name in names}
    check(len(kinds) == 1, field, device, "all 'cpu' or all CUDA devices, not both")
    for name in names:
        index = int(name.partition(":")[2] or 0)
        check(name == "cpu" or index < count, field, device,
              f"'cpu': this machine has {count} CUDA device(s)" + (
                  " (torch.cuda.is_available() is False)" if count == 0 else
                  f", so cuda:0..cuda:{count - 1}"))
    devices = [torch.device("cuda:0" if name == "cuda" else name) for name in names]
    return DevicePlan(devices[0], tuple(devices[i % len(devices)] for i in range(num_workers)))


def check_plan(plan: DevicePlan, device: Any, problem: Problem, *, mode: str,
               servers: int) -> None:
    """Refuse, naming the field, what the device path does not do: block servers, several
    devices in lock-free mode, problems that cannot leave the CPU."""
    check(servers == 1, "runtime_options.servers", servers,
          f"1 with runtime_options.device = {device!r} (the block servers run on the CPU only)")
    check(mode == "server" or len(plan.distinct) == 1, "runtime_options.device", device,
          "one device with mode = 'lockfree' (its workers differentiate the shared model in "
          "place, so they must be on the model's device); several GPUs work in server mode")
    if not problem.movable:
        raise ConfigError("runtime_options.device", device,
                          f"'cpu' for problem {type(problem).__name__}: it keeps its data on "
                          f"the CPU (problems that move: cnn, mlp or logistic with gradient = "
                          f"'autograd', your own model)")


def move(obj: Any, device: torch.device) -> Any:
    """A copy of a params dict or rule state tree (NamedTuples, tuples, lists, dicts) with
    every tensor on ``device``; other leaves as they are."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return type(obj)((key, move(value, device)) for key, value in obj.items())
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(move(value, device) for value in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(move(value, device) for value in obj)
    return obj


def place(plan: DevicePlan | None, server: Server, problem: Problem) -> None:
    """Before the workers start: the server's params and rule state to the home device, and the
    main process's problem there too (its evaluations then run on the GPU)."""
    if plan is not None:
        server.params = move(server.params, plan.home)
        server.state = move(server.state, plan.home)
        problem.to(plan.home)


def restore(plan: DevicePlan | None, server: Server, problem: Problem) -> None:
    """After every worker stopped: params, state and problem back on the CPU, so that the final
    evaluation, the result and the saved model are what a CPU run gives."""
    if plan is not None:
        synchronize(plan.home)
        server.params = move(server.params, torch.device("cpu"))
        server.state = move(server.state, torch.device("cpu"))
        problem.to("cpu")


def synchronize(*devices: torch.device | None) -> None:
    """Wait until every kernel queued on these devices has run (a no-op for the CPU): a GPU
    write is in memory, and visible to other processes, only after this."""
    for device in devices:
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)


def local_device() -> torch.device | None:
    """This worker process's device (None in the main process or without a device plan)."""
    return _local


def device_main(worker: int, conn: Connection, target: Callable[..., None], *args: Any) -> None:
    """Entry point of a worker process on a device: ``args`` ends with the worker's device and
    starts with the problem (the first argument of every worker entry point). Select the device,
    move the worker's shard there once, then run ``target(worker, conn, *args[:-1])``. A failure
    here is reported on the pipe, as the worker loops report theirs."""
    global _local
    *rest, device = args
    try:
        _local = torch.device(device)
        if _local.type == "cuda":
            torch.cuda.set_device(_local)
        rest[0].to(_local, worker=worker)
    except BaseException:
        with contextlib.suppress(OSError):
            conn.send(("error", traceback.format_exc()))
        conn.close()
        return
    target(worker, conn, *rest)


def worker_args(plan: DevicePlan | None, target: Callable[..., None], args: tuple[Any, ...],
                own: Sequence[tuple[Any, ...]] | None, num_workers: int
                ) -> tuple[Callable[..., None], tuple[Any, ...], Sequence[tuple[Any, ...]] | None]:
    """A :class:`~.pool.WorkerPool`'s ``(target, args, own)``, routed through
    :func:`device_main` when there is a plan (unchanged without one)."""
    if plan is None:
        return target, args, own
    return device_main, (target, *args), [
        (*(own[worker] if own else ()), str(plan.workers[worker]))
        for worker in range(num_workers)]
