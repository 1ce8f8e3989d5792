"""The Ray runtime's shared-memory transport for worker actors on the driver's node.

The object store moves a 4 MB model or gradient in about 5 ms each way (a put, the raylet,
a fetch), many times the cost of a memory copy. A worker actor on the same node as the driver
(same Ray node id) needs none of it: the driver creates one file in ``/dev/shm`` (POSIX shared
memory, ``multiprocessing.shared_memory``'s place on Linux) laid out as

    [ one model slot per co-located worker | one gradient slot per co-located worker ]

both the processes runtime's one-flat-buffer-per-worker slots
(:class:`~asyncopt.runtimes.common.shared.GradientSlots`, laid over this buffer). A job is

    driver:  copy x_v into worker i's model slot ; submit compute_shared(v)   (a few bytes)
    worker:  g = ∇f_i(x_v) computed on its model slot in place ; write g into its gradient slot ;
             return (None, v, loss, time)
    driver:  on that return, copy worker i's gradient slot (protocols may keep gradients)

Why one model slot per worker rather than the processes runtime's seqlocked double buffer of
the latest model (:class:`~asyncopt.runtimes.common.shared.SharedModel`): a Ray job names its
version, and with ASGD and n workers the two latest versions are overwritten while a worker
computes whenever n ≥ 3 or its speed differs (a straggler always); the worker would have to copy
the model out first (a copy per gradient, and still a retry through the object store when it
is lapped during the copy). A worker's own slot is written by the driver only when it hands
that worker a job, and Ray runs an actor's tasks one at a time, so the job that reads it is the
one it was written for: the gradient is computed at exactly version v with no copy on the worker
and no retry, and every delay stays measured from versions. The one exception is harmless: a
*cancelled* job still running when the driver hands the worker its next job may read a model
being overwritten; its gradient is never read (the driver reads a gradient slot only for the
worker's current job). The price: a protocol that starts k workers at one version costs k
copies on the driver instead of one put.

Lifetime: the file is created by the driver with a name that carries its pid
(``asyncopt-ray-<pid>-<random>``), reserved with ``posix_fallocate`` (no room is an error now,
not a SIGBUS later) and unlinked by :meth:`SharedTransport.close`, which the runtime calls in a
``finally`` (normal end, error, Ctrl-C, a killed worker: the driver goes on). Only a driver
killed outright cannot unlink: the next driver on the machine removes the files of dead pids.
A restarted actor maps the file again by name. Workers map it themselves (plain ``mmap``, not
``SharedMemory``, whose resource tracker in Python < 3.13 unlinks a segment when any process that
attached to it exits).
"""

from __future__ import annotations

import logging
import mmap
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from asyncopt.runtimes.common.shared import GradientSlots
from asyncopt.tree import Params

log = logging.getLogger(__name__)

ROOT = Path("/dev/shm")
PREFIX = "asyncopt-ray-"
_ALIGN = 64


@dataclass(frozen=True)
class Spec:
    """What a worker actor needs to map the segment: its name, the driver's node id, the
    model's layout (``shapes``: name -> (shape, dtype)) and the number of slots of each kind."""

    name: str
    node: str
    shapes: dict[str, tuple[tuple[int, ...], torch.dtype]]
    slots: int

    def like(self) -> Params:
        return {k: torch.empty(shape, dtype=dtype) for k, (shape, dtype) in self.shapes.items()}

    def region(self) -> int:
        """Bytes of the model slots, rounded up to a cache line: where the gradients start."""
        nbytes = self.slots * sum(v.numel() * v.element_size() for v in self.like().values())
        return -(-nbytes // _ALIGN) * _ALIGN

    def size(self) -> int:
        return 2 * self.region()


class Segment:
    """The mapped segment: :attr:`models` and :attr:`grads`, one slot per co-located worker."""

    def __init__(self, spec: Spec, memory: mmap.mmap, *, owner: bool) -> None:
        like = spec.like()
        self.spec, self.path, self._owner = spec, ROOT / spec.name, owner
        self.models = GradientSlots(like, spec.slots, memory, 0)
        self.grads = GradientSlots(like, spec.slots, memory, spec.region())

    @classmethod
    def create(cls, node: str, shapes: dict[str, tuple[tuple[int, ...], torch.dtype]],
               slots: int) -> Segment:
        """A new segment (driver side); OSError when ``/dev/shm`` is missing or has no room."""
        sweep()
        spec = Spec(f"{PREFIX}{os.getpid()}-{secrets.token_hex(6)}", node, shapes, slots)
        fd = os.open(ROOT / spec.name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(fd, 0, spec.size())
            memory = mmap.mmap(fd, spec.size())
        except BaseException:
            os.unlink(ROOT / spec.name)
            raise
        finally:
            os.close(fd)
        return cls(spec, memory, owner=True)

    @classmethod
    def attach(cls, spec: Spec) -> Segment:
        """Map the driver's segment (worker side); OSError when it is not there."""
        fd = os.open(ROOT / spec.name, os.O_RDWR)
        try:
            memory = mmap.mmap(fd, spec.size())
        finally:
            os.close(fd)
        return cls(spec, memory, owner=False)

    def close(self) -> None:
        """Unlink the file (owner only; idempotent). The memory lives on in the mappings of
        processes still attached and is freed with the last of them."""
        if self._owner:
            self._owner = False
            self.path.unlink(missing_ok=True)


class SharedTransport:
    """The driver's side: the segment, which workers use it now (:attr:`shared`) and their
    slots."""

    def __init__(self, num_workers: int) -> None:
        self.segment: Segment | None = None
        self.slots: dict[int, int] = {}  # worker on the driver's node -> its slots
        self.shared = [False] * num_workers

    def open(self, ray: Any, workers: list[Any], nodes: list[str],
             shapes: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> None:
        """One segment with slots for each worker on the driver's node, and those workers
        attached to it (a worker that cannot attach, or a machine without ``/dev/shm`` or room
        in it, or a model of mixed dtypes, leaves them on the object store)."""
        node = ray.get_runtime_context().get_node_id()
        local = [w for w, where in enumerate(nodes) if where == node]
        if not local or not available() or len({dtype for _, dtype in shapes.values()}) != 1:
            return
        try:
            self.segment = Segment.create(node, shapes, len(local))
        except OSError as error:
            log.warning("no shared memory for the worker actors on this node (%s); they use "
                        "Ray's object store", error)
            return
        self.slots = {w: slot for slot, w in enumerate(local)}
        answers = ray.get([workers[w].connect.remote(self.segment.spec, slot)
                           for w, slot in self.slots.items()])
        for w, attached in zip(self.slots, answers, strict=True):
            self.shared[w] = attached

    def send(self, worker: int, params: Params) -> None:
        """Write the model of ``worker``'s next job into its model slot."""
        self.segment.models.write(self.slots[worker], params)

    def gradient(self, worker: int) -> torch.Tensor:
        """A private copy of ``worker``'s gradient slot: protocols may keep gradients, and the
        worker writes its slot again at its next job."""
        return self.segment.grads.buffers[self.slots[worker]].clone()

    def probe(self, actor: Any, worker: int, problem: Any) -> Any:
        """The ``ready`` probe of a restarting worker, which hands it ``problem`` (an object
        ref) again: one with slots is asked to attach again (its answer says whether it did: a
        restarted actor may land on another node)."""
        slot = self.slots.get(worker)
        if slot is None:
            return actor.ready.remote(problem)
        return actor.connect.remote(self.segment.spec, slot, problem)

    def close(self) -> None:
        if self.segment is not None:
            self.segment.close()


def sweep() -> list[str]:
    """Unlink the segments of drivers that no longer run (killed before their ``finally``);
    answer their names. A pid reused since is taken as alive: its file stays."""
    removed = []
    for path in ROOT.glob(PREFIX + "*"):
        pid = path.name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def available() -> bool:
    """Whether this machine has POSIX shared memory at ``/dev/shm`` (Linux)."""
    return ROOT.is_dir() and os.access(ROOT, os.W_OK)
