"""Streaming PCA: the top eigenvector of Σ = E[XXᵀ] from a stream of samples X ~ N(0, Σ).

The test problem of Async-MSGD (Liu, Li, Shi, Zhou & Zhao, NeurIPS 2018):

    max_v  vᵀ Σ v   subject to ‖v‖ = 1,

solved without projection by the approximate manifold-gradient step of the paper,

    v_{k+1} = v_k + μ(v_k − v_{k−1}) + η (I − v vᵀ) X Xᵀ v ,   v = v_{k−τ_k} ,

so a worker's stochastic *descent* direction at the model ``v`` it read is

    g(v) = −(I − v vᵀ) Ŝ v ,   Ŝ = (1/b) Σ_{s ≤ b} X_s X_sᵀ ,   X_s ~ N(0, Σ) ,

and rule ``sgd`` with ``lr = η`` and ``momentum = μ`` on the server reproduces the update above
exactly (see ``tests/test_pca.py``). Samples are X = L z with L Lᵀ = Σ and z ~ N(0, I) drawn from
the worker's own seeded generator: a stream of fresh samples, never a finite data set.

Σ is ``diag(eigenvalues)`` (default ``diag(4, 3, 2, 1)``, the paper's d = 4 experiment) or any
symmetric positive semi-definite ``covariance`` matrix; the top eigenvalue must be simple.

Metrics (:meth:`PCAProblem.evaluate`): ``loss`` = 1 − (vᵀu₁)²/‖v‖², the squared sine of the
angle between v and the top eigenvector u₁ (0 at ±u₁, at most 1, scale-free); ``distance`` =
min_± ‖v ∓ u₁‖², which also sees the norm of v and grows without bound when the iteration blows up;
``grad_norm_sq`` = ‖(I − vvᵀ)Σv‖². The paper plots an "optimization error" whose definition is not
in the poster [I]; our figures use ``loss``. A worker's arrival loss is 1 − vᵀŜv/(λ₁‖v‖²), an
unbiased estimate of the Rayleigh-quotient gap 1 − vᵀΣv/(λ₁‖v‖²).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from asyncopt.errors import check, check_float, check_int
from asyncopt.problems.base import Problem
from asyncopt.tree import Params

PAPER_EIGENVALUES = (4.0, 3.0, 2.0, 1.0)


class PCAProblem(Problem):
    """Streaming PCA with Params ``{"v": tensor(d)}``; every worker samples the same Σ."""

    def __init__(self, num_workers: int, *, eigenvalues: Sequence[float] = PAPER_EIGENVALUES,
                 covariance: Sequence[Sequence[float]] | None = None, batch_size: int = 1
                 ) -> None:
        self.num_workers = check_int("num_workers", num_workers, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        sigma = covariance_matrix(eigenvalues, covariance)
        values, vectors = torch.linalg.eigh(sigma)  # ascending
        self.covariance = sigma.float()
        self.eigenvalues = values.flip(0)
        self.top = vectors[:, -1]  # u₁ (float64)
        self.dim = sigma.shape[0]
        # L with L Lᵀ = Σ that also works for a singular (PSD) Σ
        self._factor = (vectors * values.clamp(min=0.0).sqrt()).float().T.contiguous()
        self._top_value = float(self.eigenvalues[0])

    def init_params(self, generator: torch.Generator) -> Params:
        """v⁰ uniform on the unit sphere."""
        v = torch.randn(self.dim, generator=generator)
        return {"v": v / v.norm()}

    def loss_and_grad(self, params: Params, worker: int,
                      generator: torch.Generator) -> tuple[float, Params]:
        v = params["v"]
        samples = torch.randn(self.batch_size, self.dim, generator=generator) @ self._factor
        projected = samples @ v  # Xᵀv per sample
        s_v = samples.T @ projected / self.batch_size  # Ŝ v
        quotient = torch.dot(v, s_v)  # vᵀ Ŝ v
        grad = v * quotient - s_v  # −(I − v vᵀ) Ŝ v
        loss = 1.0 - float(quotient) / (self._top_value * float(torch.dot(v, v)))
        return loss, {"v": grad}

    def sample_bytes(self) -> int:
        """A fresh sample and its whitened copy."""
        return 2 * 4 * self.dim

    def evaluate(self, params: Params) -> dict[str, float]:
        v = params["v"].double()
        norm_sq = float(torch.dot(v, v))
        cosine = float(torch.dot(v, self.top))
        sigma_v = self.covariance.double() @ v
        grad = sigma_v - v * torch.dot(v, sigma_v)
        distance = norm_sq + 1.0 - 2.0 * abs(cosine)
        return {"loss": 1.0 - cosine * cosine / norm_sq if norm_sq > 0 else 1.0,
                "grad_norm_sq": float(torch.dot(grad, grad)), "distance": distance}


def covariance_matrix(eigenvalues: Sequence[float],
                      covariance: Sequence[Sequence[float]] | None) -> Tensor:
    """Σ as a float64 matrix: ``covariance`` when given, else ``diag(eigenvalues)``; checked
    symmetric PSD with a simple top eigenvalue (else the top eigenvector is not defined)."""
    if covariance is None:
        sigma = torch.diag(torch.tensor([float(x) for x in eigenvalues], dtype=torch.float64))
        field = "eigenvalues"
        shown: Any = list(eigenvalues)
    else:
        rows = [list(row) for row in covariance]
        sigma = torch.tensor(rows, dtype=torch.float64)
        field, shown = "covariance", rows
        check(sigma.ndim == 2 and sigma.shape[0] == sigma.shape[1] > 0, field, shown,
              "a square matrix (a list of equal-length rows)")
        check(bool(torch.allclose(sigma, sigma.T)), field, shown, "a symmetric matrix")
    values = torch.linalg.eigvalsh(sigma)
    check(bool(values[0] >= -1e-9 * max(1.0, float(values[-1]))), field, shown,
          "positive semi-definite (no negative eigenvalue)")
    check(len(values) == 1 or bool(values[-1] - values[-2] > 1e-9 * float(values[-1])), field,
          shown, "a largest eigenvalue that is strictly larger than the others (an eigengap)")
    return sigma


def check_eigenvalues(field: str, value: Any) -> list[float]:
    check(isinstance(value, (list, tuple)) and len(value) > 0, field, value,
          "a non-empty list of numbers >= 0, the diagonal of Σ")
    return [check_float(f"{field}[{k}]", x, 0.0) for k, x in enumerate(value)]


def check_covariance(field: str, value: Any) -> list[list[float]] | None:
    if value is None:
        return None
    check(isinstance(value, (list, tuple)) and len(value) > 0
          and all(isinstance(row, (list, tuple)) for row in value), field, value,
          "a square matrix as a list of rows, e.g. [[2.0, 0.5], [0.5, 1.0]]")
    return [[check_float(f"{field}[{i}][{j}]", x) for j, x in enumerate(row)]
            for i, row in enumerate(value)]
