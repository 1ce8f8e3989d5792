"""A checkpoint of a run's state, written by the driver (:mod:`.driver`) in every runtime.

What it holds and how a run resumes from it: :mod:`asyncopt.resume`. This module is the writing
side, and the rule-state helpers that block servers use for their own snapshots.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.utils._pytree as pytree

from asyncopt import tree
from asyncopt.runtimes.source import Copy

if TYPE_CHECKING:
    from asyncopt.runtimes.coordinator import Coordinator

CHECKPOINT = "checkpoint.pt"
FORMAT = 3  # 2: with the protocol's state ("protocol_state"); 3: with the source's ("source")
KEYS = ("format", "protocol", "protocol_state", "params", "rule_state", "version", "now",
        "arrival_budget_count", "arrival_rows", "evaluation_rows", "next_eval", "initial_loss",
        "blocks")


def rule_leaves(state: Any) -> list[Any]:
    """A rule state's leaves in ``torch.utils._pytree`` order, tensors copied: what a
    checkpoint saves of it."""
    leaves, _ = pytree.tree_flatten(state)
    return [v.detach().clone() if isinstance(v, torch.Tensor) else v for v in leaves]


def with_rule_leaves(state: Any, saved: list[Any]) -> Any:
    """``state`` (as ``rule.init`` builds it) holding checked saved leaves: tensors copied in
    place, so that the rule's state objects stay the rule's own; numbers replaced."""
    leaves, spec = pytree.tree_flatten(state)
    for fresh, value in zip(leaves, saved, strict=True):
        if isinstance(fresh, torch.Tensor):
            fresh.copy_(value)
    return pytree.tree_unflatten(
        [f if isinstance(f, torch.Tensor) else v for f, v in zip(leaves, saved, strict=True)],
        spec)


def save(coordinator: Coordinator, path: Path, copy: Copy | None = None,
         source: dict[str, Any] | None = None) -> None:
    """Write the run's state at this moment to ``path``, atomically: the server's model and rule
    state, or what ``copy`` holds where the server does not hold them (the source's
    :class:`~asyncopt.runtimes.source.Copy`: lock-free workers' shared model, or K block
    servers' snapshots, whose blocks side by side are ``params``). ``source``: the event
    source's state and the driver's job table, for a runtime that continues exactly (the
    simulator)."""
    server, recorder = coordinator.protocol.server, coordinator.recorder
    copy = copy or Copy()
    recorder.flush()  # the history position below must be on disk
    blocks, version = copy.blocks, server.version if copy.version is None else copy.version
    if blocks is not None:
        flat = torch.cat([b["block"].reshape(-1) for b in blocks])
        params, rule_state = tree.unflatten(flat, server.params), []
    elif copy.params is not None:
        params, rule_state = copy.params, copy.rule_state
    else:
        params, rule_state = server.params, rule_leaves(server.state)
    state = {
        "format": FORMAT,
        "protocol": coordinator.protocol.name,
        "protocol_state": coordinator.protocol.state_dict(),
        "params": {k: v.detach().clone() for k, v in params.items()},
        "rule_state": rule_state,
        "version": version,
        "now": coordinator.now,
        "arrival_budget_count": coordinator.arrivals,
        "arrival_rows": len(recorder._arrivals),
        "evaluation_rows": len(recorder._evaluations),
        "next_eval": coordinator._next_eval,
        "initial_loss": coordinator.divergence.initial_loss,  # the divergence test's reference
        "blocks": blocks,
        "worker_states": copy.worker_states,
        "source": source,
    }
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)
