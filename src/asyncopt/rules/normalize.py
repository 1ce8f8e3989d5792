"""Normalized directions: exact, inexact (a norm estimate) and orthogonalized (Newton–Schulz).

Gratton & Toint (*Stochastic convergence of parallel asynchronous adaptive first-order methods*,
arXiv:2606.01787) analyse asynchronous variants with **inexact
normalization**: the step is ``−α_k Ñ(d)``, where ``Ñ(d)`` only approximates the normalized
direction ``d / ‖d‖`` (a stale or averaged norm) or the polar factor of a matrix (Muon's
Newton–Schulz iteration). What the paper's exact conditions on ``Ñ`` are could not be read; the
three estimates below are our reconstruction **[I]**, to be re-checked against the PDF.

None of these blocks reads ``delay``: in an asynchronous run the "previous gradient" of the
stale estimate is simply the previous gradient that reached this block, from whichever worker.
``‖·‖`` is the Euclidean norm over all leaves together.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from asyncopt.errors import check_choice
from asyncopt.rules.base import Rule, new_count, stateless, tick
from asyncopt.rules.transforms import as_tree, global_norm
from asyncopt.tree import Params

NORM_KINDS = ("exact", "stale", "ema")
MUON_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""Muon's quintic Newton–Schulz coefficients (Jordan et al. 2024): fast, singular values ≈ 1."""
CUBIC_COEFFICIENTS = (1.5, -0.5, 0.0)
"""The classical cubic Newton–Schulz iteration: converges to the exact polar factor, slowly."""


class NormEstimateState(NamedTuple):
    count: Tensor
    estimate: Tensor
    """0-dim: the previous gradient's norm (stale) or the running average ν (ema)."""


def _divide(grads: Params, norm: Tensor, eps: float) -> Params:
    """``g / max(norm, ε)``: a zero gradient gives a zero step."""
    factor = norm.clamp_min(eps).reciprocal()
    return as_tree(grads, torch._foreach_mul(list(grads.values()), factor))


def normalize(kind: str = "exact", *, beta: float = 0.9, eps: float = 1e-8) -> Rule:
    """``u = g / max(n_k, ε)``, with ``n_k`` the norm of ``g`` or an estimate of it.

    * ``"exact"``: ``n_k = ‖g_k‖``, so ``‖u‖ = 1`` (unless ``‖g‖ < ε``); normalized SGD.
    * ``"stale"`` [I]: ``n_k = ‖g_{k−1}‖``, the norm of the previous input of this block
      (``n_1 = ‖g_1‖``). One reduction behind, so the division need not wait for the current
      norm; ``‖u‖ = ‖g_k‖/‖g_{k−1}‖`` is 1 only up to the gradient's variation.
    * ``"ema"`` [I]: ``ν_k = β ν_{k−1} + (1−β) ‖g_k‖`` with ``ν_0 = 0`` and the bias-corrected
      ``n_k = ν_k / (1 − β^k)`` (so ``n_1 = ‖g_1‖``): a smoothed norm, robust to one noisy
      gradient, whose step length varies around 1.
    """
    kind = check_choice("kind", kind, NORM_KINDS)
    if kind == "exact":

        def exact(grads: Params, params: Params, *, delay: int, worker: int) -> Params:
            return _divide(grads, global_norm(list(grads.values())), eps)

        return stateless(exact)

    def init(params: Params) -> NormEstimateState:
        first = next(iter(params.values()), torch.zeros(()))
        return NormEstimateState(new_count(), torch.zeros((), dtype=first.dtype,
                                                          device=first.device))

    def update(grads: Params, state: NormEstimateState, params: Params, *, delay: int,
               worker: int) -> tuple[Params, NormEstimateState]:
        k, current = tick(state.count), global_norm(list(grads.values()))
        if kind == "stale":
            estimate = current if k == 1 else state.estimate.clone()
            state.estimate.copy_(current)
        else:
            state.estimate.mul_(beta).add_(current, alpha=1 - beta)
            estimate = state.estimate / (1 - beta**k)
        return _divide(grads, estimate, eps), state

    return Rule(init, update)


def newton_schulz(matrix: Tensor, steps: int = 5,
                  coefficients: tuple[float, float, float] = MUON_COEFFICIENTS,
                  eps: float = 1e-7) -> Tensor:
    """An approximation of the polar factor ``U Vᵀ`` of ``matrix = U Σ Vᵀ`` (2-D).

    ``X_0 = G / (‖G‖_F + ε)`` (all singular values in [0, 1]), then ``steps`` times
    ``X ← a X + (b A + c A²) X`` with ``A = X Xᵀ``, which maps each singular value σ to
    ``aσ + bσ³ + cσ⁵`` and leaves the singular vectors alone.
    """
    a, b, c = coefficients
    x = matrix / (torch.linalg.matrix_norm(matrix) + eps)
    transposed = x.shape[0] > x.shape[1]
    if transposed:  # the Gram matrix of the short side is the cheaper one
        x = x.mT
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if transposed else x


def orthogonalize(steps: int = 5, coefficients: tuple[float, float, float] = MUON_COEFFICIENTS,
                  eps: float = 1e-7) -> Rule:
    """Muon-style inexact normalization [I]: ``u = NS_q(g)`` leaf by leaf.

    Each leaf with ``≥ 2`` dimensions, seen as a matrix ``(shape[0], rest)``, is replaced by
    :func:`newton_schulz` with ``q = steps`` iterations: an inexact polar factor whose singular
    values are near 1 (in about [0.7, 1.2] with Muon's coefficients, → 1 with the cubic ones and
    enough steps). Leaves with fewer dimensions (biases) are normalized by their own norm,
    ``g / max(‖g‖, ε)``. This is the Muon-type member of Gratton–Toint's family, with the
    per-tensor geometry of Muon (Jordan et al. 2024) and without Muon's shape-dependent rescaling.
    """

    def fn(grads: Params, params: Params, *, delay: int, worker: int) -> Params:
        out: Params = {}
        for key, g in grads.items():
            if g.dim() >= 2:
                out[key] = newton_schulz(g.reshape(g.shape[0], -1), steps, coefficients,
                                         eps).reshape(g.shape)
            else:
                out[key] = g / torch.linalg.vector_norm(g).clamp_min(eps)
        return out

    return stateless(fn)
