"""The worker processes of both modes: start-up, commands, events, deaths, shutdown.

A :class:`WorkerPool` starts one daemon process per worker, running ``target(worker, conn,
*args)`` (``torch.multiprocessing``, spawn by default: forking a process that already runs torch
threads is unsafe) with a duplex pipe each.
The problem is pickled to every worker once, at start-up; its tensors travel through shared
memory, not through the pipe. Every blocking call has a timeout, and :meth:`close` always leaves
no process behind: STOP, join, then terminate, then kill.

Deaths are detected through the process *sentinels*: :meth:`events` waits on every live worker's
pipe and sentinel at once (``multiprocessing.connection.wait``), so a worker killed by SIGKILL is
reported as a ``dead`` event within one wait, and a closed pipe counts as a death too.
"""

from __future__ import annotations

import io
import pickle
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

import torch.multiprocessing as mp
from torch import Tensor

from asyncopt.errors import ConfigError
from asyncopt.problems.base import Problem
from asyncopt.problems.user import check_portable
from asyncopt.runtimes.processes.device import DevicePlan, worker_args
from asyncopt.runtimes.processes.worker import STOP

_JOIN_TIMEOUT = 2.0  # seconds a stopped worker gets to exit before it is terminated

Message = tuple[int, str, tuple[Any, ...]]
"""(worker, kind, payload): kind the worker's message (``"grad"``, ``"steps"``, ``"idle"``,
``"error"``), or ``"dead"``."""


def check_picklable(problem: Problem) -> None:
    """Refuse a problem that cannot be sent to a worker process, naming what to pass instead:
    first the user's model, loss and metrics by name, then anything else in the problem."""
    check_portable(problem, "processes")

    class _NoTensors(pickle.Pickler):
        def persistent_id(self, obj: object) -> str | None:  # tensors go by shared memory
            return "tensor" if isinstance(obj, Tensor) else None

    try:
        _NoTensors(io.BytesIO(), protocol=pickle.HIGHEST_PROTOCOL).dump(problem)
    except (pickle.PicklingError, AttributeError, TypeError) as error:
        raise ConfigError(
            "problem", type(problem).__name__,
            f"a picklable problem for runtime = 'processes' (it is sent to each worker process; "
            f"pickling failed: {error}). Build it from module-level classes and functions — no "
            f"lambdas or local functions, e.g. a model factory defined at module level or a "
            f"functools.partial of one") from error


class WorkerPool:
    """``num_workers`` worker processes, their pipes, and whether each is still alive."""

    def __init__(self, num_workers: int, target: Callable[..., None], args: tuple[Any, ...], *,
                 start_method: str, own: Sequence[tuple[Any, ...]] | None = None,
                 role: str = "worker", devices: DevicePlan | None = None) -> None:
        """``own[i]``: extra arguments for process i only (after ``args``); ``role`` names the
        processes (``asyncopt-worker-0``, ``asyncopt-server-0``, ...); ``devices``: each
        process first moves to its device (:func:`.device.device_main`)."""
        context = mp.get_context(start_method)
        target, args, own = worker_args(devices, target, args, own, num_workers)
        self.num_workers = num_workers
        self.processes: list[Any] = []
        self.conns: list[Connection] = []
        self.alive = [False] * self.num_workers
        try:
            for worker in range(self.num_workers):
                ours, theirs = context.Pipe(duplex=True)
                process = context.Process(
                    target=target, name=f"asyncopt-{role}-{worker}", daemon=True,
                    args=(worker, theirs, *args, *(own[worker] if own else ())))
                try:
                    process.start()
                finally:
                    theirs.close()  # the child has its own copy; ours would hide its death (EOF)
                self.processes.append(process)
                self.conns.append(ours)
                self.alive[worker] = True
        except BaseException:
            self.close()
            raise

    def wait_ready(self, timeout: float) -> None:
        """Block until every worker has started (imports, unpickling), or raise."""
        deadline = time.monotonic() + timeout
        waiting = set(range(self.num_workers))
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"worker processes {sorted(waiting)} did not start within "
                                   f"{timeout:g} s (runtime_options.startup_timeout)")
            for worker, kind, payload in self._poll(waiting, min(left, 1.0)):
                if kind == "ready":
                    waiting.discard(worker)
                else:
                    raise RuntimeError(f"worker process {worker} failed to start: "
                                       f"{_describe(self, worker, kind, payload)}")

    def send(self, worker: int, job: int, now: float) -> bool:
        """Send a command; answer False if the worker is dead (its pipe is closed)."""
        if not self.alive[worker]:
            return False
        try:
            self.conns[worker].send((job, now))
        except OSError:
            return False
        return True

    def events(self, timeout: float) -> list[Message]:
        """Messages and deaths of live workers, waiting at most ``timeout`` seconds for one."""
        return self._poll([w for w in range(self.num_workers) if self.alive[w]], timeout)

    def mark_dead(self, worker: int) -> int | None:
        """Forget a dead worker; answer its exit code (None if it is somehow still running)."""
        self.alive[worker] = False
        process = self.processes[worker]
        process.join(timeout=_JOIN_TIMEOUT)
        return process.exitcode

    def close(self) -> None:
        """Stop every worker: STOP, join with a timeout, then terminate, then kill."""
        for worker in range(len(self.processes)):
            self.send(worker, STOP, 0.0)
        deadline = time.monotonic() + _JOIN_TIMEOUT
        for process in self.processes:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
        for stop in ("terminate", "kill"):
            for process in self.processes:
                if process.is_alive():
                    getattr(process, stop)()
                    process.join(timeout=_JOIN_TIMEOUT)
        for worker, conn in enumerate(self.conns):
            conn.close()
            self.alive[worker] = False

    def _poll(self, workers: Any, timeout: float) -> list[Message]:
        by_object: dict[Any, tuple[int, bool]] = {}
        for worker in workers:
            by_object[self.conns[worker]] = (worker, True)
            by_object[self.processes[worker].sentinel] = (worker, False)
        events: list[Message] = []
        dead: set[int] = set()
        for ready in wait(list(by_object), timeout):
            worker, is_pipe = by_object[ready]
            if not is_pipe:
                dead.add(worker)  # its last message, if any, was read through its pipe below
                continue
            try:
                message = self.conns[worker].recv()
            except (EOFError, OSError):
                dead.add(worker)
                continue
            events.append((worker, message[0], tuple(message[1:])))
        events.extend((worker, "dead", ()) for worker in sorted(dead))
        return events


def _describe(pool: WorkerPool, worker: int, kind: str, payload: tuple[Any, ...]) -> str:
    if kind == "error":
        return f"it raised\n{payload[0]}"
    code = pool.mark_dead(worker)
    return (f"it exited with code {code} (its traceback, if any, is on stderr). With the spawn "
            f"start method a script must call train/run under `if __name__ == '__main__':`, "
            f"and the problem's class must be importable by the worker (not defined in an "
            f"interactive session)")
