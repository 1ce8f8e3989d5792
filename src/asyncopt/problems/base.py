"""The problem interface: what a worker computes, and how the server's model is evaluated.

A problem is the objective f(x) = (1/n) Σ_i f_i(x), where worker i samples stochastic gradients
of its own f_i from its own data shard (so data can be heterogeneous across workers). Problems
depend only on :mod:`asyncopt.tree`; they know nothing of rules, protocols or runtimes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import nn

from asyncopt.tree import Params

Gradient = Callable[..., tuple[float, Params]]
"""``gradient(generator, only=None) -> (loss, grads)``: :meth:`Problem.gradient_at`'s answer."""


class Problem(ABC):
    """An objective split across ``num_workers`` workers."""

    num_workers: int

    @abstractmethod
    def init_params(self, generator: torch.Generator) -> Params:
        """The starting point x⁰, drawn with ``generator`` (same seed, same x⁰)."""

    @abstractmethod
    def loss_and_grad(
        self, params: Params, worker: int, generator: torch.Generator
    ) -> tuple[float, Params]:
        """One stochastic gradient of f_worker at ``params``: a minibatch of the worker's shard
        drawn with ``generator``. Must not modify ``params``; returns fresh, detached tensors."""

    def loss_and_grads(self, params: Params, workers: Sequence[int],
                       generators: Sequence[torch.Generator]) -> list[tuple[float, Params]]:
        """:meth:`loss_and_grad` for several workers at the same ``params`` (worker
        ``workers[j]`` drawing with ``generators[j]``), in that order. Override where one
        batched computation is cheaper (the simulator evaluates pending work this way)."""
        return [self.loss_and_grad(params, worker, generator)
                for worker, generator in zip(workers, generators, strict=True)]

    def gradient_at(self, params: Params, worker: int) -> Gradient:
        """Worker ``worker``'s :meth:`loss_and_grad` at ``params`` as a function of the
        generator, for callers that differentiate the same tensors again and again while their
        values change in place (a lock-free worker and the shared model).

        ``gradient(generator, only)`` with a list of parameter names answers the gradient of
        those leaves only, ∇_B f_i(x) for the block B = ``only`` (the loss is the whole loss):
        what a block step of a lock-free worker needs (PASSM+'s partitions, Gratton–Toint's
        random blocks). Here it is the full gradient restricted to B, the same numbers at the
        full cost; problems that can skip work override this (:mod:`asyncopt.problems.bound`
        asks autograd for B's leaves only, so the backward pass stops below B's lowest layer;
        :mod:`asyncopt.problems.closed_form` forms only B's products)."""

        def gradient(generator: torch.Generator, only: Sequence[str] | None = None
                     ) -> tuple[float, Params]:
            loss, grads = self.loss_and_grad(params, worker, generator)
            return loss, grads if only is None else {name: grads[name] for name in only}

        return gradient

    @abstractmethod
    def evaluate(self, params: Params) -> dict[str, float]:
        """Full-data metrics of the global objective at ``params``.

        Always ``loss`` (f) and ``grad_norm_sq`` (‖∇f‖²); ``accuracy`` (held-out test accuracy)
        and ``test_loss`` where the problem has a test set.
        """

    def sample_bytes(self) -> int:
        """Bytes one minibatch sample takes while a gradient is computed (its input, and the
        activations kept for the backward pass with their gradients), for the memory estimate
        made before a run starts (:mod:`asyncopt.runtimes.common.resources`); 0 where unknown
        or negligible."""
        return 0

    def worker_data_bytes(self) -> int:
        """Bytes of data a worker process builds for itself from the problem it receives
        (its tensors arrive in shared memory, but e.g. per-shard copies are private); 0 where
        unknown or negligible."""
        return 0

    @property
    def device(self) -> torch.device:
        """Where :meth:`loss_and_grad` and :meth:`evaluate` compute (see :meth:`to`)."""
        return torch.device("cpu")

    @property
    def movable(self) -> bool:
        """Whether :meth:`to` can put this problem's computations on another device (a GPU)."""
        return type(self).to is not Problem.to

    def to(self, device: torch.device | str, *, worker: int | None = None) -> Problem:
        """Compute on ``device`` from now on, in place; answer ``self``.

        With ``worker = i`` only what worker i's :meth:`loss_and_grad` needs moves (a worker
        process moves its own shard once, at start-up); with None, everything, evaluation
        included, and :meth:`init_params` answers tensors on ``device``. What the problem
        pickles stays on the CPU, so a moved problem is still sent to worker processes through
        CPU shared memory. Minibatch draws keep coming from the workers' CPU generators, so the
        sampled minibatches do not depend on the device. Problems that keep their data on the
        CPU (the default) raise ``TypeError``; see :attr:`movable`.
        """
        raise TypeError(f"{type(self).__name__} keeps its data on the CPU: it cannot move to "
                        f"{device}")

    def to_module(self, params: Params) -> nn.Module | None:
        """``params`` loaded into the problem's ``nn.Module`` (with its buffers), or None for a
        problem that has no module (the quadratic)."""
        return None
