"""Shared-memory buffers of the process runtime: the published model, the gradient slots, and the
counters and shared trees of the reporting modes (lock-free, parameter servers).

**The model** lives in one flat ``share_memory_()`` tensor holding two copies (a double buffer)
plus a small int64 header, written only by the main process and read by every worker without a
lock. Version v is written into slot ``v mod 2`` under that slot's *sequence counter* (a seqlock):

    writer (main):   seq[s] += 1 (odd) ; copy params into slot s ; seq[s] += 1 (even) ; latest = v
    reader (worker): v = latest ; s = v mod 2 ; a = seq[s] ; copy slot s ; b = seq[s]
                     the copy is whole iff a is even and a == b, else read again

The writer never waits and a reader retries only when the writer lapped it, i.e. published two
versions while it copied one; the double buffer makes that rare (the slot being read is the one
*not* being written next). Unlike the lock-free reads of APAM's OpenMP code (Xu et al.), a worker
therefore never computes at a torn model, so the version an arrival carries is exact and every
delay the coordinator records is a real staleness. The check relies on stores becoming visible in
program order and loads not being reordered (x86-TSO, where this runs; a weakly ordered CPU
would need fences that Python cannot issue). ``tests/test_processes.py`` checks it under load.

**Gradients** travel through one shared flat slot per worker plus a tiny notification on the
worker's pipe, as in APAM's OpenMP code (which keeps two slots per worker because its workers
run ahead; here a worker waits for its next command, so one slot suffices): the main process
reads a slot only for the worker's *current* job, and the worker overwrites it only after it was
given a newer one, by which time the old job is stale and its slot is never read.

**Counters** (:class:`SharedCounters`): a shared version and a stop flag. :func:`share_tree` moves
a params dict or a rule state to shared memory in place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from asyncopt import tree
from asyncopt.tree import Params

_LATEST, _SEQ, _VERSION = 0, 1, 3  # header: latest version, seq[0..1], version held by slot[0..1]
_COUNT, _STOPPED = 0, 1  # SharedCounters: the shared version, the stop flag


def template(params: Params) -> Params:
    """Zero tensors shaped like ``params``: the layout that flat buffers are cut into."""
    dtypes = {v.dtype for v in params.values()}
    if len(dtypes) != 1:
        raise TypeError(f"the processes runtime needs parameters of one dtype, got {dtypes}")
    return tree.zeros_like(params)


class SharedModel:
    """The server's model in shared memory: one writer (:meth:`publish`), readers (:meth:`read`).

    Pickles to its shared tensors, so a worker process receives the same memory.
    """

    def __init__(self, like: Params) -> None:
        size = tree.numel(like)
        dtype = next(iter(like.values())).dtype
        self.like = like
        self.slots = torch.zeros(2, size, dtype=dtype).share_memory_()
        self.header = torch.zeros(5, dtype=torch.int64).share_memory_()
        self.header[_LATEST] = -1  # nothing published yet
        self._bind()

    def __getstate__(self) -> dict[str, object]:
        return {"like": self.like, "slots": self.slots, "header": self.header}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._bind()

    def _bind(self) -> None:
        # numpy views: scalar reads and writes on them cost ~0.1 µs instead of a torch kernel call
        self._head = self.header.numpy()
        self._views = [tree.unflatten(slot, self.like) for slot in self.slots]

    def publish(self, params: Params, version: int) -> None:
        """Write ``params`` as ``version`` (main process only; versions must increase)."""
        slot, head = version & 1, self._head
        head[_SEQ + slot] += 1
        tree.copy_(self._views[slot], params)
        self._copied()
        head[_VERSION + slot] = version
        head[_SEQ + slot] += 1
        head[_LATEST] = version

    def _copied(self, *devices: torch.device) -> None:
        """Called after each copy into or out of a slot, before the sequence counter is touched
        again: nothing to wait for in CPU memory (a device's copy must be waited for)."""

    @property
    def latest(self) -> int:
        """The latest published version (a read without lock)."""
        return int(self._head[_LATEST])

    def read(self, out: Tensor) -> tuple[int, int]:
        """Copy the latest whole model into the flat tensor ``out``; answer (version, retries)."""
        head, retries = self._head, 0
        while True:
            latest = int(head[_LATEST])
            if latest < 0:
                raise RuntimeError("read before the first publish")
            slot = latest & 1
            before = int(head[_SEQ + slot])
            version = int(head[_VERSION + slot])
            out.copy_(self.slots[slot])
            self._copied(out.device)
            if before % 2 == 0 and int(head[_SEQ + slot]) == before:
                return version, retries
            retries += 1


class GradientSlots:
    """One flat shared gradient buffer per worker (see the module docstring for who writes when)."""

    def __init__(self, like: Params, num_workers: int, memory: Any = None, offset: int = 0,
                 ) -> None:
        """``num_workers`` slots in fresh shared memory, or in the writable buffer ``memory``
        from byte ``offset`` on (the Ray runtime's segment, :mod:`asyncopt.runtimes.ray.shm`,
        whose model slots are such slots too)."""
        dtype, size = next(iter(like.values())).dtype, tree.numel(like)
        self.like = like
        if memory is None:
            self.buffers = torch.zeros(num_workers, size, dtype=dtype).share_memory_()
        else:
            self.buffers = torch.frombuffer(memory, dtype=dtype, count=num_workers * size,
                                            offset=offset).view(num_workers, size)

    def write(self, worker: int, grads: Params) -> None:
        """Worker side: store ``grads`` in the worker's slot."""
        tree.copy_(tree.unflatten(self.buffers[worker], self.like), grads)

    def view(self, worker: int, start: int, like: Params) -> Params:
        """The part of the worker's slot from flat offset ``start`` shaped like ``like`` (no
        copy: for a reader that the worker waits for before it writes its slot again)."""
        return tree.unflatten(self.buffers[worker][start:start + tree.numel(like)], like)

    def take(self, worker: int) -> Params:
        """Main side: a private copy of the worker's slot (protocols may keep gradients)."""
        return tree.unflatten(self.buffers[worker].clone(), self.like)


def share_tree(obj: Any) -> Any:
    """Move every tensor of a params dict or rule state tree (NamedTuples, tuples, dicts) to
    shared memory, in place, and answer ``obj``."""
    if isinstance(obj, torch.Tensor):
        obj.share_memory_()
    elif isinstance(obj, dict):
        for value in obj.values():
            share_tree(value)
    elif isinstance(obj, (tuple, list)):
        for value in obj:
            share_tree(value)
    return obj


class SharedCounters:
    """The shared version counter and stop flag: an int64 tensor in shared memory plus a lock.

    Reads are lock-free (an aligned 8-byte load is atomic on x86). The increment takes the lock:
    ``version += 1`` is a read-modify-write, so two workers incrementing at once without it could
    lose a step and make every later delay wrong; with the lock it costs about a microsecond per
    step, against milliseconds of gradient. (``mp.Value`` would do the same with its own lock,
    but its ``.value`` getter also locks the reads.)
    """

    def __init__(self, context: Any) -> None:
        self.header = torch.zeros(2, dtype=torch.int64).share_memory_()
        self.lock = context.Lock()
        self._view = self.header.numpy()

    def __getstate__(self) -> dict[str, Any]:
        return {"header": self.header, "lock": self.lock}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._view = self.header.numpy()

    @property
    def version(self) -> int:
        return int(self._view[_COUNT])

    def increment(self, then: Callable[[int], None] | None = None) -> int:
        """``version += 1`` atomically; answer the new version. ``then(version)`` runs under the
        same lock (a lock-free worker writes the step's row there: :mod:`.steplog`)."""
        with self.lock:
            self._view[_COUNT] += 1
            version = int(self._view[_COUNT])
            if then is not None:
                then(version)
            return version

    @property
    def stopped(self) -> bool:
        return bool(self._view[_STOPPED])

    def stop(self) -> None:
        self._view[_STOPPED] = 1
