"""Closed-form gradients: the same losses, gradients and simulated histories as autograd."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from asyncopt.api import train
from asyncopt.config import Evaluation
from asyncopt.errors import ConfigError
from asyncopt.problems.builtin import mlp
from asyncopt.problems.closed_form import ClosedFormProblem, cross_entropy_grad, dense_relu_layers
from asyncopt.problems.datasets import load_dataset
from asyncopt.problems.partition import partition
from asyncopt.problems.registry import make_problem
from asyncopt.problems.supervised import SupervisedProblem
from asyncopt.rules.registry import make_rule

SPECS = {"logistic": {"name": "logistic", "dataset": "wine", "batch_size": 4},
         "mlp": {"name": "mlp", "dataset": "digits", "hidden": 32, "batch_size": 4,
                 "partition": "dirichlet", "alpha": 0.1}}


def _pair(name: str, workers: int = 20, **keys) -> tuple[SupervisedProblem, SupervisedProblem]:
    spec = {**SPECS[name], **keys}
    return (make_problem({**spec, "gradient": "autograd"}, workers, 0),
            make_problem({**spec, "gradient": "closed_form"}, workers, 0))


@pytest.mark.parametrize("name", ["logistic", "mlp"])
@pytest.mark.parametrize("l2", [0.0, 0.05])
def test_losses_and_gradients_equal_autograd_on_many_minibatches(name, l2):
    plain, fast = _pair(name, l2=l2, batch_size=16 if l2 else 4)
    assert type(plain) is SupervisedProblem and type(fast) is ClosedFormProblem
    for point in range(5):
        params = plain.init_params(torch.Generator().manual_seed(point))
        # points far from initialization too: large logits and many dead ReLUs
        params = {k: v * (1 + 2 * point) for k, v in params.items()}
        before = {k: v.clone() for k, v in params.items()}
        for worker in range(plain.num_workers):
            seed = 100 * point + worker
            loss, grads = plain.loss_and_grad(params, worker, torch.Generator().manual_seed(seed))
            value, fast_grads = fast.loss_and_grad(params, worker,
                                                   torch.Generator().manual_seed(seed))
            assert value == pytest.approx(loss, rel=1e-6, abs=1e-6)
            assert list(fast_grads) == list(grads)
            for k in grads:
                torch.testing.assert_close(fast_grads[k], grads[k], rtol=1e-5, atol=1e-6)
                assert not fast_grads[k].requires_grad
        assert all(torch.equal(params[k], before[k]) for k in params)


@pytest.mark.parametrize("hidden", [(), (7,), (9, 5)])
def test_the_kernel_equals_autograd_in_float64(hidden):
    """Linear chains of any depth, far from the optimum, to float64 rounding."""
    torch.manual_seed(0)
    widths = (6, *hidden, 4)
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers += [nn.Linear(widths[i], widths[i + 1]), nn.ReLU()]
    module = (nn.Sequential(*layers[:-1]) if hidden else layers[0]).double()
    names = dense_relu_layers(module)
    assert names is not None
    for trial in range(20):
        params = {k: 3 * torch.randn_like(v, dtype=torch.float64).requires_grad_()
                  for k, v in module.named_parameters()}
        params = {k: v.detach().requires_grad_() for k, v in params.items()}
        X, y = torch.randn(1 + trial, 6, dtype=torch.float64), torch.randint(4, (1 + trial,))
        loss = F.cross_entropy(functional_call(module, params, (X,)), y)
        expected = torch.autograd.grad(loss, list(params.values()))
        targets = F.one_hot(y, 4).double() / -len(y)
        value, grads = cross_entropy_grad(params, names, X, targets)
        assert value == pytest.approx(loss.item(), rel=1e-12, abs=1e-12)
        for k, g in zip(params, expected, strict=True):
            torch.testing.assert_close(grads[k], g, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("protocol", ["asgd", "ringleader"])
def test_a_simulated_run_has_the_same_history_with_either_gradient(protocol):
    speed = {"profile": "linear", "permute": True, "noise": "half_normal", "noise_grows": True}
    runs = []
    for problem in _pair("mlp", hidden=64):
        runs.append(train(problem, make_rule({"name": "sgd", "lr": 0.05}, 20), protocol,
                          speed=speed, budget={"arrivals": 400}, seed=3,
                          evaluation=Evaluation(100, "steps")))
    plain, fast = (run.history for run in runs)
    assert plain.num_arrivals == fast.num_arrivals == 400
    for column in ("now", "worker", "version", "delay", "compute_time"):
        assert np.array_equal(plain.arrivals[column], fast.arrivals[column]), column
    np.testing.assert_allclose(fast.arrivals["loss"], plain.arrivals["loss"], rtol=1e-6,
                               atol=1e-6)
    np.testing.assert_allclose(fast.evaluations["loss"], plain.evaluations["loss"], rtol=1e-6)
    for k, value in runs[0].params.items():
        torch.testing.assert_close(runs[1].params[k], value, rtol=0.0, atol=1e-6)


def test_auto_is_the_closed_form_for_the_built_ins_and_it_survives_pickling():
    state = torch.get_rng_state()
    for spec in SPECS.values():
        assert type(make_problem(spec, 3, 0)) is ClosedFormProblem
    assert torch.equal(torch.get_rng_state(), state)
    problem = make_problem(SPECS["mlp"], 3, 0)
    copy = pickle.loads(pickle.dumps(problem))
    params = problem.init_params(torch.Generator().manual_seed(0))
    first = problem.loss_and_grad(params, 2, torch.Generator().manual_seed(1))
    again = copy.loss_and_grad(params, 2, torch.Generator().manual_seed(1))
    assert first[0] == again[0]
    assert all(torch.equal(first[1][k], again[1][k]) for k in params)


def test_bad_gradient_values_and_models_name_their_field():
    with pytest.raises(ConfigError, match=r"problem\.gradient = 'fast' .*auto, autograd"):
        make_problem({"name": "mlp", "gradient": "fast"}, 2, 0)
    with pytest.raises(ConfigError, match=r"problem = 'gradient'"):
        make_problem({"name": "quadratic", "gradient": "autograd"}, 2, 0)
    data = load_dataset("synthetic", seed=0, num_samples=60, num_features=5, num_classes=3)
    shards = partition(data.y_train.numpy(), len(data.y_train), 2, "iid", seed=0)
    tanh = lambda: nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))  # noqa: E731
    shape = r"model = 'Sequential\(Linear, Tanh, Linear\)' .*closed-form"
    with pytest.raises(ConfigError, match=shape):
        ClosedFormProblem(tanh, data.X_train, data.y_train, shards, batch_size=4)
    assert dense_relu_layers(mlp(5, 4, 3)) == [("0.weight", "0.bias"), ("2.weight", "2.bias")]
    assert dense_relu_layers(nn.Linear(5, 3, bias=False)) is None
    assert dense_relu_layers(nn.Sequential(nn.Linear(5, 3), nn.ReLU())) is None


def test_closed_form_gradients_are_one_flat_vector_that_survives_pickling():
    from asyncopt import tree

    problem = make_problem({"name": "mlp", "dataset": "digits", "hidden": 8, "batch_size": 4},
                           3, 0)
    params = problem.init_params(torch.Generator().manual_seed(0))
    _, grads = problem.loss_and_grad(params, 1, torch.Generator().manual_seed(1))
    assert isinstance(grads, tree.FlatParams) and list(grads) == list(params)
    back = pickle.loads(pickle.dumps(grads))
    assert torch.equal(back.vector, grads.vector)
    back["0.weight"].zero_()  # leaves are views of the vector again, as before pickling
    assert float(back.vector[:back["0.weight"].numel()].abs().sum()) == 0.0


@pytest.mark.parametrize("hidden", [(), (8,), (8, 5)], ids=["logistic", "mlp", "deep"])
def test_the_torchscript_kernel_is_the_python_gradient_bit_for_bit(hidden):
    import itertools

    from asyncopt.problems import closed_form

    sizes = [64, *hidden, 10]

    def model():
        return nn.Sequential(*[m for a, b in itertools.pairwise(sizes)
                               for m in (nn.Linear(a, b), nn.ReLU())][:-1])

    problem = ClosedFormProblem(model, torch.rand(40, 64),
                                torch.arange(40) % 10, [np.arange(20), np.arange(20, 40)],
                                batch_size=4)
    params = problem.init_params(torch.Generator().manual_seed(0))
    assert not isinstance(closed_form._scripted(), type(closed_form.chain_grad))  # compiled
    loss, grads = problem.loss_and_grad(params, 1, torch.Generator().manual_seed(2))
    picks = problem._picks(1, torch.Generator().manual_seed(2))
    X, _ = problem._shard_data[1]
    value, by_name = cross_entropy_grad(params, problem.layers, X.index_select(0, picks),
                                        problem._targets[1].index_select(0, picks))
    assert loss == value
    for name, grad in by_name.items():
        assert torch.equal(grads[name], grad)
    # parameters in another key order take the Python path, with the same result
    reordered = dict(reversed(list(params.items())))
    loss_again, grads_again = problem.loss_and_grad(reordered, 1,
                                                    torch.Generator().manual_seed(2))
    assert loss_again == loss and all(torch.equal(grads_again[k], grads[k]) for k in grads)
