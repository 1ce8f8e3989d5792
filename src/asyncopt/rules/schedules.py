"""Step-size schedules ``k ↦ α_k`` for :func:`~asyncopt.rules.transforms.scale_by_learning_rate`.

A schedule is any callable ``Schedule = Callable[[int], float]``; ``k = 1, 2, ...`` counts the
steps taken by the block that owns it (dropped gradients are not counted). The step count, not
the wall clock or the delay, is the argument: delay-dependent scaling is the job of
:func:`~asyncopt.rules.delay.scale_by_delay`.

* Gratton & Toint (algorithms.md, paper 1) use a constant step with momentum, or the
  diminishing ``α_k = α/√k`` (their analysis writes ``α/(k+1)^½``; ``k`` starts at 1 here).
* APAM's OpenMP code (Xu et al., github.com/RPI-OPT/APAM) uses ``α_k = min(α_0/√k, α_max)``
  with ``α_0 = 10`` and ``α_max = 0.01``.
"""

from __future__ import annotations

import math

from asyncopt.rules.base import Schedule


def constant(lr: float) -> Schedule:
    """``α_k = lr``."""
    value = float(lr)

    def schedule(count: int) -> float:
        return value

    return schedule


def inverse_sqrt(lr0: float) -> Schedule:
    """``α_k = lr0 / √k`` (Gratton–Toint's diminishing step)."""
    value = float(lr0)

    def schedule(count: int) -> float:
        return value / math.sqrt(count)

    return schedule


def capped_inverse_sqrt(lr0: float, lr_max: float) -> Schedule:
    """``α_k = min(lr0 / √k, lr_max)`` (APAM OpenMP code: lr0 = 10, lr_max = 0.01)."""
    start, cap = float(lr0), float(lr_max)

    def schedule(count: int) -> float:
        return min(start / math.sqrt(count), cap)

    return schedule


SCHEDULES = ("constant", "inverse_sqrt", "capped_inverse_sqrt")
"""The schedule names a configuration may use (``rule.schedule``)."""
