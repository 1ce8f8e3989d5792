"""A worker's gradient at tensors that stay put: a module bound once to the shared parameters.

A lock-free worker (Hogwild!, Niu et al. 2011; PASSM+, Kungurtsev et al. 2021) differentiates the
*same* shared tensors at every step, only their values change. ``functional_call`` swaps a
module's parameters in and out on each call, which costs about a tenth of a small MLP's gradient;
PyTorch's ``mnist_hogwild`` example instead builds its module on the shared tensors once. This
does the same: a private module whose ``nn.Parameter`` objects alias ``params`` (same storage,
so every step a worker reads what the others wrote), then per call

    minibatch B ~ shard_i (the worker's generator) ; (ℓ_B, g) = (loss, ∇ loss) at the bound module

with ``torch.autograd.grad``, so nothing accumulates between calls. Asked for a block of the
parameters only (``only``), autograd is asked for those leaves only, and its engine runs only
the backward nodes on a path from the loss to them: a block of the last layers never
backpropagates into the first ones (PASSM+'s partitioned steps, Kungurtsev et al. 2021). The
minibatch draw, the dropout seed, the l2 term and the returned gradient are those of
:meth:`~asyncopt.problems.supervised.SupervisedProblem.loss_and_grad` (a test checks them equal),
and the bound module's buffers (BatchNorm running statistics) are the worker's scratch, as there.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch
from torch import nn

from asyncopt.problems import running_stats
from asyncopt.problems.base import Gradient
from asyncopt.tree import Params

if TYPE_CHECKING:
    from asyncopt.problems.supervised import SupervisedProblem

def bound_gradient(problem: SupervisedProblem, module: nn.Module, params: Params,
                   worker: int) -> Gradient:
    """Worker ``worker``'s stochastic gradient at ``params``, through ``module`` (a fresh module
    of ``problem``'s factory, taken over here) whose parameters become aliases of ``params``."""
    bound = {id(module.get_parameter(name)): nn.Parameter(tensor)
             for name, tensor in params.items()}
    # every place that holds a parameter takes its alias, tied weights' second place included
    for name, original in list(module.named_parameters(remove_duplicate=False)):
        owner, _, leaf = name.rpartition(".")
        setattr(module.get_submodule(owner), leaf, bound[id(original)])
    module.train()
    names = list(params)
    leaves = {name: module.get_parameter(name) for name in names}
    X, y = problem._shard_data[worker]

    def gradient(generator: torch.Generator, only: Sequence[str] | None = None
                 ) -> tuple[float, Params]:
        picks = problem._picks(worker, generator)
        with running_stats.seeded(generator) if problem._random else nullcontext():
            outputs = module(X.index_select(0, picks))
        loss = problem.loss_fn(outputs, y.index_select(0, picks))
        wanted = names if only is None else list(only)
        # autograd runs only the nodes on a path from the loss to these leaves
        grads = torch.autograd.grad(loss, [leaves[name] for name in wanted])
        value = problem._add_l2(loss.item(), grads, params, wanted)
        return value, dict(zip(wanted, grads, strict=True))

    return gradient
