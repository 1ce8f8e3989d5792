"""Supervised learning with any ``nn.Module``: each worker's f_i is the mean loss on its shard.

    f_i(x) = (1/|S_i|) Σ_{j∈S_i} ℓ(model(x; a_j), y_j) + (l2/2) ‖x‖²,   f(x) = (1/n) Σ_i f_i(x).

Workers weigh equally in f, whatever their shard sizes (the federated / Ringleader convention,
Maranjyan & Richtárik 2026); with equal iid shards f is the full training-set mean. A worker's
stochastic gradient averages ``batch_size`` samples drawn uniformly *with replacement* from its
shard, an unbiased estimate of ∇f_i that works for any shard size (a shard smaller than the
batch is fine). The model is evaluated functionally, ``torch.func.functional_call(module,
params, (x,))``, on one cached module, so the server's Params are never touched.

``loss_fn(outputs, targets, reduction=...)`` is a ``torch.nn.functional``-style loss such as
``F.cross_entropy`` or ``F.mse_loss``: minibatches use ``reduction="mean"`` (the fused kernel is
the fastest), and :meth:`SupervisedProblem.evaluate` uses ``reduction="none"`` to form the
equal-worker-weight objective as one weighted sum over samples, in one pass over the data.
Modules with running-statistics buffers (BatchNorm) are refused for now: their buffers would be
shared and updated by every worker (support is a later issue).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from asyncopt import tree
from asyncopt.errors import ConfigError, check, check_float, check_int
from asyncopt.problems.base import Problem
from asyncopt.tree import Params

LossFn = Callable[..., Tensor]


class SupervisedProblem(Problem):
    """An ``nn.Module`` trained on ``(X_train, y_train)`` split into ``shards`` (one per worker).

    ``model`` builds the module; Params are its ``named_parameters()``. ``X_test``/``y_test``
    (optional) give ``accuracy`` (when the targets are class indices) and ``test_loss``.
    ``eval_batch`` bounds how many samples one evaluation forward pass holds.
    """

    def __init__(self, model: Callable[[], nn.Module], loss_fn: LossFn, X_train: Tensor,
                 y_train: Tensor, shards: Sequence[np.ndarray], *, batch_size: int,
                 X_test: Tensor | None = None, y_test: Tensor | None = None,
                 l2: float = 0.0, eval_batch: int = 8192) -> None:
        check(len(X_train) == len(y_train) > 0, "y_train", f"{len(y_train)} targets",
              f"one target per training sample ({len(X_train)})")
        self.num_workers = check_int("num_workers", len(shards), 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.eval_batch = check_int("eval_batch", eval_batch, 1)
        self.l2 = check_float("l2", l2, 0.0)
        self.model_factory, self.loss_fn = model, loss_fn
        self.X_train, self.y_train = X_train, y_train
        self.X_test, self.y_test = X_test, y_test
        self.module = _build(model)
        _refuse_running_buffers(self.module)
        self.shards = [self._shard(worker, shard) for worker, shard in enumerate(shards)]
        # per-shard copies make a minibatch one gather instead of two
        self._shard_data = [(X_train[s], y_train[s]) for s in self.shards]
        self._eval_chunks = self._objective_chunks()
        self._check_loss_fn()

    def init_params(self, generator: torch.Generator) -> Params:
        """A fresh module's own default initialization (e.g. kaiming-uniform bounds for
        ``nn.Linear``), run on a private CPU RNG seeded by one draw from ``generator``; the
        global RNG is left as it was, and the same generator state gives the same x⁰."""
        seed = int(torch.randint(2**62, (), generator=generator))
        module = _build(self.model_factory, seed)
        return {name: p.detach().clone() for name, p in module.named_parameters()}

    def loss_and_grad(self, params: Params, worker: int,
                      generator: torch.Generator) -> tuple[float, Params]:
        """∇ of the mean loss over ``batch_size`` samples drawn with replacement from shard i."""
        X, y = self._shard_data[worker]
        picks = torch.randint(len(y), (self.batch_size,), generator=generator)
        leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
        outputs = functional_call(self.module, leaves, (X.index_select(0, picks),))
        loss = self.loss_fn(outputs, y.index_select(0, picks))
        grads = torch.autograd.grad(loss, list(leaves.values()))
        value = loss.item()
        if self.l2 > 0.0:
            torch._foreach_add_(grads, list(params.values()), alpha=self.l2)
            value += 0.5 * self.l2 * tree.sq_norm(params)
        return value, dict(zip(leaves, grads, strict=True))

    def evaluate(self, params: Params) -> dict[str, float]:
        """``loss`` f(x) and ``grad_norm_sq`` ‖∇f(x)‖² over every shard with equal worker
        weights; ``test_loss`` and (for class targets) ``accuracy`` on the test set."""
        leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
        total = 0.0
        grad = tree.zeros_like(params)
        for X, y, weight in self._eval_chunks:
            outputs = functional_call(self.module, leaves, (X,))
            loss = (self.loss_fn(outputs, y, reduction="none") * weight).sum()
            tree.add_(grad, dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())),
                                     strict=True)))
            total += loss.item()
        if self.l2 > 0.0:
            total += 0.5 * self.l2 * tree.sq_norm(params)
            tree.add_(grad, params, alpha=self.l2)
        metrics = {"loss": total, "grad_norm_sq": tree.sq_norm(grad)}
        if self.X_test is not None and self.y_test is not None and len(self.X_test) > 0:
            metrics.update(self._test_metrics(params, self.X_test, self.y_test))
        return metrics

    @torch.no_grad()
    def _test_metrics(self, params: Params, X_test: Tensor, y_test: Tensor) -> dict[str, float]:
        loss_sum, correct = 0.0, 0
        classes = not torch.is_floating_point(y_test)
        for start in range(0, len(X_test), self.eval_batch):
            X, y = X_test[start:start + self.eval_batch], y_test[start:start + self.eval_batch]
            outputs = functional_call(self.module, params, (X,))
            loss_sum += float(self.loss_fn(outputs, y, reduction="sum"))
            if classes:
                correct += int((outputs.argmax(dim=-1) == y).sum())
        metrics = {"test_loss": loss_sum / len(X_test)}
        if classes:
            metrics["accuracy"] = correct / len(X_test)
        return metrics

    def _shard(self, worker: int, shard: np.ndarray) -> Tensor:
        index = torch.as_tensor(np.asarray(shard), dtype=torch.int64)
        check(index.ndim == 1 and len(index) > 0, f"shards[{worker}]", f"{len(index)} samples",
              "at least one sample per worker")
        check(int(index.min()) >= 0 and int(index.max()) < len(self.X_train),
              f"shards[{worker}]", f"indices in [{int(index.min())}, {int(index.max())}]",
              f"indices in [0, {len(self.X_train) - 1}]")
        return index

    def _objective_chunks(self) -> list[tuple[Tensor, Tensor, Tensor]]:
        """f = Σ_j w_j ℓ_j with w_j = Σ_{i: j∈S_i} 1 / (n |S_i|), over the samples with w_j > 0,
        as (X, y, w) chunks of at most ``eval_batch`` samples."""
        weights = np.zeros(len(self.X_train))
        for shard in self.shards:
            np.add.at(weights, shard.numpy(), 1.0 / (self.num_workers * len(shard)))
        index = torch.from_numpy(np.flatnonzero(weights))
        w = torch.from_numpy(weights).to(self.X_train.dtype)
        return [(self.X_train[i], self.y_train[i], w[i]) for i in index.split(self.eval_batch)]

    def _check_loss_fn(self) -> None:
        allowed = "a loss taking reduction='mean' | 'none' | 'sum', e.g. F.cross_entropy"
        with torch.no_grad():
            outputs = self.module(self.X_train[:2])
            try:
                losses = self.loss_fn(outputs, self.y_train[:2], reduction="none")
            except TypeError as error:
                raise ConfigError("loss_fn", self.loss_fn, allowed) from error
        check(tuple(losses.shape) == (len(outputs),), "loss_fn", self.loss_fn,
              f"{allowed}; with reduction='none' it gave shape {tuple(losses.shape)}, not one "
              "loss per sample")


def _build(factory: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        module = factory()
    check(isinstance(module, nn.Module), "model", type(module).__name__,
          "a callable returning an nn.Module")
    return module


def _refuse_running_buffers(module: nn.Module) -> None:
    for name, sub in module.named_modules():
        if isinstance(sub, nn.modules.batchnorm._NormBase) and sub.track_running_stats:
            raise ConfigError("model", f"{name or 'the model'} ({type(sub).__name__})",
                              "a module without running-statistics buffers; BatchNorm-style "
                              "buffers are not supported yet (a later issue)")
