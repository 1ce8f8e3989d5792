"""Supervised problems evaluate several workers' gradients in one ``torch.func.vmap`` pass
(:mod:`asyncopt.problems.batched`), the simulator's ``runtime_options.batch`` path on a GPU:
the same gradients and the same draws as one at a time, BatchNorm included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from asyncopt.api import train
from asyncopt.config import Evaluation
from asyncopt.problems.registry import make_problem
from asyncopt.problems.supervised import SupervisedProblem
from asyncopt.rules.registry import make_rule
from asyncopt.runtimes.common.generators import worker_generators

CNN = {"name": "cnn", "dataset": "digits", "model": "resnet8", "batch_size": 4}


class Branchy(nn.Module):
    """A model whose forward pass branches on its data, which vmap cannot map."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x) if bool(x.sum() > -1e9) else -self.linear(x)


class Dropped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3))

    def forward(self, x):
        return self.layers(x)


def _small(factory) -> SupervisedProblem:
    X, y = torch.randn(60, 4, generator=torch.Generator().manual_seed(0)), torch.arange(60) % 3
    return SupervisedProblem(factory, F.cross_entropy, X, y,
                             [np.arange(i, 60, 3) for i in range(3)], batch_size=5)


def _both(problem, workers):
    params = problem.init_params(torch.Generator().manual_seed(0))
    plain = worker_generators(7, problem.num_workers)
    one = [problem.loss_and_grad(params, w, plain[w]) for w in workers]
    generators = [worker_generators(7, problem.num_workers)[w] for w in workers]
    many = problem.loss_and_grads(params, workers, generators)
    after = [g.get_state() for g in generators]
    return one, many, after


def _assert_same(one, many, atol):
    for (loss_a, grads_a), (loss_b, grads_b) in zip(one, many, strict=True):
        assert loss_b == pytest.approx(loss_a, abs=atol)
        for k, value in grads_a.items():
            torch.testing.assert_close(grads_b[k], value, rtol=0.0, atol=atol)


def test_mapped_gradients_equal_one_at_a_time_with_batchnorm():
    problem = make_problem(CNN, 5, 0)
    one, many, _ = _both(problem, [0, 1, 2, 3, 4])
    _assert_same(one, many, 1e-6)
    assert "_vmap_module" in problem.__dict__  # the mapped pass really ran


def test_dropout_and_unmappable_models_are_computed_one_at_a_time():
    one, many, _ = _both(_small(Dropped), [0, 1, 2])
    _assert_same(one, many, 0.0)  # the worker's seeded masks: exactly the same
    problem = _small(Branchy)
    with pytest.warns(RuntimeWarning, match="one at a time"):
        one, many, after = _both(problem, [0, 1, 2])
    _assert_same(one, many, 0.0)  # the failed pass's draws were given back first
    reference = worker_generators(7, 3)
    for j, state in enumerate(after):
        problem._picks(j, reference[j])
        assert torch.equal(state, reference[j].get_state())


@pytest.mark.parametrize("protocol", [{"name": "malenia"}, {"name": "rennala", "batch_size": 5}],
                         ids=["malenia", "rennala"])
def test_the_simulator_batched_on_a_cnn_gives_the_plain_history(protocol):
    runs = [train(make_problem(CNN, 8, 1), make_rule({"name": "sgd", "lr": 0.05}, 8), protocol,
                  speed={"profile": "linear", "noise": "half_normal"}, seed=3,
                  budget={"arrivals": 160}, evaluation=Evaluation(40, "steps"),
                  runtime_options={"batch": batch}) for batch in (1, 8)]
    plain, fast = (run.history for run in runs)
    for column in ("now", "worker", "version", "delay", "action"):
        assert np.array_equal(plain.arrivals[column], fast.arrivals[column]), column
    np.testing.assert_allclose(fast.arrivals["loss"], plain.arrivals["loss"], rtol=1e-5)
    for k, value in runs[0].params.items():
        torch.testing.assert_close(runs[1].params[k], value, rtol=1e-5, atol=1e-6)
