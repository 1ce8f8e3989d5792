"""The built-in problems, by name: their spec keys with defaults, and how each is built.

* ``quadratic`` — :class:`~asyncopt.problems.quadratic.QuadraticProblem`.
* ``logistic`` — multinomial logistic regression, ``nn.Linear(d, C)`` + cross-entropy, with an
  optional ``l2`` term (l2/2)‖x‖² on all parameters (then f is l2-strongly convex), on a dataset
  from :mod:`asyncopt.problems.datasets` (default ``synthetic``). The logistic regression of the
  APAM experiments (Xu et al. 2020) is this problem on a LIBSVM file with ``l2 = 0``.
* ``mlp`` — ``Linear(d, hidden) → ReLU → Linear(hidden, C)`` + cross-entropy, default on
  ``digits``; the 2-layer network of the Ringleader ASGD experiments (Maranjyan & Richtárik
  2026) on a small bundled dataset.
* ``pca`` — :class:`~asyncopt.problems.pca.PCAProblem`, streaming PCA (Liu et al. 2018): the top
  eigenvector of Σ = ``diag(eigenvalues)`` or a full ``covariance``, from fresh samples.

The data problems share ``batch_size``, ``partition`` (iid, dirichlet, sorted), ``alpha``
(Dirichlet concentration), ``test_fraction`` and ``gradient``: ``"closed_form"`` computes each
stochastic gradient by hand (:mod:`asyncopt.problems.closed_form`, the same minibatches, loss
and gradient as autograd to float rounding, several times faster for small models),
``"autograd"`` by ``torch.autograd``, and ``"auto"`` (default) picks the closed form where the
model has one (both built-in models do); a dataset's own options (``path`` for
``libsvm``; ``num_samples``, ``num_features``, ... for ``synthetic``) are allowed only with it.
Specs reach the builders already resolved and validated by :mod:`asyncopt.problems.registry`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch.nn.functional as F
from torch import nn

from asyncopt.problems.base import Problem
from asyncopt.problems.closed_form import ClosedFormProblem, has_closed_form
from asyncopt.problems.datasets import OPTIONS, load_dataset
from asyncopt.problems.partition import partition
from asyncopt.problems.pca import PAPER_EIGENVALUES, PCAProblem
from asyncopt.problems.quadratic import QuadraticProblem
from asyncopt.problems.supervised import SupervisedProblem

DATA_KEYS: dict[str, Any] = {"batch_size": 32, "partition": "iid", "alpha": 0.5,
                             "test_fraction": 0.2, "l2": 0.0, "gradient": "auto"}
GRADIENTS = ("auto", "autograd", "closed_form")
DEFAULTS: dict[str, dict[str, Any]] = {
    "quadratic": {"dim": 10, "condition": 10.0, "heterogeneity": 0.0, "noise": 0.1},
    "logistic": {"dataset": "synthetic", **DATA_KEYS},
    "mlp": {"dataset": "digits", **DATA_KEYS, "hidden": 64},
    "pca": {"eigenvalues": list(PAPER_EIGENVALUES), "covariance": None, "batch_size": 1},
}
"""Spec keys and defaults of each built-in problem, plus the chosen dataset's :data:`OPTIONS`."""

def build_quadratic(spec: Mapping[str, Any], num_workers: int, seed: int) -> Problem:
    return QuadraticProblem(spec["dim"], num_workers, condition=spec["condition"],
                            heterogeneity=spec["heterogeneity"], noise=spec["noise"], seed=seed)


def build_logistic(spec: Mapping[str, Any], num_workers: int, seed: int) -> Problem:
    return _classifier(spec, num_workers, seed, lambda d, c: partial(nn.Linear, d, c))


def build_mlp(spec: Mapping[str, Any], num_workers: int, seed: int) -> Problem:
    return _classifier(spec, num_workers, seed,
                       lambda d, c: partial(mlp, d, spec["hidden"], c))


def mlp(inputs: int, hidden: int, classes: int) -> nn.Module:
    """Linear(inputs, hidden) – ReLU – Linear(hidden, classes). A module-level factory (wrapped
    in ``functools.partial``) so that worker processes can rebuild the model."""
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def build_pca(spec: Mapping[str, Any], num_workers: int, seed: int) -> Problem:
    return PCAProblem(num_workers, eigenvalues=spec["eigenvalues"],
                      covariance=spec["covariance"], batch_size=spec["batch_size"])


BUILDERS: dict[str, Callable[[Mapping[str, Any], int, int], Problem]] = {
    "quadratic": build_quadratic, "logistic": build_logistic, "mlp": build_mlp,
    "pca": build_pca}


def _classifier(spec: Mapping[str, Any], num_workers: int, seed: int,
                model: Callable[[int, int], Callable[[], nn.Module]]) -> Problem:
    """Load the dataset, partition its training set, and wrap a model in a SupervisedProblem
    (a ClosedFormProblem unless ``gradient`` asks for autograd or the model has no closed form)."""
    options = {key: spec[key] for key in OPTIONS.get(spec["dataset"], {})}
    data = load_dataset(spec["dataset"], seed=seed, test_fraction=spec["test_fraction"],
                        **options)
    shards = partition(data.y_train.numpy(), len(data.y_train), num_workers, spec["partition"],
                       alpha=spec["alpha"], seed=seed)
    factory = model(data.num_features, data.num_classes)
    keywords = {"batch_size": spec["batch_size"], "X_test": data.X_test, "y_test": data.y_test,
                "l2": spec["l2"]}
    closed_form = spec["gradient"] == "closed_form" or (
        spec["gradient"] == "auto" and has_closed_form(factory))
    if closed_form:
        return ClosedFormProblem(factory, data.X_train, data.y_train, shards, **keywords)
    return SupervisedProblem(factory, F.cross_entropy, data.X_train, data.y_train, shards,
                             **keywords)
