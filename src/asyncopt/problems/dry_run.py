"""The dry run of a supervised problem: every user function runs once before any worker starts.

A model that does not fit the data, a loss that returns one value per sample, a metric that
raises: each surfaces here as a :class:`~asyncopt.errors.ConfigError` that names the culprit
(``model``, ``loss``, ``metrics['name']``), the shapes involved and the original error, instead
of as a traceback from inside a worker process minutes later. The dry run is the training path
(forward in training mode, loss, backward) on ``min(batch_size, 4)`` training samples, then the
evaluation path (forward in evaluation mode, loss, metrics) on two held-out samples.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.func import functional_call

from asyncopt.errors import ConfigError, check
from asyncopt.problems.running_stats import seeded
from asyncopt.problems.sparse import dense

if TYPE_CHECKING:
    from asyncopt.problems.supervised import SupervisedProblem


def dry_run(problem: SupervisedProblem) -> bool:
    """Run the problem's model, loss and metrics once; answer whether the loss also takes
    ``reduction="none"`` (one loss per sample), which makes evaluation faster."""
    params = problem.init_params(torch.Generator().manual_seed(0))
    leaves = {k: v.requires_grad_() for k, v in params.items()}
    picks = torch.arange(min(problem.batch_size, 4)) % len(problem.X_train)
    X, y = dense(problem.X_train[picks]), problem.y_train[picks]
    with seeded(torch.Generator().manual_seed(0)):  # dropout must not draw from the global RNG
        outputs = _call("model", problem.model_factory, "a model that accepts the training "
                        f"inputs ({_shape(X)})",
                        lambda: functional_call(problem.module, leaves, (X,)))
    check(isinstance(outputs, Tensor), "model", name_of(problem.model_factory),
          f"a model whose forward returns a tensor (it returned {type(outputs).__name__})")
    loss = _loss(problem, outputs, y, "training")
    check(loss.ndim == 0 and torch.is_floating_point(loss), "loss", name_of(problem.loss_fn),
          f"a loss returning one number per batch (a 0-d float tensor, the batch mean); on "
          f"{len(y)} samples it returned {_shape(loss)}")
    check(loss.requires_grad, "loss", name_of(problem.loss_fn), "a loss computed from the "
          "model's outputs with torch operations (its value does not depend on the parameters)")
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    unused = [name for name, g in zip(leaves, grads, strict=True) if g is None]
    check(not unused, "model", name_of(problem.model_factory), "a model whose parameters all "
          f"enter the loss (unused: {', '.join(unused)}); delete the unused ones")
    per_sample = _per_sample(problem, outputs.detach(), y)
    _evaluation(problem, params)
    return per_sample


def _evaluation(problem: SupervisedProblem, params: dict[str, Tensor]) -> None:
    held_out = problem.X_test is not None and problem.y_test is not None
    if problem.metrics and not (held_out and len(problem.X_test) > 0):
        raise ConfigError("metrics", sorted(problem.metrics), "metrics only with a non-empty "
                          "held-out set (eval_data), which they are computed on")
    X, y = ((dense(problem.X_test[:2]), problem.y_test[:2])
            if held_out and len(problem.X_test) > 0
            else (dense(problem.X_train[:2]), problem.y_train[:2]))
    with torch.no_grad():
        outputs = _call("model", problem.model_factory, "a model that accepts the held-out "
                        f"inputs in evaluation mode ({_shape(X)})",
                        lambda: functional_call(problem._eval_module, params, (X,)))
        _loss(problem, outputs, y, "held-out")
        for name, metric in problem.metrics.items():
            value = _call(f"metrics['{name}']", metric, "a metric(outputs, targets) on the "
                          f"model's outputs ({_shape(outputs)}) and the targets ({_shape(y)})",
                          lambda m=metric: m(outputs, y))
            try:
                float(value)
            except (TypeError, ValueError, RuntimeError) as error:
                raise ConfigError(f"metrics['{name}']", name_of(metric), "a metric returning "
                                  f"one number; it returned {_shape(value)}") from error


def _loss(problem: SupervisedProblem, outputs: Tensor, y: Tensor, which: str) -> Tensor:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = _call("loss", problem.loss_fn, f"a loss(outputs, targets) that accepts the "
                     f"model's outputs ({_shape(outputs)}) and the {which} targets "
                     f"({_shape(y)})", lambda: problem.loss_fn(outputs, y))
    # torch warns, and broadcasts, when a regression loss gets outputs (N, 1) and targets (N,)
    shape_warnings = [w for w in caught if issubclass(w.category, UserWarning)]
    if shape_warnings:
        raise ConfigError("loss", name_of(problem.loss_fn), f"a loss that runs without warnings "
                          f"on the model's outputs ({_shape(outputs)}) and the {which} targets "
                          f"({_shape(y)}); it warned: {shape_warnings[0].message}")
    check(isinstance(loss, Tensor), "loss", name_of(problem.loss_fn),
          f"a loss returning a tensor (it returned {type(loss).__name__})")
    return loss


def _per_sample(problem: SupervisedProblem, outputs: Tensor, y: Tensor) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            losses = problem.loss_fn(outputs, y, reduction="none")
    except Exception:  # a loss without the keyword is fine: it is evaluated in equal-weight chunks
        return False
    return isinstance(losses, Tensor) and tuple(losses.shape) == (len(y),)


def _call(field: str, culprit: Any, allowed: str, fn: Any) -> Any:
    try:
        return fn()
    except Exception as error:
        raise ConfigError(field, name_of(culprit), f"{allowed}; it failed with "
                          f"{type(error).__name__}: {error}") from error


def _shape(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"shape {tuple(value.shape)}, {str(value.dtype).removeprefix('torch.')}"
    return type(value).__name__


def name_of(obj: Any) -> str:
    """A short name for a user's function, class or object, for error messages."""
    return str(getattr(obj, "__qualname__", None) or type(obj).__qualname__)
