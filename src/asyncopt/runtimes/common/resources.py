"""What a run needs of the machine, refused before anything starts when it cannot fit.

Two limits, checked by every runtime before it starts a process or writes a file:

* **CPUs.** Worker processes beyond a few per core only queue for the CPU (and each costs its
  memory), so more than :data:`PROCESSES_PER_CPU` per CPU *this process may use* is refused
  unless ``runtime_options.oversubscribe = true``. The CPUs are those of the process's affinity
  mask (``os.sched_getaffinity``) capped by its cgroup's quota (its ``cpu.max`` under
  ``/sys/fs/cgroup``), not the host's count: a container or ``taskset`` gets what it was given.
* **Memory.** An estimate of what the run will allocate once started: model copies (snapshots
  of work in flight, gradients), the protocol's tables and buffers
  (:meth:`~asyncopt.protocols.base.Protocol.held_models`, e.g. Malenia's n × d table), the
  minibatches being computed (:meth:`~asyncopt.problems.base.Problem.sample_bytes`), each worker
  process's own copy of its data and of torch, and the shared-memory segments (``/dev/shm``).
  What is already allocated (the problem's data, the model, the rule's state) is not counted
  again: ``MemAvailable`` already lacks it. The estimate leaves out what it cannot know, so it
  refuses only runs that surely cannot fit; its message gives the estimate, its largest part
  and the limit.

A runtime says what it will hold by a :class:`Footprint` on its event source (``footprint``,
set by its ``build``); :func:`check_memory` prices it.
"""

from __future__ import annotations

import io
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncopt.errors import ConfigError
from asyncopt.problems.base import Problem
from asyncopt.protocols.base import Protocol

PROCESSES_PER_CPU = 4
PROCESS_BYTES = 100 * 2**20
"""Private memory of one worker process with Python and torch imported, before any data."""
CGROUP_CPU = Path("/sys/fs/cgroup/cpu.max")
MEMINFO = Path("/proc/meminfo")
SHM = Path("/dev/shm")


@dataclass(frozen=True)
class Footprint:
    """What a runtime will hold once started, in counts the estimate prices.

    ``computing``: gradients computed at once in this process (the simulator's batch);
    ``snapshots``: model copies kept here by work in flight; ``processes``: worker processes,
    each with torch, its own data (:meth:`Problem.worker_data_bytes`), a model copy and a
    gradient; ``servers``: block-server processes (each with torch and a block);
    ``shared_models``: model-sized buffers in ``/dev/shm`` (shared model, gradient slots);
    ``shared_state``: the rule's state moves to ``/dev/shm`` too (lock-free workers);
    ``problem_copies``: pickled copies of the problem (its data included) made here beyond the
    one that exists: Ray's object store holds one, and each Ray actor unpickles its own."""

    computing: int = 1
    snapshots: int = 0
    processes: int = 0
    servers: int = 0
    shared_models: int = 0
    shared_state: bool = False
    problem_copies: int = 0


@dataclass(frozen=True)
class Need:
    """One part of the estimate: what, how many bytes, and the field that drives it."""

    what: str
    bytes: int
    field: str
    value: Any
    shared: bool = False  # in /dev/shm


def available_cpus() -> tuple[int, str]:
    """The CPUs this process may use, and where that number comes from."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    source = f"{count} in its CPU affinity"
    path = cpu_max_file()
    quota = cgroup_quota(path)
    if quota is not None and quota < count:
        count, source = quota, f"its cgroup quota of {quota} ({path})"
    return count, source


def cpu_max_file() -> Path:
    """The ``cpu.max`` of this process's own cgroup (v2, from ``/proc/self/cgroup``), else the
    root one (inside a container, the container's)."""
    try:
        group = Path("/proc/self/cgroup").read_text().split("::", 1)[1].strip()
    except (OSError, IndexError):
        return CGROUP_CPU
    own = CGROUP_CPU.parent / group.lstrip("/") / "cpu.max"
    return own if own.is_file() else CGROUP_CPU


def cgroup_quota(path: Path) -> int | None:
    """A cgroup's ``cpu.max`` as whole CPUs (rounded up), or None without a quota."""
    try:
        quota, period = path.read_text().split()[:2]
        if quota == "max":
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError, ZeroDivisionError):
        return None


def check_cpus(processes: int, *, oversubscribe: bool, field: str = "workers",
               value: Any = None, what: str = "worker processes") -> None:
    """Refuse more than :data:`PROCESSES_PER_CPU` processes per available CPU, unless
    ``oversubscribe``."""
    if oversubscribe:
        return
    cpus, source = available_cpus()
    limit = PROCESSES_PER_CPU * cpus
    if processes > limit:
        raise ConfigError(field, processes if value is None else value,
                          f"at most {limit} {what} ({PROCESSES_PER_CPU} per CPU; this process "
                          f"may use {cpus} CPU(s): {source}), or runtime_options.oversubscribe"
                          f" = true to run {processes} anyway")


def available_memory() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes, or None where there is none."""
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def shm_free() -> int | None:
    """Bytes free in ``/dev/shm`` (statvfs), or None where there is none."""
    try:
        stat = os.statvfs(SHM)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def estimate(problem: Problem, protocol: Protocol, footprint: Footprint) -> list[Need]:
    """The parts of what the run will allocate once started (see the module docstring)."""
    server = protocol.server
    model = sum(t.numel() * t.element_size() for t in server.params.values())
    state = held_bytes(server.state)
    workers = problem.num_workers
    batch = int(getattr(problem, "batch_size", 1) or 1)
    sample = problem.sample_bytes()
    needs = [
        Need("model snapshots of work in flight", footprint.snapshots * model, "workers",
             workers),
        Need(f"the protocol's tables and buffers ({protocol.name})",
             protocol.held_models() * model, protocol.held_field,
             workers if protocol.held_field == "workers" else protocol.held_models()),
        Need("minibatches being computed", footprint.computing * batch * sample,
             "problem.batch_size", batch),
        Need("worker processes (torch, data, model, gradient, minibatch)",
             footprint.processes * (PROCESS_BYTES + problem.worker_data_bytes() + 3 * model
                                    + batch * sample), "workers", workers),
        Need("block-server processes", footprint.servers * (PROCESS_BYTES + 2 * model),
             "runtime_options.servers", footprint.servers),
        Need("copies of the problem and its data (Ray's object store and actors)",
             footprint.problem_copies * pickled_bytes(problem) if footprint.problem_copies
             else 0, "workers", workers),
        Need("shared memory (model, gradient slots)", footprint.shared_models * model
             + (state if footprint.shared_state else 0), "workers", workers, shared=True),
    ]
    return [need for need in needs if need.bytes > 0]


def check_memory(problem: Problem, protocol: Protocol, footprint: Footprint | None) -> None:
    """Refuse a run whose estimate exceeds the available memory, or whose shared part
    exceeds the free ``/dev/shm``, naming the largest part's field."""
    needs = estimate(problem, protocol, footprint or Footprint())
    shared = [need for need in needs if need.shared]
    free = shm_free()
    if shared and free is not None and sum(n.bytes for n in shared) > free:
        _refuse(shared, free, f"free in {SHM}")
    available = available_memory()
    if available is not None and sum(n.bytes for n in needs) > available:
        _refuse(needs, available, "available (MemAvailable in /proc/meminfo)")


def held_bytes(obj: Any) -> int:
    """Bytes of the tensors in ``obj`` (nested dicts, lists and tuples), each storage once."""
    import torch

    seen: set[int] = set()
    total = 0
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return total


def pickled_bytes(obj: Any) -> int:
    """The size of ``obj`` pickled (as Ray ships it, by cloudpickle where a plain pickle
    cannot), counted without keeping the bytes; 0 where it cannot be pickled (then the run
    fails later, with Ray's own message)."""

    class Counter(io.RawIOBase):
        count = 0

        def write(self, data: Any) -> int:
            length = memoryview(data).nbytes
            self.count += length
            return length

    sink = Counter()
    try:
        pickle.dump(obj, sink, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, AttributeError, TypeError):
        try:
            from ray import cloudpickle
        except ImportError:
            return 0
        sink = Counter()
        try:
            cloudpickle.dump(obj, sink, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # whatever stops it pickling: not priced here
            return 0
    return sink.count


def size(count: float) -> str:
    """``1.5 GiB``: bytes for a message."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def _refuse(needs: list[Need], limit: int, where: str) -> None:
    largest = max(needs, key=lambda need: need.bytes)
    parts = ", ".join(f"{need.what} {size(need.bytes)}"
                      for need in sorted(needs, key=lambda need: -need.bytes))
    raise ConfigError(largest.field, largest.value,
                      f"a run that fits in memory: it would need about "
                      f"{size(sum(n.bytes for n in needs))} ({parts}), more than the "
                      f"{size(limit)} {where}; lower {largest.field}")
