"""The simulator and the coordinator: determinism, budgets, evaluation, failures, interrupts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import simulate

from asyncopt.api import train
from asyncopt.config import Evaluation
from asyncopt.problems.base import Problem
from asyncopt.problems.registry import make_problem
from asyncopt.record import load
from asyncopt.rules.registry import make_rule

NOISY = {"profile": "sqrt", "permute": True, "noise": "half_normal", "noise_scale": 0.5}
MLP = {"name": "mlp", "dataset": "digits", "batch_size": 8, "hidden": 16}


def test_same_seed_gives_a_bit_identical_history():
    runs = [simulate(MLP, {"name": "adam", "lr": 0.01}, workers=5, speed=NOISY, seed=3,
                     steps=40) for _ in range(2)]
    for column in runs[0].history.arrivals:
        assert np.array_equal(runs[0].history.arrivals[column], runs[1].history.arrivals[column])
    for column in runs[0].history.evaluations:
        assert np.array_equal(runs[0].history.evaluations[column],
                              runs[1].history.evaluations[column], equal_nan=True)
    for name, value in runs[0].params.items():
        assert torch.equal(value, runs[1].params[name])
    other = simulate(MLP, {"name": "adam", "lr": 0.01}, workers=5, speed=NOISY, seed=4, steps=40)
    assert not np.array_equal(other.history.arrivals["now"], runs[0].history.arrivals["now"])


def test_recorded_history_reads_back_bit_identical(tmp_path, quadratic):
    result = simulate(quadratic, {"name": "sgd", "lr": 0.1}, workers=3, speed=NOISY,
                      run_dir=tmp_path / "run", steps=30)
    loaded = load(tmp_path / "run")
    for column in ("now", "worker", "version", "delay", "loss", "compute_time"):
        assert np.array_equal(loaded.arrivals[column], result.history.arrivals[column])
    assert loaded.summary["status"] == "completed"
    assert loaded.summary["version"] == 30


def test_time_budget_and_time_based_evaluation(quadratic):
    built = make_problem(quadratic, 3, 0)
    result = train(built, make_rule({"name": "sgd", "lr": 0.05}, 3), "asgd",
                   speed={"times": [1.0, 2.0, 4.0]}, budget={"time": 20.0},
                   evaluation=Evaluation(5.0, "time"))
    assert result.summary["reason"].startswith("time budget")
    assert result.history.arrivals["now"].max() <= 20.0
    assert list(result.history.evaluations["now"]) == [0.0, 5.0, 10.0, 15.0, 20.0]
    assert result.summary["now"] == 20.0


def test_training_reduces_the_loss_and_reaches_a_target(quadratic):
    result = simulate(quadratic, {"name": "sgd", "lr": 0.2}, workers=4, steps=3000,
                      target_loss=0.6)
    evaluations = result.history.evaluations
    assert evaluations["loss"][-1] <= 0.6 < evaluations["loss"][0]
    assert result.summary["reason"].startswith("target loss")
    assert result.summary["version"] < 3000


def test_divergence_stops_with_a_message_and_a_valid_run_dir(tmp_path, quadratic):
    with pytest.warns(RuntimeWarning, match="diverged"):
        result = simulate(quadratic, {"name": "sgd", "lr": 50.0}, workers=2,
                          run_dir=tmp_path / "run", steps=100000)
    assert result.summary["status"] == "diverged"
    assert "rule.lr" in result.summary["reason"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "diverged"
    assert load(tmp_path / "run").num_arrivals == result.history.num_arrivals


class _Faulty(Problem):
    """A real quadratic whose worker 1 returns NaN gradients, or which raises after N calls."""

    def __init__(self, inner: Problem, interrupt_after: int | None = None) -> None:
        self.inner, self.num_workers = inner, inner.num_workers
        self.calls, self.interrupt_after = 0, interrupt_after

    def init_params(self, generator):
        return self.inner.init_params(generator)

    def loss_and_grad(self, params, worker, generator):
        self.calls += 1
        if self.interrupt_after is not None and self.calls > self.interrupt_after:
            raise KeyboardInterrupt
        loss, grads = self.inner.loss_and_grad(params, worker, generator)
        if worker == 1:
            grads = {k: torch.full_like(v, float("nan")) for k, v in grads.items()}
        return loss, grads

    def evaluate(self, params):
        return self.inner.evaluate(params)


def test_nan_gradients_are_counted_and_never_applied(quadratic):
    problem = _Faulty(make_problem(quadratic, 2, 0))
    result = train(problem, make_rule({"name": "sgd", "lr": 0.1}, 2), "asgd",
                   speed={"times": [1.0, 1.5]}, budget={"steps": 30})
    arrivals = result.history.arrivals
    assert set(arrivals["action"][arrivals["worker"] == 1]) == {"reject"}
    assert result.summary["actions"]["reject"] > 0
    assert result.summary["status"] == "completed"
    assert all(torch.isfinite(v).all() for v in result.params.values())


def test_ctrl_c_leaves_a_readable_history(tmp_path, quadratic):
    problem = _Faulty(make_problem(quadratic, 2, 0), interrupt_after=25)
    result = train(problem, make_rule({"name": "sgd", "lr": 0.1}, 2), "asgd",
                   budget={"steps": 1000}, run_dir=tmp_path / "run")
    assert result.summary["status"] == "interrupted"
    loaded = load(tmp_path / "run")
    assert loaded.summary["status"] == "interrupted"
    assert loaded.num_arrivals == 25
    assert len(loaded.evaluations["loss"]) >= 2  # the start and the model at the interrupt


def test_every_gradient_is_computed_at_the_version_it_was_given():
    """Replay the history: with noise-free gradients, x_{k+1} = x_k − lr ∇f_i(x_{k−δ}) exactly."""
    spec = {"name": "quadratic", "dim": 4, "noise": 0.0, "heterogeneity": 2.0}
    problem = make_problem(spec, 3, 0)
    result = train(problem, make_rule({"name": "sgd", "lr": 0.1}, 3), "asgd",
                   speed={"times": [1.0, 1.7, 4.1]}, budget={"steps": 40})
    iterates = [problem.init_params(torch.Generator().manual_seed(0))]
    generator = torch.Generator().manual_seed(0)
    arrivals = result.history.arrivals
    assert arrivals["delay"].max() >= 4  # the slow worker really is stale
    for worker, version, delay in zip(arrivals["worker"], arrivals["version"], arrivals["delay"],
                                      strict=True):
        _, grads = problem.loss_and_grad(iterates[version - 1 - delay], int(worker), generator)
        iterates.append({k: v - 0.1 * grads[k] for k, v in iterates[-1].items()})
    for name, value in result.params.items():
        assert torch.allclose(value, iterates[-1][name], atol=1e-6)


def test_a_worker_that_only_sends_nan_stops_a_run_that_waits_for_it(quadratic):
    problem = _Faulty(make_problem(quadratic, 3, 0))
    with pytest.warns(RuntimeWarning, match="worker 1 sent 100 NaN/Inf gradients in a row"):
        result = train(problem, make_rule({"name": "sgd", "lr": 0.1}, 3), "malenia",
                       budget={"steps": 10})
    assert result.summary["status"] == "diverged"
    assert result.summary["version"] == 0  # Malenia never got worker 1's gradient
    largest = max(float(v.abs().max()) for v in result.params.values())
    assert f"the largest parameter is {largest:.3g} in magnitude" in result.summary["reason"]
