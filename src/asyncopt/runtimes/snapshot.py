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


def save(coordinator: Coordinator, path: Path, blocks: list[dict[str, Any]] | None = None,
         source: dict[str, Any] | None = None) -> None:
    """Write the server's state at this moment to ``path``, atomically. With block servers
    (``runtime_options.servers = K``), ``blocks`` are their snapshots (``block``, ``rule_state``
    leaves, ``version``): the model is theirs, and ``params`` is their blocks side by side.
    ``source``: the event source's state and the driver's job table, for a runtime that
    continues exactly (the simulator)."""
    server, recorder = coordinator.protocol.server, coordinator.recorder
    recorder.flush()  # the history position below must be on disk
    if blocks is None:
        params, rule_state = server.params, rule_leaves(server.state)
    else:
        flat = torch.cat([b["block"].reshape(-1) for b in blocks])
        params, rule_state = tree.unflatten(flat, server.params), []
    state = {
        "format": FORMAT,
        "protocol": coordinator.protocol.name,
        "protocol_state": coordinator.protocol.state_dict(),
        "params": {k: v.detach().clone() for k, v in params.items()},
        "rule_state": rule_state,
        "version": server.version,
        "now": coordinator.now,
        "arrival_budget_count": coordinator.arrivals,
        "arrival_rows": len(recorder._arrivals),
        "evaluation_rows": len(recorder._evaluations),
        "next_eval": coordinator._next_eval,
        "initial_loss": coordinator._initial_loss,  # the divergence test's reference
        "blocks": blocks,
        "source": source,
    }
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)
