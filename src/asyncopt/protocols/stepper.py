"""The one step path of every mode: a central server, K block servers, lock-free workers.

On a gradient g of worker i computed at model version r (and its loss f):

    δ = version − r                       the delay, from versions, never assumed
    reject if f or g is not finite        a NaN never touches the model or the rule's state
    (u, s) = rule.update(g, s, x; δ, i)   the rule (None: it dropped the gradient)
    x ← x + u                             out of place, or in place (fused where the rule has it)
    version += 1                          on the stepper's counter

A central server (:class:`~asyncopt.protocols.base.Server`) steps **out of place**: each version's
parameters are fresh tensors that are never modified afterwards, so workers still computing at
an older version read an unchanged snapshot. A block server steps its block **in place**, and a
lock-free worker steps the shared model in place with the rule's fused kernel when it has one
(:mod:`asyncopt.rules.fused`), on a counter in shared memory that every worker increments under
one lock (:class:`~asyncopt.runtimes.common.shared.SharedCounters`): one version counter per
model, owned where the model is.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from asyncopt import tree
from asyncopt.rules.base import Rule, apply_updates
from asyncopt.tree import Params


class VersionCounter(Protocol):
    """Where a model's version lives: a plain number, or shared memory."""

    @property
    def version(self) -> int: ...

    def increment(self) -> int: ...


class Counter:
    """A version counter of one process."""

    def __init__(self, version: int = 0) -> None:
        self.version = version

    def increment(self) -> int:
        self.version += 1
        return self.version


def finite(grads: Params, loss: float = 0.0) -> bool:
    """Whether a gradient (and its loss) may be applied: no NaN, no Inf."""
    return math.isfinite(loss) and tree.all_finite(grads)


class Stepper:
    """Parameters, the rule's state and a version counter, stepped by one path."""

    def __init__(self, params: Params, rule: Rule, *, in_place: bool, state: Any = None,
                 counter: VersionCounter | None = None) -> None:
        self.params, self.rule, self.in_place = params, rule, in_place
        self.state = rule.init(params) if state is None else state
        self.counter: VersionCounter = counter if counter is not None else Counter()

    @property
    def version(self) -> int:
        return self.counter.version

    def step(self, grads: Params, *, delay: int, worker: int) -> int | None:
        """Apply one finite gradient; answer the version it made, or None (the version
        unchanged) if the rule dropped it. ``grads`` may cover part of the model (a block): the
        rest is left as it is."""
        if self.in_place and self.rule.step is not None:
            if not self.rule.step(grads, self.state, self.params, delay=delay, worker=worker):
                return None
        else:
            updates, self.state = self.rule.update(grads, self.state, self.params, delay=delay,
                                                   worker=worker)
            if updates is None:
                return None
            if self.in_place:
                apply_updates({k: self.params[k] for k in updates}, updates)
            else:
                self.params = tree.add(self.params, updates)
        return self.counter.increment()

    def arrive(self, grads: Params, loss: float, read: int, worker: int,
               ) -> tuple[str, int, int]:
        """The whole path for a gradient read at version ``read``: its action (``step``,
        ``drop`` or ``reject``), the version after it (the one this step made: others may
        have stepped since) and its delay."""
        delay = self.version - read
        if not finite(grads, loss):
            return "reject", self.version, delay
        version = self.step(grads, delay=delay, worker=worker)
        return ("drop", self.version, delay) if version is None else ("step", version, delay)
