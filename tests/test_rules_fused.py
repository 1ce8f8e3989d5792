"""Every fused step (:mod:`asyncopt.rules.fused`) against its rule's functional path.

One registry of rule specs; every spec whose rule carries a ``step`` goes through the same
check: two copies of the same params and state, one stepped with ``update`` + ``apply_updates``,
the other with ``step``, each differentiating a small MLP at its *own* params (so a difference
compounds), 50 steps in float64, whole steps and block steps (a partial dict of leaves, as PASSM+
partitions and Gratton–Toint random blocks send), params and every state tensor equal to 1e-6
after each step, and the gradient left untouched.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.utils._pytree as pytree
from torch import Tensor, nn
from torch.func import functional_call

from asyncopt.rules import RULE_DEFAULTS, make_rule
from asyncopt.rules.base import Rule, apply_updates
from asyncopt.tree import Params, clone

STEPS = 50
DTYPE = torch.float64

FUSED = {
    **{name: {"name": name} for name in RULE_DEFAULTS},
    "sgd_weight_decay": {"name": "sgd", "lr": 0.1, "weight_decay": 0.05},
    "momentum_weight_decay": {"name": "momentum", "lr": 0.05, "weight_decay": 0.05},
    "nesterov_weight_decay": {"name": "nesterov", "lr": 0.05, "weight_decay": 0.05},
    "sgd_inverse_sqrt": {"name": "sgd", "lr": 0.2, "schedule": "inverse_sqrt"},
    "adam_amsgrad": {"name": "adam", "lr": 0.01, "amsgrad": True},
    "adam_weight_decay": {"name": "adam", "lr": 0.01, "weight_decay": 0.01, "eps": 1e-6},
    "adam_capped": {"name": "adam", "lr": 0.05, "schedule": "capped_inverse_sqrt",
                    "lr_max": 0.01},
    "adamw_amsgrad_warmup": {"name": "adamw", "lr": 0.01, "amsgrad": True, "weight_decay": 0.1,
                             "warmup_steps": 5},
    "amsgrad_code_form": {"name": "amsgrad", "lr": 0.01, "bias_correction": True},
    "amsgrad_weight_decay": {"name": "amsgrad", "lr": 0.01, "weight_decay": 0.01},
    "adagrad_accumulator_wd": {"name": "adagrad", "lr": 0.1, "initial_accumulator_value": 0.1,
                               "weight_decay": 0.01},
}
"""Specs whose rule, if it has a fused step, is checked (the registry's defaults, then
variants that switch on each option the fused steps handle)."""

MUST_BE_FUSED = {"sgd", "momentum", "nesterov", "adam", "adamw", "amsgrad", "adagrad"}
WITH_STEP = [pytest.param(spec, id=case) for case, spec in FUSED.items()
             if make_rule(spec, 1).step is not None]


def _state_tensors(state: object) -> list[torch.Tensor]:
    """Every tensor in a rule state (NamedTuples, dicts), in pytree order."""
    return [t for t in pytree.tree_leaves(state) if isinstance(t, torch.Tensor)]


def _problem() -> tuple[nn.Module, Params, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(DTYPE)
    init = {k: 0.5 * torch.randn(p.shape, generator=gen, dtype=DTYPE)
            for k, p in model.named_parameters()}
    inputs = torch.randn(64, 6, generator=gen, dtype=DTYPE)
    return model, init, inputs, torch.randint(0, 3, (64,), generator=gen)


def _grads(model: nn.Module, params: Params, inputs: Tensor, targets: Tensor,
           keys: list[str]) -> Params:
    leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
    loss = nn.functional.cross_entropy(functional_call(model, leaves, (inputs,)), targets)
    grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True))
    return {k: grads[k] for k in keys}


def test_the_rules_lock_free_workers_step_most_have_a_fused_step() -> None:
    fused = {name for name in RULE_DEFAULTS if make_rule({"name": name}, 1).step is not None}
    assert fused >= MUST_BE_FUSED
    assert make_rule({"name": "adagrad", "momentum": 0.5}, 1).step is None  # falls back
    assert make_rule({"name": "sgd", "max_delay": 2}, 1).step is None  # a chain around it


@pytest.mark.parametrize("spec", WITH_STEP)
def test_fused_step_equals_update_then_apply(spec: dict[str, Any]) -> None:
    model, init, inputs, targets = _problem()
    rule: Rule = make_rule(spec, 1)
    assert rule.step is not None
    ours, theirs = clone(init), clone(init)
    state_ours, state_theirs = rule.init(ours), rule.init(theirs)
    keys = list(init)
    gen = torch.Generator().manual_seed(1)
    for step in range(STEPS):
        batch = torch.randint(0, 64, (16,), generator=gen)
        if step % 3 == 0:  # a block step: a nonempty random subset of the leaves
            block = [k for k in keys if torch.rand((), generator=gen) < 0.5] or keys[:1]
        else:
            block = keys
        functional = _grads(model, theirs, inputs[batch], targets[batch], block)
        updates, state_theirs = rule.update(functional, state_theirs, theirs, delay=0,
                                            worker=0)
        assert updates is not None
        apply_updates({k: theirs[k] for k in updates}, updates)

        grads = _grads(model, ours, inputs[batch], targets[batch], block)
        kept = clone(grads)
        assert rule.step(grads, state_ours, ours, delay=0, worker=0) is True
        for key in keys:
            torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-6,
                                       msg=lambda m, s=step, k=key: f"step {s}, {k}: {m}")
        for a, b in zip(_state_tensors(state_ours), _state_tensors(state_theirs), strict=True):
            torch.testing.assert_close(a.double(), b.double(), rtol=0, atol=1e-6,
                                       msg=lambda m, s=step: f"state after step {s}: {m}")
        for key in block:
            assert torch.equal(grads[key], kept[key])
    assert max(float((ours[k] - init[k]).abs().max()) for k in keys) > 1e-3  # it moved
