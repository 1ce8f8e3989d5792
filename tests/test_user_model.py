"""Bring your own model: user modules, losses and datasets through ``asyncopt.train``."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import asyncopt
from asyncopt import tree
from asyncopt.errors import ConfigError
from asyncopt.problems import SupervisedProblem, check_portable, user_problem


def _blobs(n: int = 240, d: int = 4, classes: int = 3, seed: int = 0):
    """Separable Gaussian blobs: (X, y) float32 / int64."""
    rng = np.random.default_rng(seed)
    y = rng.integers(classes, size=n)
    X = rng.standard_normal((n, d)) * 0.5 + 2.0 * np.eye(classes, d)[y]
    return torch.tensor(X, dtype=torch.float32), torch.tensor(y)


def bn_net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def dropout_net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))


class Pairs(Dataset):
    """A plain map-style dataset of numpy (float64 input, int target) pairs."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor) -> None:
        self.X, self.y = X.double().numpy(), y.tolist()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int):
        return self.X[index], self.y[index]


def test_train_a_batchnorm_model_end_to_end(tmp_path):
    X, y = _blobs()
    result = asyncopt.train(bn_net, {"name": "adam", "lr": 0.05}, "asgd", loss=F.cross_entropy,
                            data=Pairs(X[:200], y[:200]), eval_data=(X[200:], y[200:]),
                            workers=4, budget={"steps": 150}, evaluation={"every": 50},
                            speed={"profile": "linear"}, run_dir=tmp_path)
    assert result.summary["final"]["accuracy"] > 0.9
    # the server's model is the parameters; the buffers are recomputed, not trained
    model = result.model
    assert set(result.params) == {name for name, _ in bn_net().named_parameters()}
    assert isinstance(model, nn.Sequential) and not model.training
    with torch.no_grad():
        hidden = model[0](X[:200])
        accuracy = float((model(X[200:]).argmax(1) == y[200:]).double().mean())
    torch.testing.assert_close(model[1].running_mean, hidden.mean(0))
    torch.testing.assert_close(model[1].running_var, hidden.var(0, unbiased=True))
    assert accuracy == pytest.approx(result.summary["final"]["accuracy"])
    # model.pt: a plain state_dict, loadable without pickled code
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(state) == set(model.state_dict())
    loaded = asyncopt.load_model(tmp_path / "model.pt", bn_net()).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), model(X))
    asyncopt.save_model(result, tmp_path / "copy.pt")
    assert torch.equal(asyncopt.load_model(tmp_path / "copy.pt")["1.running_var"],
                       model[1].running_var)


def test_worker_scratch_buffers_never_reach_the_evaluation():
    X, y = _blobs()
    problem = user_problem(bn_net, F.cross_entropy, (X, y), workers=3, eval_data=(X, y))
    params = problem.init_params(torch.Generator().manual_seed(0))
    before = problem.evaluate(params)
    generator = torch.Generator().manual_seed(1)
    for worker in range(3):
        problem.loss_and_grad(params, worker, generator)
    assert problem.module[1].num_batches_tracked > 0  # the worker's own, scratch, buffers
    assert problem.evaluate(params) == before


def test_mean_only_and_per_sample_losses_give_the_same_objective():
    X, y = _blobs()
    kwargs = {"workers": 5, "partition": {"name": "dirichlet", "alpha": 0.3}, "seed": 2}
    fast = user_problem(bn_net, F.cross_entropy, (X, y), **kwargs)
    plain = user_problem(bn_net, nn.CrossEntropyLoss(), (X, y), **kwargs)
    assert fast.per_sample_loss and not plain.per_sample_loss
    assert len({len(s) for s in plain.shards}) > 1  # unequal shards: unequal sample weights
    params = fast.init_params(torch.Generator().manual_seed(0))
    first, second = fast.evaluate(params), plain.evaluate(params)
    assert second["loss"] == pytest.approx(first["loss"], rel=1e-5)
    assert second["grad_norm_sq"] == pytest.approx(first["grad_norm_sq"], rel=1e-4)


def test_partitions_metrics_and_a_module_instance():
    X, y = _blobs(60)
    given = [list(range(0, 30)), list(range(20, 60))]
    start = nn.Linear(4, 3)
    problem = user_problem(start, F.cross_entropy, TensorDataset(X, y), workers=2,
                           partition=given, eval_data=(X, y),
                           metrics={"top2": lambda out, t: (out.topk(2, 1).indices == t[:, None])
                                    .any(1).float().mean()})
    assert [s.tolist() for s in problem.shards] == given
    params = problem.init_params(torch.Generator().manual_seed(5))
    assert torch.equal(params["weight"], start.weight.detach())  # training starts from it
    metrics = problem.evaluate(params)
    assert metrics["accuracy"] <= metrics["top2"] <= 1.0
    iid = user_problem(nn.Linear(4, 3), F.cross_entropy, (X, y), workers=7)
    assert sorted(len(s) for s in iid.shards) == [8, 8, 8, 9, 9, 9, 9]


def test_dropout_runs_are_deterministic_and_leave_the_global_rng_alone():
    X, y = _blobs()
    state = torch.get_rng_state()
    runs = [asyncopt.train(dropout_net, {"name": "sgd", "lr": 0.1}, loss=F.cross_entropy,
                           data=(X, y), workers=3, budget={"steps": 30}) for _ in range(2)]
    assert torch.equal(torch.get_rng_state(), state)
    assert np.array_equal(runs[0].history.arrivals["loss"], runs[1].history.arrivals["loss"])
    assert all(torch.equal(runs[0].params[k], runs[1].params[k]) for k in runs[0].params)


def test_the_problem_pickles_without_its_modules():
    X, y = _blobs()
    problem = user_problem(bn_net, F.cross_entropy, (X, y), workers=2, eval_data=(X, y))
    assert not any(isinstance(v, nn.Module) for v in problem.__getstate__().values())
    copy = pickle.loads(pickle.dumps(problem))
    params = problem.init_params(torch.Generator().manual_seed(0))
    for p in (problem, copy):
        loss, grads = p.loss_and_grad(params, 1, torch.Generator().manual_seed(3))
        p.result = (loss, grads)
    assert problem.result[0] == copy.result[0]
    assert all(torch.equal(problem.result[1][k], copy.result[1][k]) for k in params)
    assert copy.evaluate(params) == problem.evaluate(params)


def test_unpicklable_parts_are_named_before_a_worker_starts():
    X, y = _blobs(20)
    lam = user_problem(lambda: nn.Linear(4, 3), F.cross_entropy, (X, y), workers=2)
    with pytest.raises(ConfigError, match=r"model = '.*<lambda>' .*'processes' runtime.*class"):
        check_portable(lam, "processes")
    local_loss = user_problem(nn.Linear(4, 3), lambda o, t: F.cross_entropy(o, t), (X, y),
                              workers=2)
    with pytest.raises(ConfigError, match=r"loss = '.*<lambda>' .*module level"):
        check_portable(local_loss, "processes")
    holder = nn.Linear(4, 3)
    holder.hook = lambda: None  # an instance that cannot be pickled
    with pytest.raises(ConfigError, match=r"model = 'copy of Linear' .*instance must be"):
        check_portable(user_problem(holder, F.cross_entropy, (X, y), workers=2), "processes")
    check_portable(user_problem(bn_net, F.cross_entropy, (X, y), workers=2), "processes")
    # train checks before starting any worker; the simulator pickles nothing
    with pytest.raises(ConfigError, match=r"model = '.*<lambda>'"):
        asyncopt.train(lam, {"name": "sgd", "lr": 0.1}, runtime="processes",
                       budget={"steps": 1})
    assert asyncopt.train(lam, {"name": "sgd", "lr": 0.1}, budget={"steps": 2}).model


@pytest.mark.slow
def test_a_batchnorm_dropout_model_trains_on_real_processes():
    X, y = _blobs()
    result = asyncopt.train(bn_dropout_net, {"name": "adam", "lr": 0.05}, loss=F.cross_entropy,
                            data=(X, y), eval_data=(X, y), workers=2, budget={"steps": 60},
                            runtime="processes")
    assert result.summary["status"] == "completed"
    assert result.summary["final"]["accuracy"] > 0.8
    assert int(result.model[1].num_batches_tracked) == 1  # recomputed on the server


def bn_dropout_net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(6, 3))


class Wide(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(10, 3)

    def forward(self, x):
        return self.layer(x)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"model": Wide}, r"model = 'Wide' .*accepts the training inputs \(shape \(4, 4\).*mat1"),
    ({"loss": lambda o, t: F.cross_entropy(o, t, reduction="none")},
     r"loss = '.*<lambda>' .*one number per batch.*shape \(4,\)"),
    ({"loss": F.mse_loss}, r"loss = 'mse_loss' .*targets \(shape \(4,\), int64\)"),
    ({"loss": F.mse_loss, "model": nn.Linear(4, 1), "data": (torch.zeros(8, 4), torch.zeros(8))},
     r"loss = 'mse_loss' .*warned: Using a target size"),
    ({"metrics": {"bad": lambda o, t: 1 / 0}}, r"metrics\['bad'\] = .*ZeroDivisionError"),
    ({"metrics": {"vec": lambda o, t: o}}, r"metrics\['vec'\] = .*one number"),
    ({"eval_data": None, "metrics": {"m": lambda o, t: 0.0}}, r"metrics = \['m'\] .*held-out"),
    ({"workers": 50, "data": (torch.zeros(5, 4), torch.zeros(5, dtype=torch.long))},
     r"workers = 50 .*at most the number of training samples \(5\)"),
    ({"partition": "sorted", "data": (torch.zeros(8, 4), torch.zeros(8, 3))},
     r"partition = 'sorted' .*class labels"),
    ({"partition": [[0, 1]]}, r"partition = '1 lists' .*one index list per worker \(2"),
    ({"partition": {"name": "dirichlet", "alpha": -1}}, r"partition\.alpha = -1"),
    ({"data": [1, 2, 3]}, r"data\[0\] = 'int' .*\(input, target\) pair"),
    ({"data": 3}, r"data = 'int' .*map-style"),
    ({"model": nn.Linear(4, 3), "data": (torch.zeros(8, 4), torch.zeros(7))},
     r"data = '8 inputs and 7 targets'"),
])
def test_bad_input_is_named_before_training(kwargs, message):
    X, y = _blobs(20)
    options = {"model": nn.Linear(4, 3), "loss": F.cross_entropy, "data": (X, y),
               "workers": 2, "eval_data": (X, y), **kwargs}
    with pytest.raises(ConfigError, match=message):
        user_problem(options.pop("model"), options.pop("loss"), options.pop("data"), **options)


def test_train_refuses_mixed_or_missing_problem_arguments():
    X, y = _blobs(20)
    problem = user_problem(nn.Linear(4, 3), F.cross_entropy, (X, y), workers=2)
    with pytest.raises(ConfigError, match=r"loss = '\(given\)' .*already has"):
        asyncopt.train(problem, {"name": "sgd"}, loss=F.cross_entropy, budget={"steps": 1})
    with pytest.raises(ConfigError, match=r"workers = None .*needs loss, data and workers"):
        asyncopt.train(nn.Linear(4, 3), {"name": "sgd"}, loss=F.cross_entropy, data=(X, y),
                       budget={"steps": 1})
    assert isinstance(problem, SupervisedProblem) and tree.numel(problem.init_params(
        torch.Generator())) == 15
