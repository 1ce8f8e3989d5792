"""A heterogeneous quadratic: the simulator's speed benchmark and a problem with known answers.

    f_i(x) = ½ (x − b_i)ᵀ A (x − b_i),   f(x) = (1/n) Σ_i f_i(x) = ½ (x − b)ᵀ A (x − b) + f*,

with A = diag(a_1, …, a_d), a_j = condition^(−(j−1)/(d−1)) log-spaced from 1 down to
1/condition, so L = 1 and μ = 1/condition (κ = condition). The centre b ~ N(0, I) and the worker
centres b_i = b + heterogeneity · ξ_i with ξ_i ~ N(0, I/d) *re-centred* so that (1/n) Σ ξ_i = 0:
``heterogeneity`` is then the typical distance ‖b_i − b‖ between a worker's optimum and the
global one, the global optimum stays at x* = b for every heterogeneity, and
f* = f(b) = ½ (1/n) Σ_i (b_i − b)ᵀ A (b_i − b) (zero with homogeneous data or one worker).

A stochastic gradient of f_i is A(x − b_i) + noise · ζ with ζ ~ N(0, I) drawn from the worker's
generator (variance σ² = noise² · d); ``loss_and_grad`` reports the exact f_i(x). Everything is
precomputed, so one call is a handful of torch ops on d-vectors (about 10 µs): this is what the
simulator's arrivals-per-second benchmark measures. b and the ξ_i come from
``numpy.random.default_rng([seed, 3])``, a stream apart from the x⁰ generator's.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from asyncopt.errors import check_float, check_int
from asyncopt.problems.base import Problem
from asyncopt.tree import Params


class QuadraticProblem(Problem):
    """f(x) = (1/n) Σ ½ (x − b_i)ᵀ A (x − b_i) with Params ``{"x": tensor(dim)}``."""

    def __init__(self, dim: int, num_workers: int, *, condition: float = 10.0,
                 heterogeneity: float = 0.0, noise: float = 0.1, seed: int) -> None:
        self.dim = check_int("dim", dim, 1)
        self.num_workers = check_int("num_workers", num_workers, 1)
        self.condition = check_float("condition", condition, 1.0)
        self.heterogeneity = check_float("heterogeneity", heterogeneity, 0.0)
        self.noise = check_float("noise", noise, 0.0)
        seed = check_int("seed", seed, 0)
        exponents = torch.linspace(0.0, 1.0, dim) if dim > 1 else torch.zeros(1)
        self.curvature: Tensor = self.condition ** (-exponents)
        # a stream of its own: the runtime seeds x⁰'s generator with the same ``seed``
        rng = np.random.default_rng([seed, 3])
        self.optimum: Tensor = torch.from_numpy(rng.standard_normal(dim).astype(np.float32))
        shifts = torch.from_numpy(rng.standard_normal((self.num_workers, dim))
                                  .astype(np.float32)) / dim ** 0.5
        shifts -= shifts.mean(dim=0)
        self.centers: Tensor = self.optimum + self.heterogeneity * shifts
        self._rows = list(self.centers.unbind(0))  # a list lookup is cheaper than tensor indexing
        deviation = (self.centers - self.optimum).double()
        self.optimal_value = float(0.5 * (deviation.square() * self.curvature.double()).sum(1)
                                   .mean())

    def init_params(self, generator: torch.Generator) -> Params:
        """x⁰ ~ N(0, I)."""
        return {"x": torch.randn(self.dim, generator=generator)}

    def loss_and_grad(self, params: Params, worker: int,
                      generator: torch.Generator) -> tuple[float, Params]:
        diff = params["x"] - self._rows[worker]
        grad = diff * self.curvature
        loss = 0.5 * float(torch.dot(diff, grad))
        if self.noise > 0.0:
            grad.add_(torch.randn(self.dim, generator=generator), alpha=self.noise)
        return loss, {"x": grad}

    def evaluate(self, params: Params) -> dict[str, float]:
        """f(x), ‖∇f(x)‖² = ‖A(x − b)‖², and f(x) − f* computed directly (no cancellation)."""
        diff = params["x"].double() - self.optimum.double()
        grad = diff * self.curvature.double()
        gap = 0.5 * float(torch.dot(diff, grad))
        return {"loss": gap + self.optimal_value, "grad_norm_sq": float(torch.dot(grad, grad)),
                "suboptimality": gap}
