"""Ready optimizers, each a :func:`~asyncopt.rules.base.chain` of blocks.

Every ``lr`` is a float or a :data:`~asyncopt.rules.base.Schedule` ``k ↦ α_k`` (see
:mod:`asyncopt.rules.schedules`). At delay 0 the torch-named ones reproduce torch.optim step for
step (``tests/test_rules_parity.py``). None of them reads ``delay``; wrap them with the blocks of
:mod:`asyncopt.rules.delay` (the registry's ``max_delay`` and ``delay_adaptive`` keys) for that.
``sgd``, ``adam``, ``amsgrad`` and ``adagrad`` (without momentum) also carry an in-place fused
step (:mod:`asyncopt.rules.fused`) that lock-free workers use.

**Gratton–Toint momentum [I].** The reconstruction of Gratton & Toint (arXiv:2606.01787)
names two momentum types. ``adagrad`` and ``adagrad_norm`` take ``momentum=μ`` as *heavy-ball on
the preconditioned direction* ("type 2"): ``d_k = P_k⁻¹ g_k``, ``b_k = μ b_{k−1} + d_k``,
``x ← x − α_k b_k``, i.e. ``trace`` after the preconditioner; the accumulator sees the raw
gradients. Which type (and which placement of ``α_k``) the paper analyses is not confirmed.
"""

from __future__ import annotations

from asyncopt.errors import check_choice
from asyncopt.rules import fused
from asyncopt.rules.base import Rule, Schedule, chain
from asyncopt.rules.normalize import normalize, orthogonalize
from asyncopt.rules.transforms import (
    add_decayed_weights,
    scale_by_adagrad,
    scale_by_adagrad_norm,
    scale_by_adam,
    scale_by_amsgrad,
    scale_by_learning_rate,
    scale_by_rms,
    trace,
)

NORMALIZATIONS = ("exact", "stale", "ema", "newton_schulz")


def _chain(*blocks: Rule | None) -> Rule:
    """``chain`` of the blocks that are switched on (``None`` = off)."""
    return chain(*(block for block in blocks if block is not None))


def _decay(weight_decay: float) -> Rule | None:
    return add_decayed_weights(weight_decay) if weight_decay else None


def _momentum(momentum: float, nesterov: bool = False) -> Rule | None:
    return trace(momentum, nesterov) if momentum else None


def sgd(lr: float | Schedule = 0.01, momentum: float = 0.0, nesterov: bool = False,
        weight_decay: float = 0.0) -> Rule:
    """torch.optim.SGD: ``d = g + wd·p``, ``b ← μ b + d``, ``x ← x − α_k (b or d + μ b)``.

    With ``momentum = 0`` this is the vanilla ASGD step ``x ← x − α g`` (Lian et al. 2015) when
    run asynchronously; with momentum it is Async-MSGD (Liu, Li, Shi, Zhou & Zhao, NeurIPS 2018)
    and the per-process heavy-ball of PASSM+ (Kungurtsev et al. 2021, paper 5).
    """
    rule = _chain(_decay(weight_decay), _momentum(momentum, nesterov), scale_by_learning_rate(lr))
    return fused.with_step(rule, fused.sgd_step(lr, momentum, nesterov, weight_decay))


def momentum(lr: float | Schedule = 0.01, momentum: float = 0.9,
             weight_decay: float = 0.0) -> Rule:
    """Heavy-ball SGD (Polyak 1964), torch.optim.SGD(momentum=μ): :func:`sgd` with μ = 0.9."""
    return sgd(lr, momentum, weight_decay=weight_decay)


def nesterov(lr: float | Schedule = 0.01, momentum: float = 0.9,
             weight_decay: float = 0.0) -> Rule:
    """Nesterov momentum as torch.optim.SGD(nesterov=True) (Sutskever et al. 2013): ``x ← x −
    α_k (d + μ b)``; :func:`sgd` with μ = 0.9 and ``nesterov=True``."""
    return sgd(lr, momentum, nesterov=True, weight_decay=weight_decay)


def adagrad(lr: float | Schedule = 0.01, eps: float = 1e-10,
            initial_accumulator_value: float = 0.0, weight_decay: float = 0.0,
            momentum: float = 0.0) -> Rule:
    """torch.optim.Adagrad (``lr_decay = 0``): ``s ← s + d²``, ``x ← x − α_k d/(√s + ε)``.

    Diagonal AdaGrad of Gratton–Toint; ``momentum > 0`` adds their heavy-ball variant [I].
    """
    rule = _chain(_decay(weight_decay), scale_by_adagrad(eps, initial_accumulator_value),
                  _momentum(momentum), scale_by_learning_rate(lr))
    return rule if momentum else fused.with_step(rule, fused.adagrad_step(lr, eps, weight_decay))


def adagrad_norm(lr: float | Schedule = 0.1, seed_value: float = 1e-8,
                 momentum: float = 0.0) -> Rule:
    """AdaGrad-Norm (AdaNorm) of Gratton & Toint: ``v ← v + ‖g‖²``, ``x ← x − α_k g/√(ς + v)``.

    One scalar weight for the whole tree (its first step has length ``α_1``); ``momentum > 0``
    adds the heavy-ball variant [I].
    """
    return _chain(scale_by_adagrad_norm(seed_value), _momentum(momentum),
                  scale_by_learning_rate(lr))


def rmsprop(lr: float | Schedule = 0.01, alpha: float = 0.99, eps: float = 1e-8,
            weight_decay: float = 0.0, momentum: float = 0.0) -> Rule:
    """torch.optim.RMSprop (not centered): ``s ← α s + (1−α) d²``, ``b ← μ b + d/(√s + ε)``,
    ``x ← x − α_k b``."""
    return _chain(_decay(weight_decay), scale_by_rms(alpha, eps), _momentum(momentum),
                  scale_by_learning_rate(lr))


def adam(lr: float | Schedule = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
         weight_decay: float = 0.0, amsgrad: bool = False) -> Rule:
    """torch.optim.Adam, coupled weight decay included (see ``scale_by_adam``)."""
    rule = _chain(_decay(weight_decay), scale_by_adam(b1, b2, eps, amsgrad),
                  scale_by_learning_rate(lr))
    return fused.with_step(rule, fused.adam_step(lr, b1, b2, eps, weight_decay, amsgrad))


def adamw(lr: float | Schedule = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 0.01, amsgrad: bool = False) -> Rule:
    """torch.optim.AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, ICLR 2019).

    ``x ← x − α_k (m̂/(√v̂ + ε) + wd·x)``: the decay is added after the preconditioner, so it is
    not rescaled by ``√v``, and it follows the schedule ``α_k`` (torch's ``p ← p(1 − α_k·wd)``).
    """
    rule = _chain(scale_by_adam(b1, b2, eps, amsgrad), _decay(weight_decay),
                  scale_by_learning_rate(lr))
    return fused.with_step(rule, fused.adam_step(lr, b1, b2, eps, weight_decay, amsgrad,
                                                 decoupled=True))


def amsgrad(lr: float | Schedule = 1e-3, b1: float = 0.9, b2: float = 0.999,
            eps: float | None = None, bias_correction: bool = False,
            weight_decay: float = 0.0) -> Rule:
    """APAM (Xu et al., Algorithm 1): ``x ← x − α_k m/√v̂``, every stale gradient applied.

    ``bias_correction=False`` is the paper's form (default ``ε = 0``, zero step where ``v̂ = 0``);
    ``True`` is the authors' code form (default ``ε = 1e-8``). See ``scale_by_amsgrad``.
    """
    if eps is None:
        eps = default_amsgrad_eps(bias_correction)
    rule = _chain(_decay(weight_decay), scale_by_amsgrad(b1, b2, eps, bias_correction),
                  scale_by_learning_rate(lr))
    return fused.with_step(rule, fused.amsgrad_step(lr, b1, b2, eps, bias_correction,
                                                    weight_decay))


def default_amsgrad_eps(bias_correction: bool) -> float:
    """0 in the paper's form, 1e-8 in the authors' (bias-corrected) code."""
    return 1e-8 if bias_correction else 0.0


def normalized_sgd(lr: float | Schedule = 0.01, momentum: float = 0.0, kind: str = "exact",
                   beta: float = 0.9, steps: int = 5, eps: float = 1e-8) -> Rule:
    """Normalized SGD with momentum: ``b ← μ b + g``, ``x ← x − α_k Ñ(b)``.

    ``Ñ`` is the exact normalization ``b/‖b‖`` (``kind="exact"``, step length exactly ``α_k``),
    or one of Gratton–Toint's inexact normalizations [I]: ``"stale"`` and ``"ema"`` divide by a
    norm estimate (``beta`` is the EMA factor), ``"newton_schulz"`` takes ``steps`` Muon
    iterations towards the polar factor of each matrix leaf (see :mod:`asyncopt.rules.normalize`).
    Momentum comes before the normalization, as in Cutkosky & Mehta (2020) and Muon.
    """
    if check_choice("kind", kind, NORMALIZATIONS) == "newton_schulz":
        direction = orthogonalize(steps, eps=eps)
    else:
        direction = normalize(kind, beta=beta, eps=eps)
    return _chain(_momentum(momentum), direction, scale_by_learning_rate(lr))
