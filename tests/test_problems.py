"""Problems: gradients against autograd, purity, seeding, evaluation, the registry's messages."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from asyncopt import tree
from asyncopt.errors import ConfigError
from asyncopt.problems.datasets import load_dataset
from asyncopt.problems.partition import partition
from asyncopt.problems.quadratic import QuadraticProblem
from asyncopt.problems.registry import make_problem, problem_names, resolve_problem_spec
from asyncopt.problems.supervised import SupervisedProblem


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- quadratic ---------------------------------------------------------------------------------

def test_quadratic_gradient_is_autograd_of_f_i_without_noise():
    problem = QuadraticProblem(6, 3, condition=100.0, heterogeneity=2.0, noise=0.0, seed=1)
    x = problem.init_params(_gen())
    for worker in range(3):
        leaf = x["x"].clone().requires_grad_()
        diff = leaf - problem.centers[worker]
        f_i = 0.5 * (diff * problem.curvature * diff).sum()
        (expected,) = torch.autograd.grad(f_i, leaf)
        loss, grads = problem.loss_and_grad(x, worker, _gen())
        assert loss == pytest.approx(f_i.item(), rel=1e-6)
        torch.testing.assert_close(grads["x"], expected)
    assert problem.curvature.max() == 1.0
    assert float(problem.curvature.min()) == pytest.approx(0.01)


def test_quadratic_noise_is_seeded_unbiased_and_leaves_params_alone():
    problem = QuadraticProblem(4, 2, noise=0.5, seed=0)
    x = problem.init_params(_gen())
    before = tree.clone(x)
    first = problem.loss_and_grad(x, 0, _gen(7))[1]["x"]
    assert torch.equal(first, problem.loss_and_grad(x, 0, _gen(7))[1]["x"])
    assert torch.equal(x["x"], before["x"])
    generator = _gen(8)
    mean = torch.stack([problem.loss_and_grad(x, 0, generator)[1]["x"]
                        for _ in range(4000)]).mean(0)
    exact = problem.curvature * (x["x"] - problem.centers[0])
    torch.testing.assert_close(mean, exact, atol=0.03, rtol=0.0)


def test_heterogeneity_moves_the_worker_optima_but_not_the_global_one():
    same = QuadraticProblem(5, 4, heterogeneity=0.0, seed=3)
    assert torch.equal(same.centers, same.optimum.expand(4, 5))
    assert same.optimal_value == 0.0
    spread = QuadraticProblem(5, 4, heterogeneity=3.0, seed=3)
    assert torch.equal(spread.optimum, same.optimum)
    distances = (spread.centers - spread.optimum).norm(dim=1)
    assert float(distances.min()) > 0.3
    torch.testing.assert_close(spread.centers.mean(0), spread.optimum)
    assert spread.optimal_value > 0.0


def test_quadratic_evaluate_matches_a_direct_computation():
    problem = QuadraticProblem(8, 5, heterogeneity=1.5, noise=0.0, seed=2)
    x = problem.init_params(_gen(4))
    results = [problem.loss_and_grad(x, i, _gen()) for i in range(5)]
    loss = sum(r[0] for r in results) / 5
    grad = torch.stack([r[1]["x"] for r in results]).mean(0)
    metrics = problem.evaluate(x)
    assert metrics["loss"] == pytest.approx(loss, rel=1e-5)
    assert metrics["grad_norm_sq"] == pytest.approx(float(grad @ grad), rel=1e-5)
    assert metrics["suboptimality"] == pytest.approx(loss - problem.optimal_value, rel=1e-4)
    at_optimum = problem.evaluate({"x": problem.optimum.clone()})
    assert at_optimum["suboptimality"] == 0.0 and at_optimum["grad_norm_sq"] == 0.0


# --- supervised --------------------------------------------------------------------------------

def _supervised(batch_size: int = 8, workers: int = 3, scheme: str = "dirichlet",
                **kwargs) -> SupervisedProblem:
    data = load_dataset("synthetic", seed=0, num_samples=120, num_features=5, num_classes=3)
    shards = partition(data.y_train.numpy(), len(data.y_train), workers, scheme, alpha=0.3,
                       seed=0)
    model = lambda: nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))  # noqa: E731
    return SupervisedProblem(model, F.cross_entropy, data.X_train, data.y_train, shards,
                             batch_size=batch_size, X_test=data.X_test, y_test=data.y_test,
                             **kwargs)


def _reference(problem: SupervisedProblem, params, X, y, l2: float = 0.0):
    """The loss and gradient of an ordinary module holding ``params``."""
    module = problem.model_factory()
    module.load_state_dict(params)
    loss = F.cross_entropy(module(X), y)
    loss = loss + 0.5 * l2 * sum((p * p).sum() for p in module.parameters())
    return loss.item(), dict(zip(params, torch.autograd.grad(loss, list(module.parameters())),
                                 strict=True))


@pytest.mark.parametrize("l2", [0.0, 0.1])
def test_supervised_gradient_is_autograd_on_the_same_batch(l2):
    problem = _supervised(l2=l2)
    params = problem.init_params(_gen())
    before = tree.clone(params)
    worker = 1
    X, y = problem.X_train[problem.shards[worker]], problem.y_train[problem.shards[worker]]
    picks = torch.randint(len(y), (problem.batch_size,), generator=_gen(5))
    loss, grads = problem.loss_and_grad(params, worker, _gen(5))
    expected_loss, expected = _reference(problem, params, X[picks], y[picks], l2)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    for name in params:
        torch.testing.assert_close(grads[name], expected[name])
        assert torch.equal(params[name], before[name])
        assert not params[name].requires_grad and not grads[name].requires_grad


def test_same_seed_same_init_and_same_minibatches_and_global_rng_untouched():
    problem = _supervised()
    state = torch.get_rng_state()
    first, again = problem.init_params(_gen(3)), problem.init_params(_gen(3))
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["0.weight"], problem.init_params(_gen(4))["0.weight"])
    bound = 1 / 5 ** 0.5  # nn.Linear's default kaiming-uniform bound, fan_in = 5
    assert 0.8 * bound < float(first["0.weight"].abs().max()) <= bound
    runs = []
    for _ in range(2):
        generator = _gen(9)
        runs.append([problem.loss_and_grad(first, i % 3, generator)[0] for i in range(6)])
    assert runs[0] == runs[1]


def test_batches_larger_than_a_shard_work():
    problem = _supervised(batch_size=500, workers=40, scheme="iid")
    loss, grads = problem.loss_and_grad(problem.init_params(_gen()), 39, _gen())
    assert len(problem.shards[39]) < 500 and loss > 0.0
    assert tree.all_finite(grads)


@pytest.mark.parametrize(("shard", "batch"), [(5, 2), (3, 2), (40, 4)])
def test_minibatches_without_replacement_are_uniform_subsets(shard, batch):
    """Redraws (B² ≤ N) and permutations (B² > N) both give every B-subset of the shard with
    probability 1/C(N, B), the law of the authors' rng.choice(N, size=B, replace=False)."""
    import math
    from collections import Counter

    import numpy as np

    spec = {"name": "logistic", "dataset": "synthetic", "num_samples": 4 * shard,
            "test_fraction": 0.0, "batch_size": batch, "replacement": False}
    problem = make_problem(spec, 4, 0)
    assert {len(s) for s in problem.shards} == {shard}
    draws, generator = 6000, _gen(1)
    ours = Counter(tuple(sorted(problem._picks(0, generator).tolist())) for _ in range(draws))
    assert all(len(set(subset)) == batch for subset in ours)
    rng = np.random.default_rng(1)  # the authors' model.py _sample_minibatch
    theirs = Counter(tuple(sorted(rng.choice(shard, size=batch, replace=False).tolist()))
                     for _ in range(draws))
    subsets = math.comb(shard, batch)
    if subsets <= 10:
        assert set(ours) == set(theirs) and len(ours) == subsets
        for counts in (ours, theirs):
            assert max(abs(c / draws - 1 / subsets) for c in counts.values()) < 0.03
    positions = np.bincount([i for subset in ours.elements() for i in subset], minlength=shard)
    assert positions.min() > 0.8 * draws * batch / shard
    again = make_problem({**spec, "replacement": True}, 4, 0)
    assert torch.equal(again._picks(0, _gen(2)), torch.randint(shard, (batch,),
                                                               generator=_gen(2)))


def test_without_replacement_the_batch_must_fit_in_every_shard():
    spec = {"name": "logistic", "dataset": "synthetic", "num_samples": 40,
            "test_fraction": 0.0, "batch_size": 11, "replacement": False}
    with pytest.raises(ConfigError, match=r"problem\.batch_size = 11 .*smallest shard \(10 "):
        make_problem(spec, 4, 0)
    with pytest.raises(ConfigError, match=r"problem\.replacement = 'no' .*true or false"):
        make_problem({**spec, "replacement": "no"}, 4, 0)


def test_evaluate_weighs_workers_equally_and_reports_test_metrics():
    problem = _supervised(l2=0.05)
    params = problem.init_params(_gen())
    sizes = [len(s) for s in problem.shards]
    assert len(set(sizes)) > 1  # Dirichlet shards of different sizes
    module = problem.model_factory()
    module.load_state_dict(params)
    shard_losses = [F.cross_entropy(module(problem.X_train[s]), problem.y_train[s])
                    for s in problem.shards]
    l2_term = 0.5 * 0.05 * sum((p * p).sum() for p in module.parameters())
    f = torch.stack(shard_losses).mean() + l2_term
    grad = torch.autograd.grad(f, list(module.parameters()))
    metrics = problem.evaluate(params)
    assert set(metrics) == {"loss", "grad_norm_sq", "accuracy", "test_loss"}
    assert metrics["loss"] == pytest.approx(f.item(), rel=1e-5)
    assert metrics["grad_norm_sq"] == pytest.approx(sum(float((g * g).sum()) for g in grad),
                                                    rel=1e-4)
    assert 0.0 <= metrics["accuracy"] <= 1.0
    with torch.no_grad():
        test_loss = F.cross_entropy(module(problem.X_test), problem.y_test)
    assert metrics["test_loss"] == pytest.approx(float(test_loss), rel=1e-5)


def test_sgd_on_the_digits_mlp_learns():
    problem = make_problem({"name": "mlp", "dataset": "digits", "batch_size": 32}, 4, 0)
    generator = _gen()
    params = problem.init_params(generator)
    for step in range(300):
        _, grads = problem.loss_and_grad(params, step % 4, generator)
        tree.add_(params, grads, alpha=-0.5)
    assert problem.evaluate(params)["accuracy"] > 0.85


def test_bad_losses_and_shards_are_refused():
    data = load_dataset("iris", seed=0)
    shards = [torch.arange(10).numpy()]
    with pytest.raises(ConfigError, match=r"loss = .*one number per batch.*shape \(4,\)"):
        SupervisedProblem(lambda: nn.Linear(4, 3),
                          lambda out, y: F.cross_entropy(out, y, reduction="none"),
                          data.X_train, data.y_train, shards, batch_size=4)
    with pytest.raises(ConfigError, match=r"shards\[0\] = '0 samples'"):
        SupervisedProblem(lambda: nn.Linear(4, 3), F.cross_entropy, data.X_train,
                          data.y_train, [shards[0][:0]], batch_size=4)
    with pytest.raises(ConfigError, match=r"batch_size = 0"):
        SupervisedProblem(lambda: nn.Linear(4, 3), F.cross_entropy, data.X_train,
                          data.y_train, shards, batch_size=0)


# --- registry ----------------------------------------------------------------------------------

def test_registry_builds_every_problem_with_its_defaults_resolved():
    assert problem_names() == ["cnn", "logistic", "mlp", "pca", "quadratic"]
    assert resolve_problem_spec({"name": "quadratic"}) == {
        "name": "quadratic", "dim": 10, "condition": 10.0, "heterogeneity": 0.0, "noise": 0.1}
    mlp = resolve_problem_spec({"name": "mlp"})
    assert mlp == {"name": "mlp", "dataset": "digits", "batch_size": 32, "partition": "iid",
                   "alpha": 0.5, "partition_seed": None, "replacement": True,
                   "test_fraction": 0.2, "l2": 0.0, "gradient": "auto", "hidden": 64}
    logistic = resolve_problem_spec({"name": "logistic"})
    assert logistic["dataset"] == "synthetic" and logistic["num_features"] == 20
    assert resolve_problem_spec(logistic) == logistic
    for spec in ({"name": "quadratic", "dim": 3}, {"name": "logistic", "dataset": "wine"},
                 {"name": "mlp", "hidden": 8, "partition": "dirichlet", "alpha": 0.1},
                 {"name": "pca", "eigenvalues": [3.0, 1.0]}):
        problem = make_problem(spec, 3, 0)
        assert problem.num_workers == 3
        metrics = problem.evaluate(problem.init_params(_gen()))
        assert metrics["loss"] > 0.0 and metrics["grad_norm_sq"] > 0.0


def test_registry_reads_libsvm_files(tmp_path):
    path = tmp_path / "tiny.svm"
    path.write_text("\n".join(f"{i % 2} 1:{i / 10} 3:1" for i in range(20)))
    problem = make_problem({"name": "logistic", "dataset": "libsvm", "path": str(path)}, 2, 0)
    assert problem.module.weight.shape == (2, 3)
    with pytest.raises(ConfigError, match=r"problem\.path = '.*nowhere.svm'"):
        make_problem({"name": "logistic", "dataset": "libsvm",
                      "path": str(tmp_path / "nowhere.svm")}, 2, 0)


@pytest.mark.parametrize(("spec", "workers", "message"), [
    ({"name": "vgg"}, 2, r"problem\.name = 'vgg' .*cnn, logistic, mlp, pca, quadratic"),
    ({"name": "quadratic", "batch_size": 4}, 2, r"problem = 'batch_size' .*dim, heterogeneity"),
    ({"name": "mlp", "hiden": 4}, 2, r"problem = 'hiden' .*hidden"),
    ({"name": "mlp", "num_samples": 4}, 2, r"problem = 'num_samples'"),
    ({"name": "logistic", "dataset": "libsvm"}, 2, r"problem\.path = None"),
    ({"name": "mlp", "partition": "given"}, 2, r"problem\.partition = 'given'"),
    ({"name": "mlp", "alpha": 0}, 2, r"problem\.alpha = 0 .*> 0"),
    ({"name": "quadratic", "condition": 0.5}, 2, r"problem\.condition = 0\.5"),
    ({"name": "mlp", "batch_size": 2.5}, 2, r"problem\.batch_size = 2\.5 .*integer"),
    ({"name": "logistic", "dataset": "iris"}, 500, r"workers = 500 .*at most"),
])
def test_bad_specs_name_their_field(spec, workers, message):
    with pytest.raises(ConfigError, match=message):
        make_problem(spec, workers, 0)
