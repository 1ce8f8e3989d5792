"""Any ``torch.optim`` optimizer as a rule, run unchanged on the server.

    rule = rules.from_torch(torch.optim.AdamW, lr=1e-3, weight_decay=0.01,
                            scheduler=functools.partial(CosineAnnealingLR, T_max=10_000))

The rule builds the optimizer (and the scheduler, from a factory taking the optimizer) over a
**private copy** of the model. Each update copies the server's current parameters ``x`` into it,
hands it the gradient as ``.grad``, calls ``optimizer.step()`` (then ``scheduler.step()``) and
answers the difference ``u = x' − x``, which the server adds: the server's own models stay out of
place, so the snapshots that in-flight workers hold (simulator, processes, Ray) are never written
by torch's in-place step. ``x + (x' − x)`` is exactly ``x'`` whenever ``x'`` and ``x`` are within a
factor 2 of each other (Sterbenz), and the next update starts again from the server's ``x``.

**What it cannot see.** ``optimizer.step()`` takes no ``delay`` and no ``worker``: every
gradient is applied as if fresh (δ = 0), as APAM does. Chain delay-aware blocks around it for
staleness, ``chain(drop_if_stale(8), from_torch(...), scale_by_delay(n))``; the scheduler
advances once per step taken, whatever the delays.

**State.** The optimizer's per-parameter state tensors *are* tensors of the rule's state
(:class:`TorchOptimizerState`), so checkpoints save them and resuming restores them like every
rule's (:mod:`asyncopt.resume`). Their layout is fixed at ``init`` by one probe step on a
throwaway copy (torch builds state lazily); the live optimizer adopts the state's tensors after
its first step. A fresh optimizer (after a resume, or in another process) is built from the state:
its tensors installed, the scheduler stepped ``count`` times, so its position is the step count
(a scheduler that needs anything else, such as ReduceLROnPlateau's loss, is refused).

Only one central server that owns the whole model can run it (``needs_central_server``): torch's
step is in place on a live object, which lock-free workers (one shared state, many processes)
and block servers (the model cut into blocks) cannot share.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple
from weakref import WeakKeyDictionary

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from asyncopt.errors import ConfigError
from asyncopt.rules.base import Rule, new_count, tick
from asyncopt.tree import Params

SchedulerFactory = Callable[[Optimizer], LRScheduler]


class TorchOptimizerState(NamedTuple):
    count: Tensor
    """Steps taken (0: torch has not built its state yet)."""
    slots: dict[str, dict[str, Tensor]]
    """Per leaf, the optimizer's state tensors by torch's key (``exp_avg``, ``step``, ...)."""


@dataclass
class _Live:
    params: dict[str, Tensor]  # the private copy the optimizer steps in place
    optimizer: Optimizer
    scheduler: LRScheduler | None


class _Cache:
    """Live optimizers by their state's ``count`` tensor; not pickled (rebuilt from the state)."""

    def __init__(self) -> None:
        self.live: WeakKeyDictionary[Tensor, _Live] = WeakKeyDictionary()

    def __reduce__(self) -> tuple[type[_Cache], tuple[()]]:
        return _Cache, ()


def from_torch(optimizer: type[Optimizer], scheduler: SchedulerFactory | None = None,
               **options: Any) -> Rule:
    """A rule running ``optimizer(params, **options)`` (and ``scheduler(optimizer)``, stepped
    after each optimizer step) on the server; see the module docstring for what it cannot see."""
    if not (isinstance(optimizer, type) and issubclass(optimizer, Optimizer)):
        given = optimizer.__name__ if isinstance(optimizer, type) else \
            f"an instance of {type(optimizer).__name__}"
        raise ConfigError("optimizer", given,
                          "a torch.optim.Optimizer class and its options, e.g. "
                          "from_torch(torch.optim.AdamW, lr=1e-3): the rule builds the optimizer "
                          "over its own copy of the model (pass the class, not an instance)")
    _build(optimizer, scheduler, options, {"probe": torch.zeros(2, 2)})  # options checked now
    cache = _Cache()

    def init(params: Params) -> TorchOptimizerState:
        probe = _build(optimizer, scheduler, options, params)
        for p in probe.params.values():
            p.grad = torch.zeros_like(p)
        _step(probe, optimizer)
        slots = {k: _slot_layout(optimizer, k, probe.optimizer.state[p])
                 for k, p in probe.params.items()}
        return TorchOptimizerState(new_count(), slots)

    def update(grads: Params, state: TorchOptimizerState, params: Params, *, delay: int,
               worker: int) -> tuple[Params, TorchOptimizerState]:
        if grads.keys() != params.keys():
            raise ValueError(f"from_torch steps the whole model: got gradients for "
                             f"{sorted(grads)} of {sorted(params)} (block steps need a rule "
                             f"without needs_central_server)")
        live = cache.live.get(state.count)
        if live is None:
            live = cache.live[state.count] = _resume(
                _build(optimizer, scheduler, options, params), int(state.count))
        started = int(state.count) > 0
        with torch.no_grad():
            for key, p in live.params.items():
                p.copy_(params[key])
                p.grad = grads[key].detach().clone()  # torch may write to .grad
                if started:
                    _bind(live.optimizer.state[p], state.slots[key])
        live.optimizer.step()
        if live.scheduler is not None:
            live.scheduler.step()
        tick(state.count)
        with torch.no_grad():
            for key, p in live.params.items():
                _adopt(live.optimizer.state[p], state.slots[key], optimizer, key)
                p.grad = None
            updates = {k: p - params[k] for k, p in live.params.items()}
        return updates, state

    return Rule(init, update, needs_central_server=True)


def _build(optimizer: type[Optimizer], scheduler: SchedulerFactory | None,
           options: dict[str, Any], params: Params) -> _Live:
    private = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    name = f"torch.optim.{optimizer.__name__}"
    try:
        built = optimizer(list(private.values()), **options)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ConfigError(f"{name} options", options, f"what {name} accepts: {error}") from error
    schedule = None
    if scheduler is not None:
        schedule = scheduler(built)
        if not isinstance(schedule, LRScheduler):
            raise ConfigError("scheduler", type(schedule).__name__, "a factory taking the "
                              "optimizer and answering a torch.optim.lr_scheduler.LRScheduler, "
                              "e.g. functools.partial(CosineAnnealingLR, T_max=1000)")
    return _Live(private, built, schedule)


def _step(live: _Live, optimizer: type[Optimizer]) -> None:
    """One probe step (optimizer, then scheduler), refusing what needs more than a gradient."""
    try:
        live.optimizer.step()
    except TypeError as error:
        raise ConfigError("optimizer", f"torch.optim.{optimizer.__name__}", "an optimizer whose "
                          f"step() needs no closure (one gradient per step): {error}") from error
    if live.scheduler is not None:
        try:
            live.scheduler.step()
        except TypeError as error:
            raise ConfigError("scheduler", type(live.scheduler).__name__, "a scheduler whose "
                              "step() needs no argument (its position is the step count; "
                              f"ReduceLROnPlateau needs the loss): {error}") from error


def _slot_layout(optimizer: type[Optimizer], key: str, state: dict[str, Any]
                 ) -> dict[str, Tensor]:
    """Zero tensors shaped like the probe's state of one leaf (its values come from torch)."""
    numbers = [name for name, v in state.items() if v is not None and not isinstance(v, Tensor)]
    if numbers:
        raise ConfigError("optimizer", f"torch.optim.{optimizer.__name__}", f"an optimizer whose "
                          f"state is tensors (the rule checkpoints them); {key}'s state has "
                          f"the non-tensor entries {numbers}")
    return {name: torch.zeros_like(v) for name, v in state.items() if isinstance(v, Tensor)}


def _bind(state: dict[str, Any], slots: dict[str, Tensor]) -> None:
    """Make the optimizer's state of one leaf the rule's state tensors (after a resume)."""
    for name, slot in slots.items():
        if state.get(name) is not slot:
            state[name] = slot


def _adopt(state: dict[str, Any], slots: dict[str, Tensor], optimizer: type[Optimizer],
           key: str) -> None:
    """Copy what torch built or replaced into the rule's state tensors, and bind them."""
    built = {name for name, v in state.items() if isinstance(v, Tensor)}
    if built != set(slots):
        raise RuntimeError(f"torch.optim.{optimizer.__name__} changed the layout of {key}'s "
                           f"state from {sorted(slots)} to {sorted(built)}: from_torch needs a "
                           f"fixed layout (the one its first step builds)")
    for name, slot in slots.items():
        if state[name] is not slot:
            slot.copy_(state[name])
            state[name] = slot


def _resume(live: _Live, count: int) -> _Live:
    """A fresh optimizer's scheduler moved to step ``count`` (its lr is a function of it)."""
    if live.scheduler is not None:
        with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()"
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(count):
                live.scheduler.step()
    return live
