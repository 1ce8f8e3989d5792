"""Core blocks: step size, weight decay, momentum and the adaptive preconditioners.

Every block is a function returning a :class:`~asyncopt.rules.base.Rule`. Notation: ``g`` is the
block's input (the gradient, or the previous block's output), ``u`` its output, ``p`` the
parameters, ``k = 1, 2, ...`` the block's own step counter (a shared-memory-ready tensor, see
:func:`~asyncopt.rules.base.new_count`; one per leaf for the Adam family); products, squares,
roots and divisions act element by element unless a norm ``‖·‖`` (over all leaves) is written.
None of these blocks reads ``delay`` or ``worker``: staleness enters through the blocks of
:mod:`asyncopt.rules.delay`, or through a protocol's choice of which gradients to apply.

Per-leaf state is a tree keyed like the parameters and looked up by the keys of ``grads``, so a
gradient holding a subset of the leaves (a block-coordinate step) updates only that part of it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from asyncopt.rules.base import Rule, Schedule, as_schedule, new_count, stateless, tick, tick_each
from asyncopt.tree import Params, zeros_like


class CountState(NamedTuple):
    count: Tensor


class TraceState(NamedTuple):
    momentum: Params


class AdagradState(NamedTuple):
    sum_of_squares: Params


class AdagradNormState(NamedTuple):
    sum_of_squares: Tensor
    """One 0-dim accumulator ``v`` for the whole tree."""


class RmsState(NamedTuple):
    square_avg: Params


class AdamState(NamedTuple):
    count: Params
    """One step counter per leaf, as torch.optim keeps ``state["step"]`` per parameter: a
    block-coordinate step (PASSM+ partitions, Gratton–Toint random blocks) advances only the
    counters of the leaves it updates, so each leaf's bias correction sees its own k."""
    mu: Params
    nu: Params
    nu_max: Params
    """The running maximum of ``nu`` (AMSGrad); empty when it is not used."""


def global_norm(tensors: list[Tensor]) -> Tensor:
    """``‖g‖``: the Euclidean norm of all leaves together, as a 0-dim tensor."""
    if not tensors:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)))


def leaves(tree: Params, keys: Params) -> list[Tensor]:
    """The leaves of ``tree`` under the keys of ``keys``, in that order."""
    return [tree[k] for k in keys]


def as_tree(keys: Params, tensors: list[Tensor] | tuple[Tensor, ...]) -> Params:
    return dict(zip(keys, tensors, strict=True))


def scale(factor: float) -> Rule:
    """``u = factor · g``."""

    def fn(grads: Params, params: Params, *, delay: int, worker: int) -> Params:
        return as_tree(grads, torch._foreach_mul(list(grads.values()), factor))

    return stateless(fn)


def scale_by_learning_rate(lr: float | Schedule) -> Rule:
    """``u = −lr(k) · g``, with ``k`` this block's own count of the steps it has seen.

    The sign turns a descent direction into an update that :func:`apply_updates` adds. A dropped
    gradient (a gating block earlier in the chain) does not advance ``k``.
    """
    schedule = as_schedule(lr)

    def init(params: Params) -> CountState:
        return CountState(new_count())

    def update(grads: Params, state: CountState, params: Params, *, delay: int,
               worker: int) -> tuple[Params, CountState]:
        step_size = schedule(tick(state.count))
        return as_tree(grads, torch._foreach_mul(list(grads.values()), -step_size)), state

    return Rule(init, update)


def add_decayed_weights(weight_decay: float) -> Rule:
    """``u = g + wd · p``: coupled weight decay, as ``weight_decay`` of torch.optim.SGD/Adam."""

    def fn(grads: Params, params: Params, *, delay: int, worker: int) -> Params:
        values = torch._foreach_add(list(grads.values()), leaves(params, grads),
                                    alpha=weight_decay)
        return as_tree(grads, values)

    return stateless(fn)


def trace(momentum: float, nesterov: bool = False) -> Rule:
    """Heavy-ball momentum exactly as torch.optim.SGD (dampening 0).

    ``b ← μ b + g`` with ``b₀ = 0`` (so the first step is ``b = g``, as torch's clone), then
    ``u = b``, or ``u = g + μ b`` with Nesterov. This is also the "momentum type 2" (heavy-ball
    on the preconditioned step) of the Gratton–Toint reconstruction when placed after a
    preconditioner [I].
    """

    def init(params: Params) -> TraceState:
        return TraceState(zeros_like(params))

    def update(grads: Params, state: TraceState, params: Params, *, delay: int,
               worker: int) -> tuple[Params, TraceState]:
        g, buf = list(grads.values()), leaves(state.momentum, grads)
        torch._foreach_mul_(buf, momentum)
        torch._foreach_add_(buf, g)
        out = torch._foreach_add(g, buf, alpha=momentum) if nesterov else [b.clone() for b in buf]
        return as_tree(grads, out), state

    return Rule(init, update)


def scale_by_adagrad(eps: float = 1e-10, initial_accumulator_value: float = 0.0) -> Rule:
    """Diagonal AdaGrad as torch.optim.Adagrad: ``s ← s + g²``, ``u = g / (√s + ε)``.

    ``s₀ = initial_accumulator_value``. The current gradient is in ``s``, as in the AdaGrad
    weights of Gratton & Toint (diagonal AdaGrad of their framework, with ``ς = s₀``).
    """

    def init(params: Params) -> AdagradState:
        return AdagradState({k: torch.full_like(p, initial_accumulator_value)
                             for k, p in params.items()})

    def update(grads: Params, state: AdagradState, params: Params, *, delay: int,
               worker: int) -> tuple[Params, AdagradState]:
        g, acc = list(grads.values()), leaves(state.sum_of_squares, grads)
        torch._foreach_addcmul_(acc, g, g)
        denom = torch._foreach_sqrt(acc)
        torch._foreach_add_(denom, eps)
        return as_tree(grads, torch._foreach_div(g, denom)), state

    return Rule(init, update)


def scale_by_adagrad_norm(seed_value: float = 1e-8) -> Rule:
    """AdaGrad-Norm (AdaNorm) of Gratton & Toint: one scalar weight for the whole tree.

    ``v ← v + ‖g‖²`` (global norm over all leaves), ``u = g / √(ς + v)``. The weight includes the
    current gradient, as in Gratton–Toint's OFFO AdaGrad weights ``w_k = (ς + Σ_{ℓ≤k} ‖g_ℓ‖²)^½``
    [I: recalled from Gratton & Toint, arXiv:2203.01647]; ``ς > 0`` keeps a zero first
    gradient from dividing by zero.
    """

    def init(params: Params) -> AdagradNormState:
        first = next(iter(params.values()), torch.zeros(()))
        return AdagradNormState(torch.zeros((), dtype=first.dtype, device=first.device))

    def update(grads: Params, state: AdagradNormState, params: Params, *, delay: int,
               worker: int) -> tuple[Params, AdagradNormState]:
        g = list(grads.values())
        state.sum_of_squares.add_(global_norm(g).square())
        factor = (state.sum_of_squares + seed_value).rsqrt()
        return as_tree(grads, torch._foreach_mul(g, factor)), state

    return Rule(init, update)


def scale_by_rms(alpha: float = 0.99, eps: float = 1e-8) -> Rule:
    """RMSprop as torch.optim.RMSprop (not centered): ``s ← α s + (1−α) g²``, ``u = g/(√s + ε)``."""

    def init(params: Params) -> RmsState:
        return RmsState(zeros_like(params))

    def update(grads: Params, state: RmsState, params: Params, *, delay: int,
               worker: int) -> tuple[Params, RmsState]:
        g, avg = list(grads.values()), leaves(state.square_avg, grads)
        torch._foreach_mul_(avg, alpha)
        torch._foreach_addcmul_(avg, g, g, value=1 - alpha)
        denom = torch._foreach_sqrt(avg)
        torch._foreach_add_(denom, eps)
        return as_tree(grads, torch._foreach_div(g, denom)), state

    return Rule(init, update)


def _init_moments(params: Params, keep_max: bool) -> AdamState:
    return AdamState({k: new_count() for k in params}, zeros_like(params), zeros_like(params),
                     zeros_like(params) if keep_max else {})


def _update_moments(grads: Params, state: AdamState, b1: float, b2: float,
                    keep_max: bool) -> tuple[list[int], list[Tensor], list[Tensor]]:
    """``m ← b1 m + (1−b1) g``, ``v ← b2 v + (1−b2) g²`` (and ``v̂ ← max(v̂, v)``), in place.

    Returns each leaf's ``k`` and the leaves of ``m`` and of the second moment in use (``v̂`` or
    ``v``), all in the order of ``grads``.
    """
    g, m, v = list(grads.values()), leaves(state.mu, grads), leaves(state.nu, grads)
    torch._foreach_lerp_(m, g, 1 - b1)
    torch._foreach_mul_(v, b2)
    torch._foreach_addcmul_(v, g, g, value=1 - b2)
    if not keep_max:
        return tick_each(leaves(state.count, grads)), m, v
    v_max = leaves(state.nu_max, grads)
    torch._foreach_maximum_(v_max, v)
    return tick_each(leaves(state.count, grads)), m, v_max


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                  amsgrad: bool = False) -> Rule:
    """Adam exactly as torch.optim.Adam (Kingma & Ba 2015; AMSGrad: Reddi et al. 2018).

    ``m ← b1 m + (1−b1) g``, ``v ← b2 v + (1−b2) g²`` and
    ``u = (m / (1−b1^k)) / (√v / √(1−b2^k) + ε)``; with ``amsgrad`` the running maximum
    ``v̂ ← max(v̂, v)`` replaces ``v`` in the denominator.
    """

    def init(params: Params) -> AdamState:
        return _init_moments(params, amsgrad)

    def update(grads: Params, state: AdamState, params: Params, *, delay: int,
               worker: int) -> tuple[Params, AdamState]:
        ks, m, second = _update_moments(grads, state, b1, b2, amsgrad)
        denom = torch._foreach_sqrt(second)
        torch._foreach_div_(denom, [math.sqrt(1 - b2**k) for k in ks])
        torch._foreach_add_(denom, eps)
        out = torch._foreach_div(m, denom)
        torch._foreach_div_(out, [1 - b1**k for k in ks])
        return as_tree(grads, out), state

    return Rule(init, update)


def scale_by_amsgrad(b1: float = 0.9, b2: float = 0.999, eps: float = 0.0,
                     bias_correction: bool = False) -> Rule:
    """APAM's server update: AMSGrad as in Xu et al., *APAM*, Algorithm 1 (arXiv:2002.09095).

    ``m ← b1 m + (1−b1) g``, ``v ← b2 v + (1−b2) g²``, ``v̂ ← max(v̂, v)`` and

    * ``bias_correction=False`` (the paper): ``u = m / (√v̂ + ε)``, no bias correction, ``ε = 0``
      by default; a coordinate with ``√v̂ + ε = 0`` (no nonzero gradient seen yet) gets a zero
      step, never NaN (the OpenMP code likewise skips coordinates with ``v̂ ≤ 1e-11``);
    * ``bias_correction=True`` (the authors' MPI/mpi4py code, use ``ε = 1e-8`` there):
      ``u = √(1−b2^k)/(1−b1^k) · m / (√v̂ + ε)``.

    torch.optim.Adam(amsgrad=True) computes ``(m/(1−b1^k)) / (√v̂/√(1−b2^k) + ε)``: the code form
    differs from it only in where ε enters (torch's ε is ours times ``√(1−b2^k)``); with ``ε = 0``
    the two coincide. The delay of the gradient does not enter: APAM applies every stale
    gradient as it arrives.
    """

    def init(params: Params) -> AdamState:
        return _init_moments(params, True)

    def update(grads: Params, state: AdamState, params: Params, *, delay: int,
               worker: int) -> tuple[Params, AdamState]:
        return as_tree(grads, amsgrad_direction(grads, state, b1, b2, eps, bias_correction)), state

    return Rule(init, update)


def moment_ratio_bound(b1: float, b2: float) -> float | None:
    """The largest ``|m_j| / √v_j`` that Adam's moments reach, stepped one gradient after the
    other from a zero state (any gradients), or None when ``b1² ≥ b2`` (no bound).

    By Cauchy–Schwarz, with γ = b1²/b2 < 1, ``|m_t| = (1−b1)|Σ b1^{t−i} g_i| ≤ (1−b1)
    √(Σ γ^{t−i}) √(Σ b2^{t−i} g_i²) ≤ (1−b1)/√((1−b2)(1−γ)) · √v_t``, and ``v̂ ≥ v``. Lock-free
    workers share m and v without a lock, so a worker may read another's fresh m while v still
    lacks that gradient (v = 0 in a coordinate only the other worker's gradient touched): the
    ratio is then m/ε, unbounded. Clamping to this bound changes no step of the sequential
    algorithm and keeps a torn one at most ``lr`` times the bound per coordinate.
    """
    if not 0.0 < b2 < 1.0 or b1 * b1 >= b2:
        return None
    gamma = b1 * b1 / b2
    # a hair above the bound: float rounding of m and v must never clip a sequential step
    return (1.0 - b1) / math.sqrt((1.0 - b2) * (1.0 - gamma)) * (1.0 + 1e-5)


def amsgrad_direction(grads: Params, state: AdamState, b1: float, b2: float, eps: float,
                      bias_correction: bool) -> list[Tensor]:
    """``scale_by_amsgrad``'s output leaves (in the order of ``grads``), its state advanced in
    place: the one implementation of APAM's step, shared by the in-place fused step. Each
    coordinate of ``m / (√v̂ + ε)`` is clamped to :func:`moment_ratio_bound`: no change to a
    step whose state was advanced one gradient at a time, a bound on one that read another
    lock-free worker's half-written moments."""
    ks, m, v_max = _update_moments(grads, state, b1, b2, True)
    denom = torch._foreach_sqrt(v_max)
    if eps > 0:
        torch._foreach_add_(denom, eps)
        out = torch._foreach_div(m, denom)
    else:
        out = [torch.where(d > 0, mi / d, 0.0) for mi, d in zip(m, denom, strict=True)]
    bound = moment_ratio_bound(b1, b2)
    if bound is not None:
        torch._foreach_clamp_max_(out, bound)
        torch._foreach_clamp_min_(out, -bound)
    if bias_correction:
        torch._foreach_mul_(out, [math.sqrt(1 - b2**k) / (1 - b1**k) for k in ks])
    return out


__all__ = [
    "AdagradNormState", "AdagradState", "AdamState", "CountState", "RmsState",
    "TraceState", "add_decayed_weights", "amsgrad_direction", "global_norm", "scale",
    "scale_by_adagrad", "scale_by_adagrad_norm", "scale_by_adam", "scale_by_amsgrad",
    "scale_by_learning_rate", "scale_by_rms", "trace",
]
