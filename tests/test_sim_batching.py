"""Batched evaluation of pending gradients at a shared snapshot (runtime_options.batch) and
gradients computed ahead in a background thread (runtime_options.ahead) give the plain
simulator's history: same events, same draws, losses and models to 1e-6."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asyncopt.api import train
from asyncopt.config import Evaluation
from asyncopt.errors import ConfigError
from asyncopt.problems.registry import make_problem
from asyncopt.rules.registry import make_rule

SPEED = {"profile": "linear", "permute": True, "noise": "half_normal", "noise_grows": True}
PROTOCOLS = [
    {"name": "malenia"},
    {"name": "rennala", "batch_size": 7},  # cancels in-flight work after every step
    {"name": "minibatch", "wait_for": 5},
    {"name": "ringleader"},
    {"name": "ringmaster", "max_delay": 4, "stops": True},
    {"name": "asgd"},
]


def _run(protocol: dict, batch: int, ahead: int = 0, gradient: str = "closed_form"):
    problem = make_problem({"name": "mlp", "dataset": "digits", "hidden": 16, "batch_size": 4,
                            "partition": "dirichlet", "alpha": 0.3, "gradient": gradient}, 12, 1)
    return train(problem, make_rule({"name": "sgd", "lr": 0.1}, 12), protocol, speed=SPEED,
                 budget={"arrivals": 600}, seed=5, evaluation=Evaluation(20, "steps"),
                 runtime_options={"batch": batch, "ahead": ahead})


def _assert_same_history(plain, fast):
    for column in ("now", "worker", "version", "delay", "action", "compute_time"):
        assert np.array_equal(plain.history.arrivals[column], fast.history.arrivals[column]), column
    np.testing.assert_allclose(fast.history.arrivals["loss"], plain.history.arrivals["loss"],
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fast.history.evaluations["loss"],
                               plain.history.evaluations["loss"], rtol=1e-6)
    for k, value in plain.params.items():
        torch.testing.assert_close(fast.params[k], value, rtol=0.0, atol=1e-6)


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda spec: spec["name"])
def test_batched_evaluation_gives_the_plain_history(protocol):
    plain = _run(protocol, 1)
    for batch in (3, 64):  # 3: batches smaller than the waiting jobs, the rest waits
        _assert_same_history(plain, _run(protocol, batch))


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda spec: spec["name"])
def test_gradients_computed_ahead_give_the_plain_history(protocol):
    plain = _run(protocol, 1)
    for ahead in (1, 4, 64):  # 64: far ahead, so cancelled jobs were often computed already
        fast = _run(protocol, 1, ahead=ahead)
        _assert_same_history(plain, fast)
        # the same computations in the same order per worker: bit for bit, in fact
        assert np.array_equal(fast.history.arrivals["loss"], plain.history.arrivals["loss"],
                              equal_nan=True)
        assert all(torch.equal(fast.params[k], v) for k, v in plain.params.items())


def test_computing_ahead_with_autograd_gradients_gives_the_plain_history():
    # autograd problems are not safe on two threads at once: their gradients take turns
    plain = _run(PROTOCOLS[1], 1, gradient="autograd")
    _assert_same_history(plain, _run(PROTOCOLS[1], 1, ahead=4, gradient="autograd"))


def test_cancelled_gradients_computed_ahead_give_their_draws_back():
    from asyncopt.runtimes.sim import ahead

    wasted, close = [], ahead.Ahead.close

    def counted(self):  # the real close, its wasted count noted
        wasted.append(self.wasted)
        close(self)

    ahead.Ahead.close = counted
    try:
        fast = _run(PROTOCOLS[1], 1, ahead=64)
    finally:
        ahead.Ahead.close = close
    assert wasted[0] > 0  # cancelled work was computed ahead, and the history is still the same
    _assert_same_history(_run(PROTOCOLS[1], 1), fast)


def test_an_error_in_a_gradient_computed_ahead_is_raised_by_the_run():
    problem = make_problem({"name": "quadratic", "dim": 4}, 3, 0)

    def broken(params, worker, generator):
        raise RuntimeError("broken gradient")

    problem.loss_and_grad = broken
    with pytest.raises(RuntimeError, match="broken gradient"):
        train(problem, make_rule({"name": "sgd", "lr": 0.1}, 3), "asgd",
              budget={"arrivals": 10}, runtime_options={"ahead": 2})


def test_ahead_and_batch_are_not_combined():
    with pytest.raises(ConfigError, match=r"runtime_options\.ahead"):
        _run(PROTOCOLS[0], 4, ahead=2)


def test_cancelled_work_really_happens_in_the_compared_runs():
    actions = _run(PROTOCOLS[1], 64).history.arrivals["action"]
    assert (actions == "cancel").sum() > 0 and (actions == "step").sum() > 10


def test_malenia_evaluates_many_gradients_per_call():
    problem = make_problem({"name": "mlp", "dataset": "digits", "hidden": 16, "batch_size": 4},
                           12, 1)
    sizes, batched = [], problem.loss_and_grads

    def counted(params, workers, generators):  # the real computation, its batch size noted
        sizes.append(len(workers))
        return batched(params, workers, generators)

    problem.loss_and_grads = counted
    train(problem, make_rule({"name": "sgd", "lr": 0.1}, 12), "malenia", speed=SPEED,
          budget={"arrivals": 300}, seed=5, runtime_options={"batch": 64})
    assert max(sizes) == 12 and sum(sizes) / len(sizes) > 3
