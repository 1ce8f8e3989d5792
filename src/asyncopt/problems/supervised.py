"""Supervised learning with any ``nn.Module``: each worker's f_i is the mean loss on its shard.

    f_i(x) = (1/|S_i|) Σ_{j∈S_i} ℓ(model(x; a_j), y_j) + (l2/2) ‖x‖²,   f(x) = (1/n) Σ_i f_i(x).

Workers weigh equally in f, whatever their shard sizes (the federated / Ringleader convention,
Maranjyan & Richtárik 2026); with equal iid shards f is the full training-set mean. A worker's
stochastic gradient averages ``batch_size`` samples drawn uniformly *with replacement* from its
shard, an unbiased estimate of ∇f_i that works for any shard size (a shard smaller than the
batch is fine), or with ``replacement = False`` ``batch_size`` *distinct* samples, a uniform
subset (the Ringleader authors' ``rng.choice(N, size=b, replace=False)`` in ``model.py``; the
batch must then fit in every shard). Distinct samples are drawn as samples with replacement,
redrawn until distinct while the batch is small beside the shard (B² ≤ N, at most one redraw in
two), else as the first B of a random permutation. The model is evaluated functionally,
``torch.func.functional_call(module, params, (x,))``, on cached modules (one in training mode
for gradients, one in evaluation mode for metrics), so the server's Params are never touched.

``loss_fn(outputs, targets)`` returns the *mean* loss of a batch as a scalar tensor (``F.mse_loss``,
``nn.CrossEntropyLoss()``, any function of that shape). f = Σ_j w_j ℓ_j is then evaluated over
chunks of samples that share one weight w; a loss that also takes ``reduction="none"`` (the
``torch.nn.functional`` losses) is evaluated in fewer, larger chunks with per-sample weights.
Held-out ``metrics`` are functions ``metric(outputs, targets) -> number`` on the whole test set.

Buffers: BatchNorm running statistics are recomputed from the training data whenever the model
is evaluated or exported (:mod:`asyncopt.problems.running_stats`); other buffers are constants,
as the model factory builds them. Dropout draws from a seed taken from the worker's generator,
so simulated runs stay deterministic. Construction ends with a dry run (forward, loss, backward,
metrics on a few samples), so a bad model, loss or metric is reported before any worker starts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from asyncopt import tree
from asyncopt.errors import ConfigError, check, check_float, check_int
from asyncopt.problems import batched, bound, running_stats
from asyncopt.problems.base import Gradient, Problem
from asyncopt.problems.dry_run import dry_run
from asyncopt.problems.sparse import SparseRows, dense
from asyncopt.tree import Params

LossFn = Callable[..., Tensor]
Metric = Callable[[Tensor, Tensor], Any]
RESERVED = ("loss", "grad_norm_sq", "test_loss")


class SupervisedProblem(Problem):
    """An ``nn.Module`` trained on ``(X_train, y_train)`` split into ``shards`` (one per worker).

    ``model`` builds the module; Params are its ``named_parameters()``. ``X_test``/``y_test``
    (optional) give ``test_loss``, ``accuracy`` (class-index targets and one score per class)
    and each of ``metrics``. ``eval_batch`` bounds how many samples one evaluation pass holds.
    Pickling keeps the factory, the loss and the tensors; a worker process rebuilds the module.
    The inputs may be :class:`~asyncopt.problems.sparse.SparseRows` (a sparse LIBSVM set): the
    shards and evaluation chunks stay sparse and each minibatch or chunk is densified when used.
    """

    def __init__(self, model: Callable[[], nn.Module], loss_fn: LossFn,
                 X_train: Tensor | SparseRows,
                 y_train: Tensor, shards: Sequence[np.ndarray], *, batch_size: int,
                 X_test: Tensor | SparseRows | None = None, y_test: Tensor | None = None,
                 metrics: Mapping[str, Metric] | None = None, l2: float = 0.0,
                 eval_batch: int = 8192, replacement: bool = True) -> None:
        check(len(X_train) == len(y_train) > 0, "y_train", f"{len(y_train)} targets",
              f"one target per training sample ({len(X_train)})")
        if X_test is not None and y_test is not None:
            check(len(X_test) == len(y_test), "y_test", f"{len(y_test)} targets",
                  f"one target per test sample ({len(X_test)})")
        self.num_workers = check_int("num_workers", len(shards), 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.eval_batch = check_int("eval_batch", eval_batch, 1)
        self.l2 = check_float("l2", l2, 0.0)
        self.model_factory, self.loss_fn = model, loss_fn
        self.metrics = dict(metrics or {})
        for name in self.metrics:
            check(isinstance(name, str) and name not in RESERVED, "metrics", name,
                  "metric names other than " + ", ".join(RESERVED))
        self.X_train, self.y_train = X_train, y_train
        self.X_test, self.y_test = X_test, y_test
        self.shards = [self._shard(worker, shard) for worker, shard in enumerate(shards)]
        check(isinstance(replacement, bool), "replacement", replacement, "true or false")
        self.replacement = replacement
        smallest = min(len(shard) for shard in self.shards)
        check(replacement or self.batch_size <= smallest, "batch_size", self.batch_size,
              f"at most the smallest shard ({smallest} samples) when minibatches are drawn "
              "without replacement")
        self._setup()
        self.per_sample_loss = dry_run(self)

    def __getstate__(self) -> dict[str, Any]:
        keep = ("num_workers", "batch_size", "eval_batch", "l2", "model_factory", "loss_fn",
                "metrics", "X_train", "y_train", "X_test", "y_test", "shards", "per_sample_loss",
                "replacement")
        return {key: self.__dict__[key] for key in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._setup()

    def _setup(self) -> None:
        """The cached modules and per-shard data (rebuilt, not pickled, in a worker process)."""
        self.module = _build(self.model_factory)
        self._eval_module = _build(self.model_factory).eval()
        self._random = running_stats.has_dropout(self.module)
        # per-shard copies make a minibatch one gather instead of two
        self._shard_data = [(self.X_train[s], self.y_train[s]) for s in self.shards]
        self._test = (self.X_test, self.y_test)
        self._on: torch.device | None = None  # the device computations run on, None: the CPU

    def init_params(self, generator: torch.Generator) -> Params:
        """A fresh module's own default initialization (e.g. kaiming-uniform bounds for
        ``nn.Linear``), run on a private CPU RNG seeded by one draw from ``generator``; the
        global RNG is left as it was, and the same generator state gives the same x⁰."""
        seed = int(torch.randint(2**62, (), generator=generator))
        module = _build(self.model_factory, seed)
        return {name: p.detach().clone() if self._on is None else p.detach().to(self._on)
                for name, p in module.named_parameters()}

    def loss_and_grad(self, params: Params, worker: int,
                      generator: torch.Generator) -> tuple[float, Params]:
        """∇ of the mean loss over ``batch_size`` samples drawn with replacement from shard i."""
        X, y = self._shard_data[worker]
        picks = self._picks(worker, generator)
        leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
        with running_stats.seeded(generator) if self._random else nullcontext():
            outputs = functional_call(self.module, leaves, (X.index_select(0, picks),))
        loss = self.loss_fn(outputs, y.index_select(0, picks))
        grads = torch.autograd.grad(loss, list(leaves.values()))
        value = self._add_l2(loss.item(), grads, params)
        return value, dict(zip(leaves, grads, strict=True))

    def gradient_at(self, params: Params, worker: int) -> Gradient:
        """:meth:`loss_and_grad` through a module bound once to ``params``
        (:mod:`asyncopt.problems.bound`), where this class's own gradient runs on the CPU;
        otherwise (a subclass's gradient, a device) as the base class does."""
        if type(self).loss_and_grad is not SupervisedProblem.loss_and_grad or (
                self._on is not None):
            return super().gradient_at(params, worker)
        return bound.bound_gradient(self, _build(self.model_factory), params, worker)

    def loss_and_grads(self, params: Params, workers: Sequence[int],
                       generators: Sequence[torch.Generator]) -> list[tuple[float, Params]]:
        """The same gradients as :meth:`loss_and_grad` (to float rounding), all ``workers`` in
        one ``torch.func.vmap`` pass over their stacked minibatches (:mod:`.batched`): what the
        simulator's ``runtime_options.batch`` uses, worth it on a GPU."""
        return batched.loss_and_grads(self, params, workers, generators)

    def _picks(self, worker: int, generator: torch.Generator) -> Tensor:
        """The minibatch: ``batch_size`` positions in shard ``worker``, drawn with replacement,
        or distinct ones when ``replacement`` is False."""
        size, count = len(self.shards[worker]), self.batch_size
        picks = torch.randint(size, (count,), generator=generator)
        if self.replacement:
            return picks
        if count * count > size:  # redraws would be frequent: a permutation's first B
            return torch.randperm(size, generator=generator)[:count]
        while len(set(picks.tolist())) < count:
            picks = torch.randint(size, (count,), generator=generator)
        return picks

    def _picks_on_device(self, worker: int, generator: torch.Generator) -> Tensor:
        """:meth:`_picks` drawn on the CPU generator, then moved to the problem's device (set
        by :meth:`to` in place of :meth:`_picks`, so the CPU path has no extra branch)."""
        picks = type(self)._picks(self, worker, generator)
        return picks.to(self._on, non_blocking=True)

    def _add_l2(self, value: float, grads: Sequence[Tensor], params: Params,
                names: Sequence[str] | None = None) -> float:
        """Add the l2 term's gradient l2·x to ``grads`` in place (the gradients of ``names``,
        default every parameter); return ``value`` + (l2/2)‖x‖² (of the whole model)."""
        if self.l2 > 0.0:
            at = list(params.values()) if names is None else [params[n] for n in names]
            torch._foreach_add_(list(grads), at, alpha=self.l2)
            value += 0.5 * self.l2 * tree.sq_norm(params)
        return value

    def evaluate(self, params: Params) -> dict[str, float]:
        """``loss`` f(x) and ``grad_norm_sq`` ‖∇f(x)‖² over every shard with equal worker
        weights; ``test_loss``, ``accuracy`` and the user's metrics on the test set. The model
        is in evaluation mode, with running statistics recomputed at ``params``."""
        buffers = self.buffers(params)
        leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
        total = 0.0
        grad = tree.zeros_like(params)
        for X, y, weight in self._eval_chunks:
            outputs = functional_call(self._eval_module, {**leaves, **buffers}, (dense(X),))
            if self.per_sample_loss:
                loss = (self.loss_fn(outputs, y, reduction="none") * weight).sum()
            else:  # every sample of the chunk has the same weight
                loss = self.loss_fn(outputs, y) * (weight[0] * len(y))
            tree.add_(grad, dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())),
                                     strict=True)))
            total += loss.item()
        if self.l2 > 0.0:
            total += 0.5 * self.l2 * tree.sq_norm(params)
            tree.add_(grad, params, alpha=self.l2)
        metrics = {"loss": total, "grad_norm_sq": tree.sq_norm(grad)}
        if self.X_test is not None and self.y_test is not None and len(self.X_test) > 0:
            metrics.update(self.test_metrics({**params, **buffers}, *self._test))
        return metrics

    @property
    def device(self) -> torch.device:
        return self._on or torch.device("cpu")

    @property
    def movable(self) -> bool:
        """True, unless a subclass computes gradients its own way and does not say how it moves
        (the closed-form problems keep their data on the CPU)."""
        own = (type(self).loss_and_grad is SupervisedProblem.loss_and_grad
               and type(self)._setup is SupervisedProblem._setup)
        return own or type(self).to is not SupervisedProblem.to

    def to(self, device: torch.device | str, *, worker: int | None = None) -> SupervisedProblem:
        """Compute on ``device`` (see :meth:`Problem.to`): the cached modules, the shards'
        data, the evaluation chunks and the test set move; the pickled tensors (``X_train``,
        ``X_test``, ...) stay on the CPU. With ``worker`` only that shard and the training
        module move. On a GPU, dropout masks come from the GPU's generator, not from the
        worker's stream (:func:`running_stats.seeded` seeds the CPU one): runs with dropout
        are then not reproducible."""
        if not self.movable:
            raise TypeError(f"{type(self).__name__} computes its gradients its own way and "
                            f"keeps its data on the CPU: it cannot move to {device}")
        device = torch.device(device)
        self.module.to(device)
        self.__dict__.pop("_vmap_module", None)  # the batched path's copy, rebuilt when needed
        if worker is not None:
            X, y = self._shard_data[worker]
            self._shard_data[worker] = (X.to(device), y.to(device))
        elif device.type == "cpu":
            self._eval_module.to(device)
            self._shard_data = [(self.X_train[s], self.y_train[s]) for s in self.shards]
            self._test = (self.X_test, self.y_test)
            self.__dict__.pop("_eval_chunks", None)  # rebuilt from the CPU tensors when needed
            self.__dict__.pop("_stat_batches", None)
        else:
            self._eval_module.to(device)
            self._shard_data = [(X.to(device), y.to(device)) for X, y in self._shard_data]
            self._test = tuple(None if t is None else t.to(device) for t in self._test)
            self._eval_chunks = [tuple(t.to(device) for t in chunk)
                                 for chunk in self._eval_chunks]
            self._stat_batches = [X.to(device) for X in self._stat_batches]
        self._on = None if device.type == "cpu" else device
        if self._on is None:
            self.__dict__.pop("_picks", None)
        else:
            self._picks = self._picks_on_device  # type: ignore[method-assign]
        return self

    def sample_bytes(self) -> int:
        """A sample's input and target, and twice every layer's output in its forward pass
        (kept for backward, and their gradients), measured once on two samples in evaluation
        mode (no BatchNorm statistics change)."""
        if "_sample_bytes" not in self.__dict__:
            outputs: list[int] = []

            def count(module: nn.Module, inputs: Any, output: Any) -> None:
                if isinstance(output, Tensor):
                    outputs.append(output.numel() * output.element_size())

            X, y = dense(self.X_train[:2]), self.y_train[:2]
            leaves = [m for m in self._eval_module.modules() if not next(m.children(), None)]
            hooks = [m.register_forward_hook(count) for m in leaves]
            try:
                with torch.no_grad():
                    self._eval_module(X.to(self.device))
            finally:
                for hook in hooks:
                    hook.remove()
            data = X.numel() * X.element_size() + y.numel() * y.element_size()
            self._sample_bytes = (data + 2 * sum(outputs)) // len(X)
        return self._sample_bytes

    def worker_data_bytes(self) -> int:
        """Every shard's copy of its samples (:meth:`_setup` gathers them in each process)."""
        rows = sum(len(shard) for shard in self.shards)  # a sparse set: its mean row
        return rows * (self.X_train.nbytes // len(self.X_train) + self.y_train[:1].nbytes)

    def buffers(self, params: Params) -> Params:
        """The running statistics at ``params`` (empty for a model without BatchNorm)."""
        if not running_stats.norm_layers(self._eval_module):
            return {}
        return running_stats.recompute(self._eval_module, params, self._stat_batches)

    def state_dict(self, params: Params) -> dict[str, Tensor]:
        """The module's ``state_dict`` at ``params``: parameters, recomputed running statistics
        and the factory's other buffers, in the module's own order."""
        state = _build(self.model_factory).state_dict()
        state.update({k: v.detach().clone() for k, v in params.items()})
        state.update(self.buffers(params))
        return state

    def to_module(self, params: Params) -> nn.Module:
        """A fresh module holding ``params`` (and its running statistics), in evaluation mode."""
        module = _build(self.model_factory)
        module.load_state_dict(self.state_dict(params))
        return module.eval()

    @torch.no_grad()
    def test_metrics(self, state: Params, X_test: Tensor | SparseRows,
                     y_test: Tensor) -> dict[str, float]:
        """Evaluation-mode outputs on the whole test set, then the loss and every metric."""
        outputs = torch.cat([functional_call(self._eval_module, state, (dense(X),))
                             for X in X_test.split(self.eval_batch)])
        metrics = {"test_loss": float(self.loss_fn(outputs, y_test))}
        if not torch.is_floating_point(y_test) and outputs.ndim == y_test.ndim + 1:
            metrics["accuracy"] = float((outputs.argmax(dim=-1) == y_test).double().mean())
        for name, metric in self.metrics.items():
            metrics[name] = float(metric(outputs, y_test))
        return metrics

    def _shard(self, worker: int, shard: np.ndarray) -> Tensor:
        index = torch.as_tensor(np.asarray(shard), dtype=torch.int64)
        check(index.ndim == 1 and len(index) > 0, f"shards[{worker}]", f"{len(index)} samples",
              "at least one sample per worker")
        check(int(index.min()) >= 0 and int(index.max()) < len(self.X_train),
              f"shards[{worker}]", f"indices in [{int(index.min())}, {int(index.max())}]",
              f"indices in [0, {len(self.X_train) - 1}]")
        return index

    def _weights(self) -> np.ndarray:
        """w_j = Σ_{i: j∈S_i} 1 / (n |S_i|): sample j's weight in f."""
        weights = np.zeros(len(self.X_train))
        for shard in self.shards:
            np.add.at(weights, shard.numpy(), 1.0 / (self.num_workers * len(shard)))
        return weights

    @functools.cached_property
    def _eval_chunks(self) -> list[tuple[Tensor, Tensor, Tensor]]:
        """(X, y, w) chunks of at most ``eval_batch`` samples with w > 0; each chunk of one
        weight unless the loss gives per-sample values."""
        weights = self._weights()
        w = torch.from_numpy(weights).to(self.X_train.dtype if self.X_train.dtype.is_floating_point
                                         else torch.get_default_dtype())
        if self.per_sample_loss:
            groups = [np.flatnonzero(weights)]
        else:
            groups = [np.flatnonzero(weights == value) for value in np.unique(weights[weights > 0])]
        return [(self.X_train[i], self.y_train[i], w[i]) for group in groups
                for i in torch.from_numpy(group).split(self.eval_batch)]

    @functools.cached_property
    def _stat_batches(self) -> list[Tensor]:
        """The training samples of f in a fixed random order, cut into near-equal batches."""
        index = np.random.default_rng(0).permutation(np.flatnonzero(self._weights()))
        count = -(-len(index) // self.eval_batch)
        return [dense(self.X_train[torch.from_numpy(i)]) for i in np.array_split(index, count)]


def _build(factory: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        try:
            module = factory()
        except Exception as error:
            raise ConfigError("model", factory, "a callable that builds an nn.Module; calling "
                              f"it failed with {type(error).__name__}: {error}") from error
    check(isinstance(module, nn.Module), "model", type(module).__name__,
          "a callable returning an nn.Module")
    return module
