"""Delay-aware blocks: the only blocks that read the keyword-only ``delay``.

``delay`` δ is the number of server versions applied between the moment the gradient's model
was read and now; the protocol measures it (it owns the version counter), it is never assumed.

Where they go in a chain:

* a **gating** block (:func:`drop_if_stale`) goes **first**: when it answers ``None``,
  :func:`~asyncopt.rules.base.chain` stops, so the blocks after it (momentum buffers, moment
  estimates, step counters) never see the dropped gradient and their state is untouched;
* a **scaling** block (:func:`scale_by_delay`) goes **last**, after the step size, so that the
  final step is scaled, whatever the preconditioner or momentum before it.
"""

from __future__ import annotations

import torch

from asyncopt.rules.base import Rule, stateless
from asyncopt.tree import Params


def delay_factor(num_workers: int, delay: int) -> float:
    """``n / max(n, δ)``: 1 while ``δ ≤ n``, then ``∝ 1/δ``."""
    return num_workers / max(num_workers, delay)


def scale_by_delay(num_workers: int) -> Rule:
    """Delay-adaptive step: ``u = n / max(n, δ) · g`` with ``n`` the number of workers.

    Delay-adaptive ASGD (Mishchenko, Bach, Even & Woodworth, NeurIPS 2022; Koloskova, Stich &
    Jaggi, NeurIPS 2022) shrinks the step like ``1/δ`` for delays beyond the number of workers;
    this is the form ``γ_k = γ · n / max(n, δ_k)`` of the Richtárik-group simulator
    (the delay-adaptive ASGD baseline of Maranjyan & Richtárik, ICLR 2026). Put it at the end
    of a chain.
    """

    def fn(grads: Params, params: Params, *, delay: int, worker: int) -> Params:
        factor = delay_factor(num_workers, delay)
        return dict(zip(grads, torch._foreach_mul(list(grads.values()), factor), strict=True))

    return stateless(fn)


def drop_if_stale(max_delay: int) -> Rule:
    """Refuse stale gradients: answer ``None`` (no step) when ``δ > max_delay``, else pass ``g``.

    The delay threshold of Ringmaster ASGD (Maranjyan, Tyurin & Richtárik, ICML 2025: step
    only if ``δ < R``, i.e. ``max_delay = R − 1``) as a rule, without Ringmaster's cancellation of
    running computations (a protocol's job). Gradients with ``δ ≤ max_delay`` are passed on
    unchanged (the same tensors: this block never writes to them, and the blocks after it return
    fresh ones). Put it first in a chain so that a dropped gradient leaves the state of every
    later block untouched.
    """

    def fn(grads: Params, params: Params, *, delay: int, worker: int) -> Params | None:
        return None if delay > max_delay else dict(grads)

    return stateless(fn)
