"""In-place fused steps: a rule's ``update`` and :func:`~.base.apply_updates` in one pass.

A lock-free worker (Hogwild!, Niu et al. 2011; PASSM+, Kungurtsev et al. 2021) steps the shared
model itself, so what a step costs beyond its gradient is paid by every worker on every step.
The functional path returns fresh update tensors (one allocation and one pass per block of the
chain) that :func:`~.base.apply_updates` then adds. A **fused step**
``step(grads, state, params, *, delay, worker) -> bool`` advances the same state and adds the
same update to ``params`` (the leaves named by ``grads``, so block-coordinate steps work) in
place:

* ``sgd`` (plain, momentum, Nesterov, weight decay): ``torch._fused_sgd_`` — ``d = g + wd·p``,
  ``b ← μ b + d``, ``p ← p − α_k (b or d + μ b)``; one pass. The buffer starts at 0, so
  ``is_first_step=False`` gives ``b₁ = d`` exactly as :func:`~.transforms.trace`.
* ``adam`` (AMSGrad included): ``torch._fused_adam_`` (the kernel of
  ``torch.optim.Adam(fused=True)``) — ``m ← b1 m + (1−b1) d``, ``v ← b2 v + (1−b2) d²``
  (``v̂ ← max(v̂, v)``), ``p ← p − α_k (m/(1−b1^k)) / (√v/√(1−b2^k) + ε)``; one pass. ``k`` is each
  leaf's own count (one shared counter per leaf, ticked under the shared lock like the
  functional path's), handed to the kernel as private copies so that another process's tick in
  between cannot change it.
* ``adamw``: ``torch._fused_adamw_`` (``torch.optim.AdamW(fused=True)``), the same pass with
  ``p ← p(1 − α_k·wd)`` first instead of ``d = g + wd·p``.
* ``adagrad`` without momentum: ``torch._fused_adagrad_`` — ``s ← s + d²``,
  ``p ← p − α_k d/(√s + ε)`` (``lr_decay = 0``, so the kernel's step count is unused).
* ``amsgrad`` (APAM, Xu et al.): its direction comes from
  :func:`~.transforms.amsgrad_direction`, the functional block's own code, and is added to
  ``params`` with the step size in one ``_foreach_add_`` (no update tree, no second pass).

The math of the first three is torch's kernels'; ``tests/test_rules_fused.py`` holds every
fused step to its rule's functional path (params and state to 1e-6, float64, 50 steps, whole and
partial steps). A rule built by :func:`~.base.chain` (e.g. with ``drop_if_stale`` or
``scale_by_delay`` around it) has no fused step, and workers fall back to update + apply.
"""

from __future__ import annotations

import torch
from torch import Tensor

from asyncopt.rules.base import (
    ChainState,
    Rule,
    Schedule,
    State,
    StepFn,
    as_schedule,
    tick,
    tick_each,
)
from asyncopt.rules.transforms import (
    AdagradState,
    AdamState,
    CountState,
    TraceState,
    amsgrad_direction,
    leaves,
)
from asyncopt.tree import Params


def with_step(rule: Rule, step: StepFn) -> Rule:
    """``rule`` with the fused ``step`` that does its update in place."""
    return rule._replace(step=step)


def part(state: State, kind: type) -> State:
    """The first block state of type ``kind`` in an alias's state (a chain's, or one block's)."""
    for block in state.states if isinstance(state, ChainState) else (state,):
        if isinstance(block, kind):
            return block
    raise TypeError(f"no {kind.__name__} in the rule's state {type(state).__name__}")


def _private_steps(ks: list[int]) -> list[Tensor]:
    """Each leaf's k as a 0-dim tensor of its own (what the fused kernels read)."""
    return list(torch.tensor(ks, dtype=torch.float64).unbind())


def sgd_step(lr: float | Schedule, momentum: float, nesterov: bool,
             weight_decay: float) -> StepFn:
    """The fused step of :func:`~.aliases.sgd` (its state: [TraceState,] CountState)."""
    schedule = as_schedule(lr)

    def step(grads: Params, state: State, params: Params, *, delay: int, worker: int) -> bool:
        lr_k = schedule(tick(part(state, CountState).count))
        buffers = leaves(part(state, TraceState).momentum, grads) if momentum else []
        torch._fused_sgd_(leaves(params, grads), list(grads.values()), buffers,
                          weight_decay=weight_decay, momentum=momentum, lr=lr_k, dampening=0.0,
                          nesterov=nesterov, maximize=False, is_first_step=False)
        return True

    return step


def adam_step(lr: float | Schedule, b1: float, b2: float, eps: float, weight_decay: float,
              amsgrad: bool, decoupled: bool = False) -> StepFn:
    """The fused step of :func:`~.aliases.adam` (its state: AdamState, CountState), or of
    :func:`~.aliases.adamw` with ``decoupled`` weight decay."""
    schedule = as_schedule(lr)
    kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_

    def step(grads: Params, state: State, params: Params, *, delay: int, worker: int) -> bool:
        moments, count = part(state, AdamState), part(state, CountState)
        *ks, k = tick_each([*leaves(moments.count, grads), count.count])  # one lock
        kernel(leaves(params, grads), list(grads.values()), leaves(moments.mu, grads),
               leaves(moments.nu, grads), leaves(moments.nu_max, grads) if amsgrad else [],
               _private_steps(ks), lr=schedule(k), beta1=b1, beta2=b2,
               weight_decay=weight_decay, eps=eps, amsgrad=amsgrad, maximize=False)
        return True

    return step


def adagrad_step(lr: float | Schedule, eps: float, weight_decay: float) -> StepFn:
    """The fused step of :func:`~.aliases.adagrad` without momentum (AdagradState, CountState)."""
    schedule = as_schedule(lr)

    def step(grads: Params, state: State, params: Params, *, delay: int, worker: int) -> bool:
        lr_k = schedule(tick(part(state, CountState).count))
        sums = leaves(part(state, AdagradState).sum_of_squares, grads)
        torch._fused_adagrad_(leaves(params, grads), list(grads.values()), sums,
                              _private_steps([1] * len(sums)), lr=lr_k, lr_decay=0.0,
                              weight_decay=weight_decay, eps=eps, maximize=False)
        return True

    return step


def amsgrad_step(lr: float | Schedule, b1: float, b2: float, eps: float, bias_correction: bool,
                 weight_decay: float) -> StepFn:
    """The in-place step of :func:`~.aliases.amsgrad` (APAM; AdamState, CountState)."""
    schedule = as_schedule(lr)

    def step(grads: Params, state: State, params: Params, *, delay: int, worker: int) -> bool:
        targets = leaves(params, grads)
        if weight_decay:
            grads = dict(zip(grads, torch._foreach_add(list(grads.values()), targets,
                                                       alpha=weight_decay), strict=True))
        direction = amsgrad_direction(grads, part(state, AdamState), b1, b2, eps,
                                      bias_correction)
        torch._foreach_add_(targets, direction, alpha=-schedule(tick(part(state, CountState)
                                                                     .count)))
        return True

    return step
