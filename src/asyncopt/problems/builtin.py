"""The built-in problems, by name: their spec keys with defaults, and how each is built.

* ``quadratic`` — :class:`~asyncopt.problems.quadratic.QuadraticProblem`.
* ``logistic`` — multinomial logistic regression, ``nn.Linear(d, C)`` + cross-entropy, with an
  optional ``l2`` term (l2/2)‖x‖² on all parameters (then f is l2-strongly convex), on a dataset
  from :mod:`asyncopt.problems.datasets` (default ``synthetic``). The logistic regression of the
  APAM experiments (Xu et al. 2020) is this problem on a LIBSVM file with ``l2 = 0``.
* ``mlp`` — ``Linear(d, hidden) → ReLU → Linear(hidden, C)`` + cross-entropy, default on
  ``digits``; the 2-layer network of the Ringleader ASGD experiments (Maranjyan & Richtárik
  2026) on a small bundled dataset.
* ``cnn`` — a convolutional network ``model`` of :mod:`asyncopt.problems.vision` (``lenet5``,
  ``allcnn``, ``resnet20`` and the other CIFAR ResNets, ``wrn28_10`` and the other Wide ResNets)
  + cross-entropy, default on ``synthetic_images``; image datasets as they are, flat square ones
  (``digits``, the MNIST sets) as one-channel images. The CNN experiments of APAM, Async-MSGD
  and PASSM+ (``configs/paper-scale/``).
* ``pca`` — :class:`~asyncopt.problems.pca.PCAProblem`, streaming PCA (Liu et al. 2018): the top
  eigenvector of Σ = ``diag(eigenvalues)`` or a full ``covariance``, from fresh samples.

The data problems share ``batch_size``, ``partition`` (iid, dirichlet, dirichlet_equal,
dirichlet_equal_rounded, sorted; :mod:`asyncopt.problems.partition`), ``alpha`` (Dirichlet
concentration), ``partition_seed`` (the partition's own seed, an integer ≥ 0; by default the run
seed, so each seed draws its own partition; the Ringleader authors keep 654321 for every run
seed), ``replacement`` (minibatches drawn with replacement from the shard, the default, or
distinct samples as the authors'), ``test_fraction`` and ``gradient``: ``"closed_form"``
computes each stochastic gradient by hand (:mod:`asyncopt.problems.closed_form`, the same
minibatches, loss and gradient as autograd to float rounding, several times faster for small
models),
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
from asyncopt.problems.datasets import OPTIONS, Dataset, load_dataset
from asyncopt.problems.images import as_images
from asyncopt.problems.partition import partition
from asyncopt.problems.pca import PAPER_EIGENVALUES, PCAProblem
from asyncopt.problems.quadratic import QuadraticProblem
from asyncopt.problems.sparse import dense
from asyncopt.problems.supervised import SupervisedProblem
from asyncopt.problems.vision import model_factory

DATA_KEYS: dict[str, Any] = {"batch_size": 32, "partition": "iid", "alpha": 0.5,
                             "partition_seed": None, "replacement": True,
                             "test_fraction": 0.2, "l2": 0.0, "gradient": "auto"}
GRADIENTS = ("auto", "autograd", "closed_form")
DEFAULTS: dict[str, dict[str, Any]] = {
    "quadratic": {"dim": 10, "condition": 10.0, "heterogeneity": 0.0, "noise": 0.1},
    "logistic": {"dataset": "synthetic", **DATA_KEYS},
    "mlp": {"dataset": "digits", **DATA_KEYS, "hidden": 64},
    "cnn": {"dataset": "synthetic_images", **DATA_KEYS, "model": "resnet20"},
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


def build_cnn(spec: Mapping[str, Any], num_workers: int, seed: int) -> Problem:
    data = _load(spec, seed)
    # a sparse LIBSVM set is densified: convolutions take dense images
    data.X_train = as_images(dense(data.X_train), spec["dataset"])
    data.X_test = as_images(dense(data.X_test), spec["dataset"])
    channels, size = data.X_train.shape[1], data.X_train.shape[2]
    factory = model_factory(spec["model"], channels, size, data.num_classes)
    return _supervised(spec, data, num_workers, seed, factory)


def build_pca(spec: Mapping[str, Any], num_workers: int, seed: int) -> Problem:
    return PCAProblem(num_workers, eigenvalues=spec["eigenvalues"],
                      covariance=spec["covariance"], batch_size=spec["batch_size"])


def build_bytes(spec: Mapping[str, Any], num_workers: int) -> tuple[int, str]:
    """About how many bytes building ``spec`` allocates, and the spec key that drives it, for
    the problems whose size is a number in the spec (generated data); 0 for data read from
    files (bounded by the files) and the small bundled sets. Several arrays of the data's size
    live at once while it is generated, converted and split, hence the factors."""
    name = spec["name"]
    if name == "quadratic":  # the worker centres: float64 draws, float32 shifts and centres
        return 28 * num_workers * spec["dim"], "workers"
    dataset = spec.get("dataset")
    if dataset == "synthetic":
        features = spec["num_features"] or OPTIONS["synthetic"]["num_features"]
        return 24 * spec["num_samples"] * features, "num_samples"
    if dataset == "synthetic_images":
        return 12 * spec["num_samples"] * 3 * 32 * 32, "num_samples"
    return 0, "name"


BUILDERS: dict[str, Callable[[Mapping[str, Any], int, int], Problem]] = {
    "quadratic": build_quadratic, "logistic": build_logistic, "mlp": build_mlp,
    "cnn": build_cnn, "pca": build_pca}


def _classifier(spec: Mapping[str, Any], num_workers: int, seed: int,
                model: Callable[[int, int], Callable[[], nn.Module]]) -> Problem:
    """Load the dataset and wrap ``model(num_features, num_classes)`` in a problem."""
    data = _load(spec, seed)
    return _supervised(spec, data, num_workers, seed, model(data.num_features, data.num_classes))


def _load(spec: Mapping[str, Any], seed: int) -> Dataset:
    options = {key: spec[key] for key in OPTIONS.get(spec["dataset"], {})}
    return load_dataset(spec["dataset"], seed=seed, test_fraction=spec["test_fraction"],
                        **options)


def _supervised(spec: Mapping[str, Any], data: Dataset, num_workers: int, seed: int,
                factory: Callable[[], nn.Module]) -> Problem:
    """Partition the training set and wrap the model in a SupervisedProblem (a
    ClosedFormProblem unless ``gradient`` asks for autograd or the model has no closed form)."""
    partition_seed = seed if spec["partition_seed"] is None else spec["partition_seed"]
    shards = partition(data.y_train.numpy(), len(data.y_train), num_workers, spec["partition"],
                       alpha=spec["alpha"], seed=partition_seed)
    keywords = {"batch_size": spec["batch_size"], "X_test": data.X_test, "y_test": data.y_test,
                "l2": spec["l2"], "replacement": spec["replacement"]}
    closed_form = spec["gradient"] == "closed_form" or (
        spec["gradient"] == "auto" and has_closed_form(factory))
    if closed_form:
        return ClosedFormProblem(factory, data.X_train, data.y_train, shards, **keywords)
    return SupervisedProblem(factory, F.cross_entropy, data.X_train, data.y_train, shards,
                             **keywords)
