"""A module bound once to the parameters gives the problem's own gradient, and follows the
parameters' values as they change in place (what a lock-free worker relies on)."""

from __future__ import annotations

import torch
from torch import nn

from asyncopt.problems.base import Problem
from asyncopt.problems.registry import make_problem
from asyncopt.problems.supervised import SupervisedProblem
from asyncopt.runtimes.common.generators import worker_generators


def _digits(**options) -> SupervisedProblem:
    spec = {"name": "mlp", "dataset": "digits", "hidden": 16, "batch_size": 8,
            "gradient": "autograd", **options}
    return make_problem(spec, 3, 0)


def _same(a: tuple[float, dict], b: tuple[float, dict]) -> None:
    assert a[0] == b[0]
    assert list(a[1]) == list(b[1])
    for key in a[1]:
        torch.testing.assert_close(a[1][key], b[1][key], rtol=0, atol=1e-6)


def test_the_bound_gradient_equals_loss_and_grad_and_follows_in_place_changes():
    problem = _digits(l2=1e-3)
    params = problem.init_params(torch.Generator().manual_seed(0))
    gradient = problem.gradient_at(params, 1)
    assert gradient.__module__ == "asyncopt.problems.bound"
    bound_draws, plain_draws = worker_generators(0, 3)[1], worker_generators(0, 3)[1]
    for step in range(5):
        _same(gradient(bound_draws), problem.loss_and_grad(params, 1, plain_draws))
        with torch.no_grad():  # the values move in place, as other workers' steps move them
            for value in params.values():
                value.add_(0.1 * (step + 1))


def test_a_bound_module_with_dropout_and_batchnorm_gives_the_same_gradient():
    def net() -> nn.Module:
        return nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3),
                             nn.Linear(32, 10))

    base = _digits()
    problem = SupervisedProblem(net, nn.CrossEntropyLoss(), base.X_train, base.y_train,
                                base.shards, batch_size=16)
    params = problem.init_params(torch.Generator().manual_seed(1))
    gradient = problem.gradient_at(params, 0)
    bound_draws, plain_draws = worker_generators(2, 3)[0], worker_generators(2, 3)[0]
    for _ in range(3):
        _same(gradient(bound_draws), problem.loss_and_grad(params, 0, plain_draws))


def test_problems_with_their_own_gradient_keep_it():
    closed = _digits(gradient="closed_form")
    params = closed.init_params(torch.Generator().manual_seed(0))
    assert type(closed).loss_and_grad is not SupervisedProblem.loss_and_grad
    _same(closed.gradient_at(params, 0)(worker_generators(0, 3)[0]),
          closed.loss_and_grad(params, 0, worker_generators(0, 3)[0]))
    quadratic = make_problem({"name": "quadratic", "dim": 4}, 2, 0)
    x = quadratic.init_params(torch.Generator().manual_seed(0))
    assert Problem.gradient_at is type(quadratic).gradient_at
    _same(quadratic.gradient_at(x, 1)(worker_generators(0, 2)[1]),
          quadratic.loss_and_grad(x, 1, worker_generators(0, 2)[1]))
