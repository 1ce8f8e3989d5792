"""Problems from user code: a model, a loss and a dataset, split across workers.

    problem = user_problem(Net, F.cross_entropy, train_set, workers=8, eval_data=test_set,
                           partition={"name": "dirichlet", "alpha": 0.1})

is a :class:`~asyncopt.problems.supervised.SupervisedProblem` (one code path for built-in and
user models). What each argument may be:

* ``model`` — a factory that builds the module (its class, a module-level function, a
  ``functools.partial``): x⁰ is its default initialization, drawn from the run's seed; or a
  module *instance*, copied (training starts from its current weights, whatever the seed).
* ``loss(outputs, targets)`` — the batch mean as a 0-d tensor (``F.cross_entropy``,
  ``nn.MSELoss()``, your own function).
* ``data`` / ``eval_data`` — a map-style ``torch.utils.data.Dataset`` of ``(input, target)``
  pairs, or a tuple ``(inputs, targets)`` of tensors or arrays. A dataset is read once into two
  tensors (so random transforms are applied once); float64 inputs become the default dtype.
* ``partition`` — ``"iid"``, ``"dirichlet"`` (label skew, α = 0.5), ``"sorted"``, a dict such as
  ``{"name": "dirichlet", "alpha": 0.1}``, or one list of sample indices per worker.

Runtimes other than the simulator send the problem to each worker *once*, pickled: the factory,
the loss, the metrics and the data tensors; the worker rebuilds the module and from then on
only parameter and gradient tensors travel. :func:`check_portable` says up front, by name,
what cannot make that trip and what to pass instead.
"""

from __future__ import annotations

import contextlib
import copy
import pickle
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from asyncopt.errors import ConfigError, check, check_int, check_keys
from asyncopt.problems.base import Problem
from asyncopt.problems.dry_run import name_of
from asyncopt.problems.finite import check_finite
from asyncopt.problems.partition import partition as split
from asyncopt.problems.supervised import LossFn, Metric, SupervisedProblem

Model = nn.Module | Callable[[], nn.Module]
PartitionSpec = str | Mapping[str, Any] | Sequence[Sequence[int]]
FUNCTION_ADVICE = ("pass a function defined at module level (e.g. F.cross_entropy) or an "
                   "nn.Module loss (nn.CrossEntropyLoss()), not a lambda or a local function")
ADVICE = {"model": "pass the model's class or a function defined at module level (model=Net, "
                   "functools.partial(Net, hidden=64)), not a lambda or a local function; a "
                   "module instance must be picklable itself", "loss": FUNCTION_ADVICE}


class ModuleCopy:
    """A picklable factory for a given module instance: each call returns a deep copy."""

    def __init__(self, module: nn.Module) -> None:
        self.module = copy.deepcopy(module)
        self.__qualname__ = f"copy of {type(module).__qualname__}"

    def __call__(self) -> nn.Module:
        return copy.deepcopy(self.module)


def user_problem(model: Model, loss: LossFn, data: Any, *, workers: int, eval_data: Any = None,
                 metrics: Mapping[str, Metric] | None = None, batch_size: int = 32,
                 partition: PartitionSpec = "iid", l2: float = 0.0,
                 seed: int = 0) -> SupervisedProblem:
    """The supervised problem of ``model`` and ``loss`` on ``data``, split across ``workers``
    by ``partition`` (seeded by ``seed``), evaluated on ``eval_data`` with ``metrics``."""
    factory = ModuleCopy(model) if isinstance(model, nn.Module) else model
    check(callable(factory), "model", name_of(model), "an nn.Module, or a callable (its class, "
          "a function) that builds one")
    check(callable(loss), "loss", name_of(loss), "a function loss(outputs, targets) returning "
          "the batch mean, e.g. F.cross_entropy")
    check(metrics is None or (isinstance(metrics, Mapping) and all(map(callable,
          metrics.values()))), "metrics", metrics, "a dict of name -> metric(outputs, targets)")
    workers = check_int("workers", workers, 1)
    X, y = to_tensors(data, "data")
    X_test, y_test = to_tensors(eval_data, "eval_data") if eval_data is not None else (None, None)
    shards = _shards(partition, y, workers, seed)
    return SupervisedProblem(factory, loss, X, y, shards, batch_size=batch_size, X_test=X_test,
                             y_test=y_test, metrics=metrics, l2=l2)


def to_tensors(data: Any, field: str) -> tuple[Tensor, Tensor]:
    """``(inputs, targets)`` tensors of a dataset or of a pair of arrays (see the module doc)."""
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        X, y = data.tensors
    elif (isinstance(data, tuple) and len(data) == 2
          and isinstance(data[0], (Tensor, np.ndarray))):
        X, y = data
    elif hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        X, y = _read(data, field)
    else:
        raise ConfigError(field, type(data).__name__, "a map-style torch Dataset of (input, "
                          "target) pairs, or a tuple (inputs, targets) of tensors or arrays")
    X, y = _tensor(X), _tensor(y)
    check(len(X) == len(y) > 0, field, f"{len(X)} inputs and {len(y)} targets",
          "at least one sample, with one target per input")
    for name, part in (("inputs", X), ("targets", y)):
        check_finite(field, type(data).__name__, name, part, f"{field}[i], 0-based")
    return X, y


def _read(dataset: Any, field: str) -> tuple[Tensor, Tensor]:
    check(len(dataset) > 0, field, "an empty dataset", "at least one sample")
    inputs, targets = [], []
    for index in range(len(dataset)):
        item = dataset[index]
        check(isinstance(item, (tuple, list)) and len(item) == 2, f"{field}[{index}]",
              type(item).__name__, "an (input, target) pair")
        inputs.append(_tensor(item[0]))
        targets.append(_tensor(item[1]))
    try:
        return torch.stack(inputs), torch.stack(targets)
    except RuntimeError as error:
        raise ConfigError(field, f"{len(inputs)} samples", "samples whose inputs share one "
                          f"shape and whose targets share one shape ({error})") from error


def _tensor(values: Any) -> Tensor:
    tensor = torch.as_tensor(values)
    if tensor.dtype == torch.float64:
        tensor = tensor.to(torch.get_default_dtype())
    return tensor


def _shards(spec: PartitionSpec, y: Tensor, workers: int, seed: int) -> list[np.ndarray]:
    """The partition of the training set: a scheme name, a {name, alpha} dict, or index lists."""
    labels = y.numpy() if y.ndim == 1 and not torch.is_floating_point(y) else None
    if isinstance(spec, str):
        name, alpha, indices = spec, 0.5, None
    elif isinstance(spec, Mapping):
        check_keys("partition", spec, ("name", "alpha"))
        name, alpha, indices = spec.get("name"), spec.get("alpha", 0.5), None
    else:
        name, alpha, indices = "given", 0.5, spec
    fields = {"num_workers": "workers", "alpha": "partition.alpha", "indices": "partition",
              "num_samples": "data"}
    try:
        return split(labels, len(y), workers, name, alpha=alpha, seed=seed, indices=indices)
    except ConfigError as error:
        field = error.field.replace("indices[", "partition[")
        raise ConfigError(fields.get(field, field), error.value, error.allowed) from error


def check_portable(problem: Problem, runtime: str) -> None:
    """Refuse, naming the culprit and what to pass instead, a user model, loss or metric that
    cannot be pickled to the workers of ``runtime`` (the simulator needs none of this). The
    runtime itself checks the rest of the problem; data tensors always pickle."""
    if not isinstance(problem, SupervisedProblem):
        return
    parts: dict[str, Any] = {"model": problem.model_factory, "loss": problem.loss_fn}
    parts.update({f"metrics['{name}']": fn for name, fn in problem.metrics.items()})
    pickler: Any = pickle
    if runtime == "ray":  # Ray pickles with cloudpickle, which also takes lambdas
        with contextlib.suppress(ImportError):
            import cloudpickle as pickler
    for field, part in parts.items():
        try:
            pickler.dumps(part)
        except Exception as error:
            advice = ADVICE.get(field, FUNCTION_ADVICE)
            raise ConfigError(field, name_of(part), f"something the {runtime!r} runtime can "
                              f"send to its worker processes, which rebuild the model there; "
                              f"pickling failed ({type(error).__name__}: {error}): "
                              f"{advice}") from error


def as_problem(problem: Problem | Model, *, seed: int, **options: Any) -> Problem:
    """``problem`` itself, or the :func:`user_problem` of a model and ``options`` (``loss``,
    ``data``, ``workers``, ...; those left at None take their defaults)."""
    given = {key: value for key, value in options.items() if value is not None}
    if isinstance(problem, Problem):
        check(not given, next(iter(given), "options"), "(given)", "nothing: the Problem "
              "already has its model, loss and data (pass a model to give them here)")
        return problem
    for key in ("loss", "data", "workers"):
        check(key in given, key, None, "a value: training a model needs loss, data and "
              "workers, e.g. train(Net, rule, loss=F.cross_entropy, data=train_set, workers=4)")
    return user_problem(problem, seed=seed, **given)
