"""The Ray runtime's shared-memory transport for worker actors on the driver's node.

The object store moves a 4 MB model or gradient in about 5 ms each way (a put, the raylet,
a fetch), several times the cost of a memory copy. A worker actor on the same node as the
driver (same Ray node id) needs none of it: the driver creates one file in ``/dev/shm``
(POSIX shared memory, ``multiprocessing.shared_memory``'s place on Linux) laid out as

    [ the published model: a seqlocked double buffer | one gradient slot per co-located worker ]

with the protocol of the processes runtime (:class:`~asyncopt.runtimes.processes.shared.
SharedModel`, :class:`~asyncopt.runtimes.processes.shared.GradientSlots`: the same code, laid
over this buffer). A job for such a worker carries only its version v: the driver publishes v
(once; the two latest versions are in memory), the worker computes on v's slot *in place* under
the seqlock (:meth:`~asyncopt.runtimes.processes.shared.SharedModel.view_at`, then
:meth:`~asyncopt.runtimes.processes.shared.SharedModel.unchanged`: no copy of the model), writes
its gradient into its slot and returns (loss, compute time). If the driver published two later
versions before or while the worker read v (it lapped the reader), v is gone: the worker throws
its gradient away and says so, and the driver sends the same job again through the object
store, so a gradient is always computed at exactly the version it carries and every delay
stays measured. The slot is read only for the
worker's current job, and Ray runs an actor's tasks one at a time, so the worker never writes
a slot that the driver is reading (the argument of the processes runtime).

Lifetime: the file is created by the driver with a name that carries its pid
(``asyncopt-ray-<pid>-<random>``), reserved with ``posix_fallocate`` (no room is an error now,
not a SIGBUS later) and unlinked by :meth:`Segment.close`, which the runtime calls in a
``finally`` (normal end, error, Ctrl-C, a killed worker: the driver goes on). Only a driver
killed outright cannot unlink: the next driver on the machine removes the files of dead pids.
A restarted actor maps the file again by name. Workers map it themselves (plain ``mmap``, not
``SharedMemory``, whose resource tracker in Python < 3.13 unlinks a segment when any process that
attached to it exits).
"""

from __future__ import annotations

import mmap
import os
import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from asyncopt.runtimes.processes.shared import GradientSlots, SharedModel
from asyncopt.tree import Params

ROOT = Path("/dev/shm")
PREFIX = "asyncopt-ray-"
_ALIGN = 64


@dataclass(frozen=True)
class Spec:
    """What a worker actor needs to map the segment: its name, the driver's node id, the
    model's layout (``shapes``: name -> (shape, dtype)) and the number of gradient slots."""

    name: str
    node: str
    shapes: dict[str, tuple[tuple[int, ...], torch.dtype]]
    slots: int

    def like(self) -> Params:
        return {k: torch.empty(shape, dtype=dtype) for k, (shape, dtype) in self.shapes.items()}


def _grads_offset(like: Params) -> int:
    return -(-SharedModel.nbytes(like) // _ALIGN) * _ALIGN


def size(like: Params, slots: int) -> int:
    """Bytes of a segment for a model like ``like`` and ``slots`` gradient slots."""
    return _grads_offset(like) + slots * sum(v.numel() * v.element_size()
                                             for v in like.values())


class Segment:
    """The mapped segment: :attr:`model` (the published model) and :attr:`grads` (the slots)."""

    def __init__(self, spec: Spec, memory: mmap.mmap, *, create: bool) -> None:
        like = spec.like()
        self.spec, self.path = spec, ROOT / spec.name
        self.model = SharedModel.over(memory, like, create=create)
        self.grads = GradientSlots(like, spec.slots, memory, _grads_offset(like))
        self._owner = create

    @classmethod
    def create(cls, node: str, shapes: dict[str, tuple[tuple[int, ...], torch.dtype]],
               slots: int) -> Segment:
        """A new segment (driver side); OSError when ``/dev/shm`` is missing or has no room."""
        sweep()
        spec = Spec(f"{PREFIX}{os.getpid()}-{secrets.token_hex(6)}", node, shapes, slots)
        nbytes = size(spec.like(), slots)
        fd = os.open(ROOT / spec.name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(fd, 0, nbytes)
            memory = mmap.mmap(fd, nbytes)
        except BaseException:
            os.unlink(ROOT / spec.name)
            raise
        finally:
            os.close(fd)
        return cls(spec, memory, create=True)

    @classmethod
    def attach(cls, spec: Spec) -> Segment:
        """Map the driver's segment (worker side); OSError when it is not there."""
        fd = os.open(ROOT / spec.name, os.O_RDWR)
        try:
            memory = mmap.mmap(fd, size(spec.like(), spec.slots))
        finally:
            os.close(fd)
        return cls(spec, memory, create=False)

    def close(self) -> None:
        """Unlink the file (owner only; idempotent). The memory lives on in the mappings of
        processes still attached and is freed with the last of them."""
        if self._owner:
            self._owner = False
            self.path.unlink(missing_ok=True)


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


class SharedTransport:
    """The driver's side: the segment, which workers use it now (:attr:`shared`), their slots,
    the jobs sent through it (job -> (version, params), kept for a resend through the object
    store) and how many were lapped (:attr:`misses`)."""

    def __init__(self, num_workers: int) -> None:
        self.segment: Segment | None = None
        self.slots: dict[int, int] = {}  # worker on the driver's node -> its gradient slot
        self.shared = [False] * num_workers
        self.jobs: dict[int, tuple[int, Any]] = {}
        self.misses = 0

    def open(self, ray: Any, workers: list[Any], nodes: list[str],
             shapes: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> None:
        """One segment with a gradient slot for each worker on the driver's node, and those
        workers attached to it (a worker that cannot attach, or a machine without ``/dev/shm``
        or room in it, or a model of mixed dtypes, leaves them on the object store)."""
        node = ray.get_runtime_context().get_node_id()
        local = [w for w, where in enumerate(nodes) if where == node]
        if not local or not available() or len({dtype for _, dtype in shapes.values()}) != 1:
            return
        try:
            self.segment = Segment.create(node, shapes, len(local))
        except OSError as error:
            warnings.warn(f"no shared memory for the worker actors on this node ({error}); "
                          f"they use Ray's object store", RuntimeWarning, stacklevel=3)
            return
        self.slots = {w: slot for slot, w in enumerate(local)}
        answers = ray.get([workers[w].connect.remote(self.segment.spec, slot)
                           for w, slot in self.slots.items()])
        for w, attached in zip(self.slots, answers, strict=True):
            self.shared[w] = attached

    def publish(self, version: int, params: Params) -> bool:
        """Make the model of ``version`` readable in shared memory: publish it if it is newer
        than the latest published; answer False for an older one no longer there (a protocol
        that hands out old versions, ``Protocol.model_for``: the object store serves it)."""
        model = self.segment.model
        if version > model.latest:
            model.publish(params, version)
            return True
        return model.holds(version)

    def gradient(self, worker: int) -> torch.Tensor:
        """A private copy of ``worker``'s slot: protocols may keep gradients, and the worker
        writes its slot again at its next job."""
        return self.segment.grads.buffers[self.slots[worker]].clone()

    def probe(self, actor: Any, worker: int) -> Any:
        """The ``ready`` probe of a restarting worker: one with a slot is asked to attach again
        (its answer says whether it did: a restarted actor may land on another node)."""
        slot = self.slots.get(worker)
        return actor.ready.remote() if slot is None else actor.connect.remote(self.segment.spec,
                                                                              slot)

    def close(self) -> None:
        if self.segment is not None:
            self.segment.close()
