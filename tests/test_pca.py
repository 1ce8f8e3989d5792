"""Streaming PCA and Async-MSGD (Liu et al. 2018): the gradient, the exact update, fixed delays,
the registry's checks, and the sweep that produces the delay figure."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from asyncopt.api import run
from asyncopt.cli import main
from asyncopt.errors import ConfigError
from asyncopt.problems.pca import PCAProblem
from asyncopt.problems.registry import make_problem
from asyncopt.protocols.asgd import ASGD
from asyncopt.protocols.base import Arrival, Server
from asyncopt.rules.registry import make_rule
from asyncopt.sweep import parse_axis, run_sweep, summary_rows

CONFIG = """
seed = 0
workers = 1
[problem]
name = "pca"
[protocol]
name = "asgd"
[speed]
profile = "constant"
[budget]
time = 4.0
[eval]
every = 100.0
unit = "time"
[[methods]]
label = "mu=0.5"
rule = { name = "sgd", lr = 0.01, momentum = 0.5 }
[[methods]]
label = "mu=0.9"
rule = { name = "sgd", lr = 0.01, momentum = 0.9 }
"""


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_gradient_is_the_projected_sample_direction_and_unbiased():
    problem = PCAProblem(2, eigenvalues=[4.0, 3.0, 2.0, 1.0], batch_size=1)
    v = problem.init_params(_gen(1))["v"] * 1.3  # off the sphere: the projection uses v itself
    generator = _gen(7)
    z = torch.randn(1, 4, generator=_gen(7))
    x = (z @ problem._factor)[0]
    _, grads = problem.loss_and_grad({"v": v}, 0, generator)
    expected = -(torch.eye(4) - torch.outer(v, v)) @ torch.outer(x, x) @ v
    torch.testing.assert_close(grads["v"], expected, rtol=1e-5, atol=1e-6)
    many = PCAProblem(1, batch_size=200_000)
    _, mean = many.loss_and_grad({"v": v}, 0, _gen(3))
    sigma = torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0]))
    exact = -(torch.eye(4) - torch.outer(v, v)) @ sigma @ v
    torch.testing.assert_close(mean["v"], exact, rtol=0.0, atol=0.05 * float(exact.norm()))


def test_evaluation_is_zero_at_the_top_eigenvector_of_any_covariance():
    rows = [[2.0, 0.8, 0.0], [0.8, 1.5, 0.3], [0.0, 0.3, 0.5]]
    problem = make_problem({"name": "pca", "covariance": rows}, 3, 0)
    top = torch.linalg.eigh(torch.tensor(rows, dtype=torch.float64))[1][:, -1].float()
    at_top = problem.evaluate({"v": -top})
    assert at_top["loss"] == pytest.approx(0.0, abs=1e-6)
    assert at_top["distance"] == pytest.approx(0.0, abs=1e-6)
    assert at_top["grad_norm_sq"] == pytest.approx(0.0, abs=1e-9)
    other = problem.evaluate({"v": torch.tensor([0.0, 0.0, 2.0])})
    assert 0.5 < other["loss"] <= 1.0 and other["distance"] > 1.0


@pytest.mark.parametrize(("spec", "field"), [
    ({"covariance": [[1.0, 2.0], [0.0, 1.0]]}, "problem.covariance"),
    ({"covariance": [[1.0, 0.0], [0.0, -1.0]]}, "problem.covariance"),
    ({"eigenvalues": [2.0, 2.0, 1.0]}, "problem.eigenvalues"),
    ({"eigenvalues": [3.0, -1.0]}, "problem.eigenvalues[1]"),
    ({"covariance": 3}, "problem.covariance"),
])
def test_bad_covariances_are_refused_naming_the_field(spec, field):
    with pytest.raises(ConfigError) as error:
        make_problem({"name": "pca", **spec}, 2, 0)
    assert error.value.field == field


def test_server_side_momentum_is_exactly_async_msgd():
    """v_{k+1} = v_k + μ(v_k − v_{k−1}) − η g(v_{k−τ}): the gradient at the stale model the worker
    read, the momentum on the server's two latest iterates."""
    eta, mu, tau = 0.01, 0.8, 3
    problem = PCAProblem(tau + 1)
    server = Server(problem.init_params(_gen()), make_rule(
        {"name": "sgd", "lr": eta, "momentum": mu}, tau + 1))
    protocol = ASGD(server, tau + 1)
    history = [server.params]
    generator = _gen(5)
    for k in range(40):
        read = max(k - tau, 0)
        _, grads = problem.loss_and_grad(history[read], 0, generator)
        reply = protocol.handle(Arrival(0, read, grads, 0.0))
        assert reply.delay == k - read
        previous = history[-2]["v"] if k > 0 else history[-1]["v"]
        expected = history[-1]["v"] + mu * (history[-1]["v"] - previous) - eta * grads["v"]
        torch.testing.assert_close(server.params["v"], expected, rtol=1e-5, atol=1e-6)
        history.append(server.params)


@pytest.mark.parametrize("tau", [0, 1, 7])
def test_tau_plus_one_identical_workers_give_delay_exactly_tau(tau):
    result = run({"workers": tau + 1, "problem": {"name": "pca"}, "protocol": {"name": "asgd"},
                  "rule": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
                  "speed": {"profile": "constant"}, "budget": {"time": 6.0}}, save=False)
    delays = result.history.arrivals["delay"]
    assert len(delays) == 6 * (tau + 1)
    assert list(delays[:tau + 1]) == list(range(tau + 1))  # the first round fills the pipeline
    assert set(delays[tau + 1:]) == {tau}
    assert result.summary["max_delay"] == tau


def test_sweep_runs_every_point_and_finds_each_series_best(tmp_path: Path):
    import tomllib

    raw = tomllib.loads(CONFIG)
    points = run_sweep(raw, parse_axis("workers=1:4:2"), seeds=2)
    assert [(p.label, p.x, p.seed) for p in points] == [
        (label, w, s) for label in ("mu=0.5", "mu=0.9") for w in (1, 3) for s in (0, 1)]
    assert all(p.max_delay == p.x - 1 for p in points)
    rows, best = summary_rows(points, "loss")
    assert len(rows) == 4 and [b["series"] for b in best] == ["mu=0.5", "mu=0.9"]
    for b in best:
        mine = [r for r in rows if r["series"] == b["series"]]
        assert b["loss median"] == min(r["loss median"] for r in mine)
    assert parse_axis("rule.momentum=0.1,0.5") == ("rule.momentum", [0.1, 0.5])
    with pytest.raises(ConfigError):
        parse_axis("workers=5:1:1")


def test_sweep_command_writes_table_csv_and_figure(tmp_path: Path, capsys):
    path = tmp_path / "pca.toml"
    path.write_text(CONFIG)
    out = tmp_path / "sweep"
    code = main(["sweep", str(path), "--x", "workers=1,2", "--series", "rule.lr=0.01,0.02",
                 "--seeds", "1", "--x-axis", "delay", "--failed", "1", "--out", str(out),
                 "--quiet", "--jobs", "1"])
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"sweep.csv", "sweep.md", "sweep.png"}
    lines = (out / "sweep.csv").read_text().splitlines()
    assert len(lines) == 1 + 2 * 2 * 2  # header + methods × series × x
    assert "mu=0.9 rule.lr=0.02" in (out / "sweep.md").read_text()
    assert main(["sweep", str(path), "--x", "workers=1", "--out", str(out)]) == 2
    assert not math.isnan(float(np.genfromtxt(out / "sweep.csv", delimiter=",",
                                              skip_header=1, usecols=7)[0]))
