"""Several workers' stochastic gradients at one model in one pass: ``torch.func.vmap``.

The simulator's batched evaluation (``runtime_options.batch = k``, :mod:`asyncopt.runtimes.sim.
loop`) hands a problem the k pending computations that started at the same snapshot x_v. For a
:class:`~asyncopt.problems.supervised.SupervisedProblem` they are

    g_j = ∇_x (1/B) Σ_{b ≤ B} ℓ(model(x_v; a_{j,b}), y_{j,b}),   j = 1..k,

worker j's minibatch drawn from its own shard with its own generator, exactly as one at a time.
Stacking the k minibatches into a k × B × ... tensor and mapping ``grad_and_value`` over the
first axis computes all k in one forward and one backward pass: one kernel launch per layer
instead of k, which is what pays on a GPU, where a small model's minibatch leaves most of the
device idle (on the CPU the work is the same either way). Each slice is its own minibatch, so a
BatchNorm layer still normalizes with that worker's batch statistics; the mapped module keeps no
running statistics (``torch.func.replace_all_batch_norm_modules_``), which the workers' modules
never report anyway (:mod:`asyncopt.problems.running_stats`). The gradients equal the one-at-a-
time ones to float rounding, so the simulator's history does too (``tests/test_sim_batching.py``).

Models with dropout fall back to one gradient at a time (their masks come from each worker's
seeded stream, which a mapped pass cannot reproduce), and so does a model or loss that ``vmap``
cannot map, with a warning, the generators' draws given back first.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, replace_all_batch_norm_modules_, vmap

from asyncopt.tree import Params

if TYPE_CHECKING:
    from asyncopt.problems.supervised import SupervisedProblem


def loss_and_grads(problem: SupervisedProblem, params: Params, workers: Sequence[int],
                   generators: Sequence[torch.Generator]) -> list[tuple[float, Params]]:
    """``problem.loss_and_grad`` for each of ``workers`` at ``params``, in one mapped pass."""
    if len(workers) == 1 or problem._random or problem.__dict__.get("_unmappable", False):
        return _one_at_a_time(problem, params, workers, generators)
    states = [generator.get_state() for generator in generators]
    picks = [problem._picks(worker, generator)
             for worker, generator in zip(workers, generators, strict=True)]
    shards = [problem._shard_data[worker] for worker in workers]
    X = torch.stack([Xs.index_select(0, p) for (Xs, _), p in zip(shards, picks, strict=True)])
    y = torch.stack([ys.index_select(0, p) for (_, ys), p in zip(shards, picks, strict=True)])
    module = _module(problem)
    leaves = {k: v.detach() for k, v in params.items()}

    def loss(p: Params, inputs: Tensor, targets: Tensor) -> Tensor:
        return problem.loss_fn(functional_call(module, p, (inputs,)), targets)

    try:
        grads, losses = vmap(grad_and_value(loss), in_dims=(None, 0, 0))(leaves, X, y)
    except RuntimeError as error:  # a model or loss that vmap cannot map: the plain path
        warnings.warn(f"batched gradients are not available for this model or loss ({error}); "
                      f"computing them one at a time", RuntimeWarning, stacklevel=3)
        problem.__dict__["_unmappable"] = True
        for generator, state in zip(generators, states, strict=True):
            generator.set_state(state)
        return _one_at_a_time(problem, params, workers, generators)
    out = []
    for j, value in enumerate(losses.tolist()):
        rows = [grads[k][j] for k in leaves]
        out.append((problem._add_l2(value, rows, params), dict(zip(leaves, rows, strict=True))))
    return out


def _one_at_a_time(problem: Any, params: Params, workers: Sequence[int],
                   generators: Sequence[torch.Generator]) -> list[tuple[float, Params]]:
    return [problem.loss_and_grad(params, worker, generator)
            for worker, generator in zip(workers, generators, strict=True)]


def _module(problem: Any) -> nn.Module:
    """A copy of the problem's training module (on its device) whose BatchNorm layers keep no
    running statistics, made once (``SupervisedProblem.to`` drops it)."""
    module = problem.__dict__.get("_vmap_module")
    if module is None:
        module = replace_all_batch_norm_modules_(copy.deepcopy(problem.module))
        problem.__dict__["_vmap_module"] = module
    return module
