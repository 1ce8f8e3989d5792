"""Parity with torch.optim at delay 0: the same MLP, the same minibatches, 50 steps, float64.

Built-in rules against their torch.optim namesakes (schedules against torch's lr_scheduler),
and :func:`~asyncopt.rules.from_torch` against the optimizer it wraps.

Both sides compute the gradient with autograd at their own current parameters, so any
difference in the update compounds over the steps; float64 makes ``atol = 1e-6`` a real test
(rounding differences stay near 1e-15) rather than a float32 noise floor.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.optim import lr_scheduler

from asyncopt.rules import aliases, cosine, from_torch, linear_warmup
from asyncopt.rules.base import Rule, apply_updates
from asyncopt.tree import Params

STEPS = 50
DTYPE = torch.float64


def _problem() -> tuple[nn.Module, Params, Tensor, Tensor, list[Tensor]]:
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(DTYPE)
    init = {k: 0.5 * torch.randn(p.shape, generator=gen, dtype=DTYPE)
            for k, p in model.named_parameters()}
    inputs = torch.randn(64, 6, generator=gen, dtype=DTYPE)
    targets = torch.randint(0, 3, (64,), generator=gen)
    batches = [torch.randint(0, 64, (16,), generator=gen) for _ in range(STEPS)]
    return model, init, inputs, targets, batches


def _loss(model: nn.Module, params: Params, inputs: Tensor, targets: Tensor) -> Tensor:
    return nn.functional.cross_entropy(functional_call(model, params, (inputs,)), targets)


Scheduled = Callable[[torch.optim.Optimizer], lr_scheduler.LRScheduler]


def _compare(rule: Rule, make_torch: Callable[[list[Tensor]], torch.optim.Optimizer],
             atol: float, scheduler: Scheduled | None = None) -> float:
    """Run both for STEPS steps, assert closeness after each one, return the distance moved."""
    model, init, inputs, targets, batches = _problem()
    ours = {k: v.clone() for k, v in init.items()}
    theirs = {k: v.clone().requires_grad_() for k, v in init.items()}
    optimizer = make_torch(list(theirs.values()))
    schedule = scheduler(optimizer) if scheduler else None
    state = rule.init(ours)
    for step, batch in enumerate(batches):
        optimizer.zero_grad()
        _loss(model, theirs, inputs[batch], targets[batch]).backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()

        leaves = {k: v.detach().requires_grad_() for k, v in ours.items()}
        grads = torch.autograd.grad(_loss(model, leaves, inputs[batch], targets[batch]),
                                    list(leaves.values()))
        updates, state = rule.update(dict(zip(ours, grads, strict=True)), state, ours,
                                     delay=0, worker=0)
        assert updates is not None
        apply_updates(ours, updates)
        for key in ours:
            torch.testing.assert_close(ours[key], theirs[key].detach(), rtol=0, atol=atol,
                                       msg=lambda m, s=step, k=key: f"step {s}, {k}: {m}")
    return max(float((ours[k] - init[k]).abs().max()) for k in ours)


CASES = {
    "sgd": (aliases.sgd(0.2), lambda p: torch.optim.SGD(p, lr=0.2)),
    "momentum": (aliases.sgd(0.1, momentum=0.9),
                 lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
    "nesterov": (aliases.sgd(0.1, momentum=0.8, nesterov=True),
                 lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.8, nesterov=True)),
    "sgd_weight_decay": (aliases.sgd(0.1, momentum=0.9, weight_decay=0.05),
                         lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.05)),
    "adagrad": (aliases.adagrad(0.1, eps=1e-10, initial_accumulator_value=0.1, weight_decay=0.01),
                lambda p: torch.optim.Adagrad(p, lr=0.1, eps=1e-10, initial_accumulator_value=0.1,
                                              weight_decay=0.01)),
    "rmsprop": (aliases.rmsprop(0.01, alpha=0.9, eps=1e-8),
                lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.9, eps=1e-8)),
    "rmsprop_momentum_wd": (aliases.rmsprop(0.01, alpha=0.99, weight_decay=0.01, momentum=0.5),
                            lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.99,
                                                          weight_decay=0.01, momentum=0.5)),
    "adam": (aliases.adam(0.02, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.01),
             lambda p: torch.optim.Adam(p, lr=0.02, betas=(0.9, 0.99), eps=1e-8,
                                        weight_decay=0.01)),
    "adam_amsgrad": (aliases.adam(0.02, amsgrad=True),
                     lambda p: torch.optim.Adam(p, lr=0.02, amsgrad=True)),
    "adamw": (aliases.adamw(0.02, b1=0.8, b2=0.99, weight_decay=0.1),
              lambda p: torch.optim.AdamW(p, lr=0.02, betas=(0.8, 0.99), weight_decay=0.1)),
    "adamw_amsgrad": (aliases.adamw(0.02, amsgrad=True),
                      lambda p: torch.optim.AdamW(p, lr=0.02, amsgrad=True)),
    "momentum_alias": (aliases.momentum(0.1),
                       lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
    "nesterov_alias": (aliases.nesterov(0.1, momentum=0.8),
                       lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.8, nesterov=True)),
}

SCHEDULED = {  # rule with a schedule, torch optimizer, torch scheduler (stepped after each step)
    "sgd_cosine": (aliases.sgd(cosine(0.3, decay_steps=STEPS - 1, final_lr=0.01)),
                   lambda p: torch.optim.SGD(p, lr=0.3),
                   partial(lr_scheduler.CosineAnnealingLR, T_max=STEPS - 1, eta_min=0.01)),
    "adamw_warmup_cosine": (
        aliases.adamw(linear_warmup(cosine(0.03, decay_steps=45), warmup_steps=5,
                                    start_factor=0.1), weight_decay=0.1),
        lambda p: torch.optim.AdamW(p, lr=0.03, weight_decay=0.1),
        lambda o: lr_scheduler.SequentialLR(o, [
            lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=5),
            lr_scheduler.CosineAnnealingLR(o, T_max=45)], milestones=[5])),
    "momentum_warmup": (aliases.momentum(linear_warmup(0.1, warmup_steps=10)),
                        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
                        partial(lr_scheduler.LinearLR, total_iters=10)),
}

TORCH = {  # from_torch(optimizer, **options) against optimizer(params, **options)
    "SGD_dampening": (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "dampening": 0.5}),
    "Adam": (torch.optim.Adam, {"lr": 0.02, "amsgrad": True}),
    "AdamW": (torch.optim.AdamW, {"lr": 0.02, "weight_decay": 0.1}),
    "NAdam": (torch.optim.NAdam, {"lr": 0.02}),
    "RAdam": (torch.optim.RAdam, {"lr": 0.05}),
    "Adamax": (torch.optim.Adamax, {"lr": 0.05}),
    "Adagrad": (torch.optim.Adagrad, {"lr": 0.1, "initial_accumulator_value": 0.1}),
    "Adadelta": (torch.optim.Adadelta, {"lr": 5.0}),
    "RMSprop_centered": (torch.optim.RMSprop, {"lr": 0.01, "centered": True, "momentum": 0.5}),
    "Rprop": (torch.optim.Rprop, {"lr": 0.01}),
    "ASGD": (torch.optim.ASGD, {"lr": 0.2, "t0": 10}),
    "Adafactor": (torch.optim.Adafactor, {"lr": 0.05}),
}


@pytest.mark.parametrize("name", CASES)
def test_matches_torch_optim_over_50_steps(name: str) -> None:
    rule, make_torch = CASES[name]
    moved = _compare(rule, make_torch, atol=1e-6)
    assert moved > 0.05, "the parameters barely moved: the comparison would prove nothing"


@pytest.mark.parametrize("name", SCHEDULED)
def test_schedules_match_torch_lr_schedulers_over_50_steps(name: str) -> None:
    rule, make_torch, scheduler = SCHEDULED[name]
    assert _compare(rule, make_torch, atol=1e-6, scheduler=scheduler) > 0.05


@pytest.mark.parametrize("name", TORCH)
def test_from_torch_matches_the_optimizer_it_runs(name: str) -> None:
    optimizer, options = TORCH[name]
    moved = _compare(from_torch(optimizer, **options), lambda p: optimizer(p, **options),
                     atol=1e-9)
    assert moved > 0.05, "the parameters barely moved: the comparison would prove nothing"


def test_from_torch_with_a_scheduler_matches_the_pair_it_runs() -> None:
    scheduler = partial(lr_scheduler.OneCycleLR, max_lr=0.2, total_steps=STEPS)  # lr and momentum
    rule = from_torch(torch.optim.SGD, scheduler=scheduler, lr=0.1, momentum=0.9)
    moved = _compare(rule, lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), atol=1e-9,
                     scheduler=scheduler)
    assert moved > 0.05


def test_amsgrad_code_form_equals_torch_exactly_without_eps() -> None:
    # ε is the only difference (ours is added to √v̂, torch's to √v̂/√(1−b2^k)); with ε = 0 the
    # two are the same formula, so they agree to rounding.
    moved = _compare(aliases.amsgrad(0.02, bias_correction=True, eps=0.0),
                     lambda p: torch.optim.Adam(p, lr=0.02, amsgrad=True, eps=0.0), atol=1e-12)
    assert moved > 0.05


def test_amsgrad_code_form_with_eps_differs_from_torch_only_by_where_eps_enters() -> None:
    # At k = 1, ours is −lr·g/(|g| + ε/√(1−b2)) and torch's −lr·g/(|g| + ε): ε weighs about 32x
    # more in ours, which moves a coordinate with |g| ≈ 2e-4 by ≈ 3e-5 on this MLP. So the
    # APAM code form agrees with Adam(amsgrad=True, eps=1e-8) to 1e-4, and not to 1e-6.
    def make_torch(p: list[Tensor]) -> torch.optim.Optimizer:
        return torch.optim.Adam(p, lr=0.02, amsgrad=True, eps=1e-8)

    rule = aliases.amsgrad(0.02, bias_correction=True, eps=1e-8)
    assert _compare(rule, make_torch, atol=1e-4) > 0.05
    with pytest.raises(AssertionError, match="step 0"):
        _compare(aliases.amsgrad(0.02, bias_correction=True, eps=1e-8), make_torch, atol=1e-6)
