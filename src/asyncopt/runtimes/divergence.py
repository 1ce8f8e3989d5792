"""When a run has diverged: the checks the coordinator makes after arrivals and evaluations.

A run stops with status ``diverged`` when

* an evaluation's loss is not finite. With every parameter finite and none larger than
  ``_HUGE`` (10⁸) in magnitude, the model's forward pass, the loss function or the data made it
  so (an overflow, a log of 0, a NaN in the data), not the step size; otherwise the step size
  did (parameters of 10¹⁹ are finite in float32, but the forward pass overflows on them);
* the loss grew past ``factor`` (10⁶) times its initial value f(x⁰), the first evaluation's
  (a resumed run keeps its own, :mod:`asyncopt.resume`);
* the protocol rejected the last max(100, 10·n) gradients as non-finite (the model diverged), or
  one worker's last 100 while the others' were finite: its data shard or its computation is
  broken, and protocols that wait for every worker (Malenia, Ringleader) would wait forever.

Each check answers the reason to stop, or None.
"""

from __future__ import annotations

import math

from asyncopt.tree import Params

_WORKER_STREAK = 100  # one worker's NaN/Inf gradients in a row that stop the run
_HUGE = 1e8  # a parameter this large in magnitude is the step size's doing, not a trained value


class Divergence:
    """The divergence checks of one run of ``num_workers`` workers."""

    def __init__(self, num_workers: int, factor: float = 1e6) -> None:
        self.num_workers, self.factor = num_workers, factor
        self.initial_loss = math.nan
        """f(x⁰), the growth check's reference (set by the run's first evaluation)."""
        self._consecutive = 0  # rejected gradients in a row, from anyone
        self._streaks: dict[int, int] = {}  # worker -> its rejected gradients in a row (> 0)

    def watches(self, rejected: bool) -> bool:
        """Whether :meth:`arrival` must see this arrival: a rejected one, or any while a streak
        is open (only non-zero streaks are kept, so most arrivals skip it)."""
        return rejected or bool(self._streaks)

    def arrival(self, worker: int, rejected: bool, params: Params) -> str | None:
        """After a gradient of ``worker`` that the protocol ``rejected`` (non-finite) or not."""
        streaks = self._streaks
        if not rejected:
            streaks.pop(worker, None)
            self._consecutive = 0
            return None
        streaks[worker] = streaks.get(worker, 0) + 1
        self._consecutive += 1
        if self._consecutive >= max(100, 10 * self.num_workers):
            return _step_size(f"the last {self._consecutive} gradients were all NaN or Inf")
        if streaks[worker] >= _WORKER_STREAK:
            largest = _largest(params)
            return (f"worker {worker} sent {streaks[worker]} NaN/Inf gradients in a "
                    f"row while the others' were finite: its data shard or the gradient "
                    f"computation on it gives them (an overflow, a log of 0, a NaN in the "
                    f"data); the largest parameter is {largest:.3g} in magnitude: if that is "
                    f"large for this model, the step size (rule.lr) made it so")
        return None

    def evaluation(self, loss: float, params: Params, version: int) -> str | None:
        """After an evaluation at ``version`` whose loss is ``loss``."""
        if not math.isfinite(loss):
            largest = _largest(params)
            if largest <= _HUGE:  # False for inf and nan
                return (f"the loss became {loss} at version {version} although every "
                        f"parameter is finite: the model's forward pass, the loss function or "
                        f"the data gives it (an overflow, a log of 0, a NaN in the data), not "
                        f"only the step size; check them at this model (result.params)")
            size = f" (a parameter is {largest:.3g} in magnitude)" if math.isfinite(largest) else ""
            return _step_size(f"the loss became {loss} at version {version}{size}")
        if loss > self.factor * max(abs(self.initial_loss), 1e-12):
            return _step_size(f"the loss grew to {loss:.4g}, more than {self.factor:g}× its "
                              f"initial value {self.initial_loss:.4g}")
        return None


def _step_size(why: str) -> str:
    """The model itself stopped being finite or exploded: a step-size matter."""
    return f"{why}; lower the step size (rule.lr)"


def _largest(params: Params) -> float:
    """The largest parameter's magnitude: inf where one is infinite, nan where one is nan
    (Python's ``max`` would drop a nan that is not first)."""
    magnitudes = [float(v.abs().max()) for v in params.values() if v.numel()]
    return math.nan if any(map(math.isnan, magnitudes)) else max(magnitudes, default=0.0)
