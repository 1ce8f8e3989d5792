"""Per-process heavy-ball buffers for the lock-free mode (``runtime_options.momentum``).

By default a lock-free run has *one* optimizer state in shared memory (:mod:`.lockfree`): every
process's step goes into the same momentum buffer b, b ← μ b + g_i, whoever computed g_i. The
PASSM+ authors' code (Kungurtsev et al., AAAI 2021) instead keeps one ``torch.optim.SGD`` per
process, so process i's buffer accumulates only its own gradients,

    b_i ← μ b_i + g_i ;  x ← x − α b_i       (the model x shared, b_i private to process i),

the momentum subgradient method of paper 5 run on a shared model by n heavy-ball sequences. With
``momentum = "per_worker"`` each worker's state is the shared state except its heavy-ball
buffers (:class:`~asyncopt.rules.transforms.TraceState`, the ``trace`` of ``momentum``,
``nesterov`` and the momentum variants of sgd and adagrad), which become its own, in shared
memory so that a checkpoint can copy them (``worker_states``). Every other part of the state
stays shared: Adam-type moments and step counters are global by design (a per-process Adam state
is the classic SharedAdam bug: n bias corrections for one model).

The analysis differs: with one buffer the update is heavy-ball on the arrivals' sequence, its
delay the version gap; with n buffers each b_i is an exponentially weighted sum of one worker's
gradients only, older by up to n − 1 other steps each, so the effective momentum of the shared
iterate is spread over n sequences (Liu et al. 2018's tradeoff between momentum and asynchrony
applies per buffer).
"""

from __future__ import annotations

from typing import Any

import torch

from asyncopt.errors import ConfigError
from asyncopt.rules.transforms import TraceState
from asyncopt.runtimes.snapshot import rule_leaves, with_rule_leaves

MOMENTA = ("shared", "per_worker")


def traces(state: Any) -> list[TraceState]:
    """Every heavy-ball buffer of a rule's state, in the state's order."""
    if isinstance(state, TraceState):
        return [state]
    if isinstance(state, tuple | list):
        return [found for part in state for found in traces(part)]
    if isinstance(state, dict):
        return [found for part in state.values() for found in traces(part)]
    return []


def own(state: Any) -> Any:
    """``state`` with each heavy-ball buffer replaced by a copy in fresh shared memory; every
    other tensor is the same (shared) object."""
    if isinstance(state, TraceState):
        return TraceState({k: v.clone().share_memory_() for k, v in state.momentum.items()})
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return type(state)(*(own(part) for part in state))
    if isinstance(state, tuple | list):
        return type(state)(own(part) for part in state)
    if isinstance(state, dict):
        return {k: own(v) for k, v in state.items()}
    return state


def worker_states(state: Any, num_workers: int, saved: list[list[Any]] | None) -> list[Any]:
    """One state per worker, each with its own heavy-ball buffers: from a checkpoint's
    ``worker_states`` when resumed, else copies of the shared buffers. ConfigError when the
    rule has no heavy-ball buffer."""
    if not traces(state):
        raise ConfigError("runtime_options.momentum", "per_worker",
                          "a rule with a heavy-ball buffer (momentum, nesterov, sgd or adagrad "
                          "with momentum > 0); Adam-type moments stay shared by design")
    states = [own(state) for _ in range(num_workers)]
    if saved is not None:
        for mine, leaves in zip(states, saved, strict=True):
            with_rule_leaves(traces(mine), leaves)
    return states


def saved(states: list[Any]) -> list[list[torch.Tensor]]:
    """The workers' heavy-ball buffers, copied, as a checkpoint's ``worker_states``."""
    return [rule_leaves(traces(state)) for state in states]
