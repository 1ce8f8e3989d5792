"""Emulated worker speeds in the real runtimes: a gradient lasts at least what the speed model says.

The simulator's speed model (:mod:`asyncopt.runtimes.sim.speed`) gives worker i's compute time
τ_i(now) in model units. The real runtimes (processes, Ray) reproduce it on one machine by
*padding*: a gradient whose computation began at wall time ``start`` is handed over no earlier
than

    start + time_scale × τ_i(now)

so that with ``time_scale`` larger than the measured gradient time the workers keep the speed
model's ratios exactly (``factors = [3, 1]``: worker 0 is three times slower), and with
``time_scale = 0`` they run at the machine's own speed. ``now`` is the runtime's clock when the
job started, so time-varying speed models (slowdowns, stragglers) apply in real time as in the
simulator. This is the one place that computes it; each runtime only decides how to wait (a
process worker waits on its pipe so that a stop interrupts the wait, a Ray actor sleeps). A
cancel does not: an emulated slow machine finishes its gradient as a real one would.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class Padding:
    """Worker ``worker``'s emulated compute time under ``speed`` at ``time_scale`` wall seconds
    per model unit."""

    def __init__(self, speed: Any, worker: int, time_scale: float) -> None:
        self.speed, self.worker, self.time_scale = speed, worker, time_scale

    def rest(self, start: float, now: float) -> float:
        """Wall seconds still to wait for a gradient begun at ``start`` (``time.perf_counter``)
        at runtime time ``now``; 0 without padding or once it has lasted long enough."""
        if self.time_scale <= 0.0:
            return 0.0
        target = self.time_scale * self.speed.compute_time(self.worker, now)
        return max(0.0, target - (time.perf_counter() - start))

    def wait(self, start: float, now: float,
             interrupted: Callable[[float], bool] | None = None) -> bool:
        """Wait out :meth:`rest`; ``interrupted(seconds)`` waits at most that long and answers
        whether something cut the wait short (default: sleep, never interrupted). Answers
        whether the wait ran to its end."""
        rest = self.rest(start, now)
        if rest <= 0.0:
            return True
        if interrupted is None:
            time.sleep(rest)
            return True
        return not interrupted(rest)
