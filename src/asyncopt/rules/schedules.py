"""Step-size schedules ``k ↦ α_k`` for :func:`~asyncopt.rules.transforms.scale_by_learning_rate`.

A schedule is any callable ``Schedule = Callable[[int], float]``; ``k = 1, 2, ...`` counts the
steps taken by the block that owns it (dropped gradients are not counted). The step count, not
the wall clock or the delay, is the argument: delay-dependent scaling is the job of
:func:`~asyncopt.rules.delay.scale_by_delay`.

* Gratton & Toint (arXiv:2606.01787) use a constant step with momentum, or the
  diminishing ``α_k = α/√k`` (their analysis writes ``α/(k+1)^½``; ``k`` starts at 1 here).
* APAM's OpenMP code (Xu et al., github.com/RPI-OPT/APAM) uses ``α_k = min(α_0/√k, α_max)``
  with ``α_0 = 10`` and ``α_max = 0.01``.
* Cosine annealing (Loshchilov & Hutter, *SGDR*, ICLR 2017) and a linear warmup before any
  schedule (Goyal et al., *Accurate, large minibatch SGD*, 2017) are the deep-learning defaults;
  both equal torch.optim's schedulers step for step (``CosineAnnealingLR``, ``LinearLR`` in a
  ``SequentialLR``) when ``scheduler.step()`` follows each ``optimizer.step()``: torch's epoch
  ``t = k − 1`` (``tests/test_rules_parity.py``).

Any other ``Callable[[int], float]`` is a schedule too: ``lr=lambda k: 0.1 * 0.99**k``.
"""

from __future__ import annotations

import math

from asyncopt.errors import check_float, check_int
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


def cosine(lr: float, decay_steps: int, final_lr: float = 0.0) -> Schedule:
    """``α_k = final + (lr − final)·(1 + cos(π·min(k − 1, T)/T))/2`` with ``T = decay_steps``.

    From ``lr`` at k = 1 down to ``final_lr`` at k = T + 1, then constant there (torch's
    CosineAnnealingLR with ``T_max = T``, ``eta_min = final_lr`` would climb back up after T).
    """
    start, end = check_float("lr", lr, 0.0), check_float("final_lr", final_lr, 0.0)
    total = check_int("decay_steps", decay_steps, 1)

    def schedule(count: int) -> float:
        progress = min(count - 1, total) / total
        return end + (start - end) * (1 + math.cos(math.pi * progress)) / 2

    return schedule


def linear_warmup(lr: float | Schedule, warmup_steps: int, start_factor: float = 1 / 3,
                  ) -> Schedule:
    """``α_k = α'_1·(s + (1 − s)(k − 1)/W)`` for ``k ≤ W``, then ``α_k = α'_{k−W}``.

    ``α'`` is ``lr`` (a number or a schedule, which starts at its own k = 1 after the warmup),
    ``W = warmup_steps``, ``s = start_factor`` (torch.optim.lr_scheduler.LinearLR's default 1/3):
    torch's ``SequentialLR([LinearLR(s, total_iters=W), after], milestones=[W])``.
    """
    after = lr if callable(lr) else constant(lr)
    steps = check_int("warmup_steps", warmup_steps, 1)
    start = check_float("start_factor", start_factor, 0.0, 1.0)

    def schedule(count: int) -> float:
        if count > steps:
            return after(count - steps)
        return after(1) * (start + (1 - start) * (count - 1) / steps)

    return schedule


SCHEDULES = ("constant", "inverse_sqrt", "capped_inverse_sqrt", "cosine")
"""The schedule names a configuration may use (``rule.schedule``)."""
