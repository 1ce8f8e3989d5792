"""The rule interface: an optax-style ``init``/``update`` pair, and ``chain`` to compose them.

A **rule** answers one question: how does a (possibly stale) gradient become a step?

    state            = rule.init(params)
    updates, state   = rule.update(grads, state, params, delay=δ, worker=i)
    params          += updates                       (apply_updates)

``delay`` δ is the number of server versions applied since the gradient's model was read, and
``worker`` is the index of the worker whose arrival triggered the step; both are keyword-only so
that delay-aware blocks (``scale_by_delay``, ``drop_if_stale``) and per-worker blocks can use them
while every other block ignores them.

Conventions, shared by every block:

* ``updates`` are *added* to the parameters (so sgd is ``scale_by_learning_rate(lr)``, which
  multiplies by ``-lr``);
* the state of a block is a ``NamedTuple`` of tensors. Blocks update their state tensors **in
  place** and return the same object: this is what lets the shared-memory runtime keep one
  optimizer state (one step counter) for all processes. Callers must treat the state they passed
  in as consumed;
* blocks never modify ``grads`` or ``params``; they return fresh update tensors;
* a block may answer ``None`` instead of updates: the gradient is dropped, no step is taken, and
  ``chain`` stops there, so the state of the blocks after it is untouched. Put gating blocks
  (``drop_if_stale``) first in a chain.

A rule may also carry a **fused step** (``rule.step``, :mod:`asyncopt.rules.fused`): the same
step done in place, ``params`` and state together, in one pass where torch has a fused kernel.
Lock-free workers use it when it is there; ``tests/test_rules_fused.py`` holds every fused step
to its rule's ``update`` + :func:`apply_updates`.

A rule that must be stepped by one central server owning the whole model and the rule's state
says so with ``rule.needs_central_server`` (:func:`~asyncopt.rules.torch_optim.from_torch`: a
live ``torch.optim`` object steps a private copy of the model); lock-free workers (several
processes stepping one shared state) and block servers (the model cut into blocks, each with its
own state) refuse it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor

from asyncopt.errors import ConfigError
from asyncopt.tree import Params

State = Any
Schedule = Callable[[int], float]
"""A step-size schedule: maps the step count k = 1, 2, ... to a step size."""


class UpdateFn(Protocol):
    def __call__(
        self, grads: Params, state: State, params: Params, *, delay: int, worker: int
    ) -> tuple[Params | None, State]: ...


class StepFn(Protocol):
    def __call__(
        self, grads: Params, state: State, params: Params, *, delay: int, worker: int
    ) -> bool: ...


class Rule(NamedTuple):
    """A gradient transformation: ``init(params) -> state`` and ``update(...)``; optionally
    ``step(...)``, which does ``update`` then :func:`apply_updates` in place and answers
    whether it stepped (False: dropped). A :func:`chain` has no ``step`` of its own."""

    init: Callable[[Params], State]
    update: UpdateFn
    step: StepFn | None = None
    needs_central_server: bool = False
    """True when only one central server holding the whole model can run ``update`` (its state
    is more than the tensors of ``state``, e.g. a live torch.optim object): lock-free workers
    and block servers cannot. A chain needs it when one of its blocks does."""


class EmptyState(NamedTuple):
    pass


class ChainState(NamedTuple):
    states: tuple[State, ...]


def chain(*rules: Rule) -> Rule:
    """Compose rules left to right: the updates of one are the gradients of the next.

    If a block drops the gradient (answers ``None``), the chain answers ``None`` and the blocks
    after it are not called. A chain of one block is that block (one call less per step).
    """
    rules = tuple(as_rule(rule, f"chain argument {i}") for i, rule in enumerate(rules))
    if len(rules) == 1:
        return rules[0]

    def init(params: Params) -> ChainState:
        return ChainState(tuple(rule.init(params) for rule in rules))

    def update(
        grads: Params, state: ChainState, params: Params, *, delay: int, worker: int
    ) -> tuple[Params | None, ChainState]:
        new_states = list(state.states)
        updates: Params | None = grads
        for index, rule in enumerate(rules):
            updates, new_states[index] = rule.update(
                updates, state.states[index], params, delay=delay, worker=worker
            )
            if updates is None:
                break
        return updates, ChainState(tuple(new_states))

    return Rule(init, update,
                needs_central_server=any(rule.needs_central_server for rule in rules))


def as_rule(value: Any, field: str = "rule") -> Rule:
    """``value`` if it is a :class:`Rule`; otherwise a ConfigError saying what to pass instead
    (for a torch.optim optimizer, class or instance: :func:`~.torch_optim.from_torch`)."""
    if isinstance(value, Rule):
        return value
    optimizer = value if isinstance(value, type) else type(value)
    if issubclass(optimizer, torch.optim.Optimizer):
        public = optimizer.__module__.startswith("torch.optim.")  # torch.optim.adamw.AdamW
        name = ("torch.optim" if public else optimizer.__module__) + "." + optimizer.__qualname__
        raise ConfigError(field, name, f"a rule: asyncopt.rules.from_torch({name}, lr=...) runs "
                          f"this torch optimizer (its class and its options) as one, or take "
                          f"a built-in rule such as asyncopt.rules.adamw(lr=...)")
    raise ConfigError(field, type(value).__name__, "a Rule (e.g. asyncopt.rules.adam(lr=1e-3), "
                      "asyncopt.rules.from_torch(torch.optim.SGD, lr=0.1)) or a spec such as "
                      "{'name': 'adam', 'lr': 1e-3}")


def stateless(fn: Callable[..., Params | None]) -> Rule:
    """A rule without state from ``fn(grads, params, *, delay, worker) -> updates | None``."""

    def init(params: Params) -> EmptyState:
        return EmptyState()

    def update(
        grads: Params, state: EmptyState, params: Params, *, delay: int, worker: int
    ) -> tuple[Params | None, EmptyState]:
        return fn(grads, params, delay=delay, worker=worker), state

    return Rule(init, update)


def new_count() -> Tensor:
    """A step counter that can live in shared memory (``share_memory_()``)."""
    return torch.zeros((), dtype=torch.int64)


_tick_lock: AbstractContextManager[Any] = nullcontext()


def share_ticks(lock: AbstractContextManager[Any] | None) -> None:
    """Make every :func:`tick` of this process take ``lock`` (None: no lock, the default).

    A counter in shared memory is incremented by several processes in lock-free runtimes, and
    ``add_`` then read is not atomic: two simultaneous ticks could both read k and count once.
    Under one lock shared by every process (a ``multiprocessing.Lock``, about 1 µs a tick) the
    shared count is exact and each tick answers a distinct k.
    """
    global _tick_lock
    _tick_lock = nullcontext() if lock is None else lock


def tick(count: Tensor) -> int:
    """Increment a counter in place and return the new value k = 1, 2, ..."""
    with _tick_lock:
        count.add_(1)
        return int(count)


def tick_each(counts: list[Tensor]) -> list[int]:
    """:func:`tick` several counters at once (one lock, one fused add): their new values."""
    with _tick_lock:
        torch._foreach_add_(counts, 1)
        return [int(count) for count in counts]


def apply_updates(params: Params, updates: Params) -> None:
    """In place: ``params += updates``."""
    torch._foreach_add_(list(params.values()), list(updates.values()))


def as_schedule(value: float | Schedule) -> Schedule:
    """A float becomes a constant schedule; a schedule is returned unchanged."""
    if callable(value):
        return value
    constant = float(value)
    return lambda count: constant
