"""A block's gradient (PASSM+'s partition, a random block) is the full gradient restricted to the
block, bit for bit, whichever way the problem computes it; and it costs less where it can."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from asyncopt.problems.closed_form import ClosedFormProblem
from asyncopt.problems.registry import make_problem
from asyncopt.problems.supervised import SupervisedProblem
from asyncopt.runtimes.common.generators import worker_generators
from asyncopt.runtimes.common.layout import partition

SIZES = [64, 16, 12, 10]


def _chain() -> nn.Module:
    return nn.Sequential(*[m for a, b in itertools.pairwise(SIZES)
                           for m in (nn.Linear(a, b), nn.ReLU())][:-1])


def _problems() -> dict[str, SupervisedProblem]:
    generator = torch.Generator().manual_seed(0)
    X, y = torch.rand(60, 64, generator=generator), torch.arange(60) % 10
    shards = [np.arange(30), np.arange(30, 60)]
    return {"closed_form": ClosedFormProblem(_chain, X, y, shards, batch_size=8, l2=1e-3),
            "autograd": SupervisedProblem(_chain, nn.CrossEntropyLoss(), X, y, shards,
                                          batch_size=8, l2=1e-3)}


def _blocks(names: list[str]) -> list[list[str]]:
    """Every partition of 2 and 3 runs, single leaves, and a few scattered subsets."""
    sizes = [1] * len(names)
    runs = [[names[j] for j in run] for k in (2, 3) for run in partition(sizes, k)]
    return runs + [[name] for name in names] + [names[::2], names[1::3], names[-1:] + names[:1]]


@pytest.mark.parametrize("kind", ["closed_form", "autograd"])
def test_a_blocks_gradient_is_the_full_gradient_restricted_to_it_bit_for_bit(kind):
    problem = _problems()[kind]
    params = problem.init_params(torch.Generator().manual_seed(1))
    gradient = problem.gradient_at(params, 1)
    for block in _blocks(list(params)):
        full_loss, full = gradient(worker_generators(3, 2)[1])
        loss, grads = gradient(worker_generators(3, 2)[1], block)
        assert loss == full_loss and list(grads) == block
        for name in block:
            assert torch.equal(grads[name], full[name]), (kind, block, name)


def test_the_default_block_gradient_restricts_the_full_one():
    problem = make_problem({"name": "quadratic", "dim": 6}, 2, 0)
    params = problem.init_params(torch.Generator().manual_seed(0))
    gradient = problem.gradient_at(params, 0)
    loss, grads = gradient(worker_generators(0, 2)[0], ["x"])
    assert (loss, list(grads)) == (problem.loss_and_grad(params, 0, worker_generators(0, 2)[0])[0],
                                   ["x"])


class _Tied(nn.Module):
    """An autoencoder-like model whose decoder reuses the encoder's weight (tied weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Linear(64, 10)
        self.decode = nn.Linear(10, 64)
        self.decode.weight = nn.Parameter(torch.zeros(64, 10))
        self.head = nn.Linear(64, 10)
        self.head.weight = self.encode.weight  # tied: one tensor in two places

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.decode(torch.relu(self.encode(x)))))


def test_tied_weights_are_bound_in_every_place_and_their_gradient_sums_both_uses():
    base = _problems()["autograd"]
    problem = SupervisedProblem(_Tied, nn.CrossEntropyLoss(), base.X_train, base.y_train,
                                base.shards, batch_size=8)
    params = problem.init_params(torch.Generator().manual_seed(0))
    assert "head.weight" not in params  # one tensor, named once
    gradient = problem.gradient_at(params, 0)
    for only in (None, ["encode.weight"], ["head.bias", "decode.weight"]):
        loss, grads = gradient(worker_generators(0, 2)[0], only)
        plain_loss, plain = problem.loss_and_grad(params, 0, worker_generators(0, 2)[0])
        assert loss == pytest.approx(plain_loss, rel=1e-6)
        for name in grads:
            torch.testing.assert_close(grads[name], plain[name], rtol=1e-5, atol=1e-7)
    with torch.no_grad():  # both places follow the shared tensor's values
        params["encode.weight"].add_(1.0)
    moved_loss, _ = gradient(worker_generators(0, 2)[0])
    assert moved_loss == pytest.approx(problem.loss_and_grad(
        params, 0, worker_generators(0, 2)[0])[0], rel=1e-6)
