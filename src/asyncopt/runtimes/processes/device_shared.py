"""The shared buffers of the processes runtime on a device (a GPU): model, gradient slots, counters.

**Never run on a GPU yet** (issue 8): on the CPU the same classes run in the tests with CPU
tensors, where every :func:`~.device.synchronize` is a no-op.

The protocols are those of :mod:`.shared`; what changes on a GPU is that a copy is a kernel
that runs *later*, on the issuing process's stream, so a counter in CPU memory must not say that
a copy is done before it is. Every write or read that a counter vouches for is therefore
followed by a device synchronization before the counter is bumped or re-read:

    writer (main):   seq[s] += 1 ; copy params into slot s ; synchronize ; seq[s] += 1 ; latest = v
    reader (worker): s = latest mod 2 ; a = seq[s] ; copy slot s ; synchronize ; b = seq[s]
                     whole iff a is even and a == b

The seqlock's header (and the counters) stay in CPU shared memory: the synchronization orders
the GPU copy between the two CPU reads or writes, which is all the seqlock argument of
:mod:`.shared` needs. A worker writes its gradient slot, synchronizes, and only then notifies the
main process, which then reads a slot whose bytes are in memory and synchronizes its own copy
of it before it can give the worker a new job. In lock-free mode a worker synchronizes before
it increments the shared version, so a version that another worker reads counts only updates
that are in memory (each synchronization costs tens of microseconds, against milliseconds per
gradient of the papers' CNNs).

The tensors on a GPU travel to the worker processes as CUDA IPC handles (``torch.
multiprocessing``, spawn start method); the main process owns them and keeps them alive until
every worker has stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from asyncopt import tree
from asyncopt.runtimes.common.shared import GradientSlots, SharedCounters, SharedModel
from asyncopt.runtimes.processes.device import DevicePlan, local_device, synchronize
from asyncopt.tree import Params

_LATEST, _SEQ, _VERSION = 0, 1, 3  # the header of shared.SharedModel


def _zeros(rows: int, size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    buffer = torch.zeros(rows, size, dtype=dtype, device=device)
    return buffer.share_memory_() if device.type == "cpu" else buffer  # CUDA: IPC, no copy


def _shapes(like: Params) -> Params:
    """CPU zeros shaped like ``like``: the layout that flat buffers are cut into (no IPC)."""
    return {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in like.items()}


class DeviceSharedModel(SharedModel):
    """:class:`~.shared.SharedModel` with its two model copies on ``device`` and its header in
    CPU shared memory; reads and writes synchronize before the sequence counter moves on."""

    def __init__(self, like: Params, device: torch.device) -> None:
        self.like = _shapes(like)
        self.device = device
        self.slots = _zeros(2, tree.numel(like), next(iter(like.values())).dtype, device)
        self.header = torch.zeros(5, dtype=torch.int64).share_memory_()
        self.header[_LATEST] = -1
        self._bind()

    def __getstate__(self) -> dict[str, object]:
        return {**super().__getstate__(), "device": self.device}

    def _copied(self, *devices: torch.device) -> None:
        synchronize(self.device, *devices)  # in memory before the counter says it is whole


class DeviceGradientSlots(GradientSlots):
    """:class:`~.shared.GradientSlots` on ``device``; a write is in memory when it returns."""

    def __init__(self, like: Params, num_workers: int, device: torch.device) -> None:
        self.like = _shapes(like)
        self.buffers = _zeros(num_workers, tree.numel(like), next(iter(like.values())).dtype,
                              device)

    def write(self, worker: int, grads: Params) -> None:
        tree.copy_(tree.unflatten(self.buffers[worker], self.like), grads)
        synchronize(self.buffers.device, local_device())  # before the worker notifies

    def take(self, worker: int) -> Params:
        # the copy is done before the main process can send the worker a new job (after which
        # the worker overwrites its slot), also when no publication synchronizes in between
        copy = super().take(worker)
        synchronize(self.buffers.device)
        return copy


class DeviceCounters(SharedCounters):
    """:class:`~.shared.SharedCounters` whose increment first waits for this process's queued
    updates of the shared model (lock-free mode on a device)."""

    def increment(self, then: Callable[[int], None] | None = None) -> int:
        synchronize(local_device())
        return super().increment(then)


def shared_model(plan: DevicePlan | None, like: Params) -> SharedModel:
    return SharedModel(like) if plan is None else DeviceSharedModel(like, plan.home)


def gradient_slots(plan: DevicePlan | None, like: Params, num_workers: int) -> GradientSlots:
    if plan is None:
        return GradientSlots(like, num_workers)
    return DeviceGradientSlots(like, num_workers, plan.home)


def shared_counters(plan: DevicePlan | None, context: Any) -> SharedCounters:
    return SharedCounters(context) if plan is None else DeviceCounters(context)
