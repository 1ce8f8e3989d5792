"""``asyncopt advise``: methods ranked by the simulator's predicted time to a loss target."""

from __future__ import annotations

import math

import pytest

import asyncopt
from asyncopt import advise, config
from asyncopt.aggregate import time_to_target
from asyncopt.cli import main
from asyncopt.errors import ConfigError

CONFIG = """seed = 0
workers = 3
[problem]
name = "quadratic"
dim = 5
noise = 0.1
[rule]
name = "sgd"
lr = 0.1
[budget]
time = 120.0
[eval]
every = 5.0
unit = "time"
"""
SPEED = '[speed]\nfactors = [1.0, 1.0, 8.0]\nnoise = "exponential"\n'


@pytest.fixture
def files(tmp_path):
    (tmp_path / "exp.toml").write_text(CONFIG)
    (tmp_path / "speed.toml").write_text(SPEED)
    return tmp_path


def test_each_prediction_is_the_simulated_runs_time_to_target_and_they_are_ranked(files):
    speed = advise.speed_from(files / "speed.toml")
    predictions, target = advise.advise(files / "exp.toml", speed, methods=["asgd", "minibatch"],
                                        grid=[0.05, 0.2], seeds=2)
    assert [p.median_time for p in predictions] == sorted(p.median_time for p in predictions)
    assert {p.method for p in predictions} == {"asgd", "minibatch"}
    for p in predictions:  # the same runs, made by hand, give the same times
        assert p.lr in (0.05, 0.2)
        for seed, predicted in enumerate(p.times):
            raw = {**config.read(files / "exp.toml"), "speed": speed, "seed": seed,
                   "protocol": {"name": p.method}, "rule": {"name": "sgd", "lr": p.lr}}
            history = asyncopt.run(raw, save=False).history
            assert predicted == time_to_target(history, "loss", target)
    # with 8x slower third worker, waiting for it (minibatch) cannot be faster than asgd
    assert predictions[0].method == "asgd" and math.isfinite(predictions[0].median_time)


def test_the_default_methods_follow_the_data(files):
    raw = config.read(files / "exp.toml")
    assert not advise.heterogeneous(config.resolve(raw))
    hetero = config.apply_overrides(raw, ["problem.heterogeneity=1.0"])
    assert advise.heterogeneous(config.resolve(hetero))
    digits = {"problem": {"name": "logistic", "dataset": "digits", "partition": "dirichlet"}}
    assert advise.heterogeneous(config.resolve(digits))
    predictions, _ = advise.advise(files / "exp.toml", advise.speed_from(files / "speed.toml"),
                                   grid=[0.1], seeds=1, target=1e9)
    assert sorted(p.method for p in predictions) == sorted(advise.HOMOGENEOUS)


def test_the_cli_prints_the_ranking_and_bad_input_is_named(files, capsys):
    assert main(["advise", str(files / "exp.toml"), "--speed", str(files / "speed.toml"),
                 "--methods", "asgd,minibatch", "--grid", "0.05,0.2", "--seeds", "2",
                 "--quiet", "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "| rank | method |" in out and "| 1 | asgd |" in out
    (files / "nospeed.toml").write_text("[rule]\nlr = 0.1\n")
    for bad, field in ((files / "missing", "--speed"), (files / "nospeed.toml", "--speed")):
        with pytest.raises(ConfigError, match=field):
            advise.speed_from(bad)
    assert main(["advise", str(files / "exp.toml"), "--speed", str(files / "speed.toml"),
                 "--methods", "asgd", "--grid", "0.1", "--seeds", "1", "--quiet", "--run",
                 "--jobs", "1"]) == 2  # the config runs on the simulator: nothing real to run
    assert "--run" in capsys.readouterr().err


def test_the_winner_runs_where_its_speeds_were_measured(files):
    measured = files / "real-run"
    measured.mkdir()
    real = config.resolve({**config.read(files / "exp.toml"), "runtime": "processes",
                           "runtime_options": {"time_scale": 0.01}})
    (measured / "config.toml").write_text(config.dumps(real))
    winner = advise.Prediction("minibatch", 0.2, [1.0], [0.1])
    resolved = advise.winner_config(files / "exp.toml", measured, winner)
    assert resolved["runtime"] == "processes" and resolved["runtime_options"]["time_scale"] == 0.01
    assert resolved["protocol"]["name"] == "minibatch" and resolved["rule"]["lr"] == 0.2


def test_the_table_gives_a_range_only_over_seeds_that_reached_the_target():
    inf = math.inf
    table = advise.format_advice([advise.Prediction("asgd", 0.1, [3.0, 5.0, inf], [1.0] * 3),
                                  advise.Prediction("rennala", 0.3, [inf] * 3, [2.0] * 3)],
                                 target=1.5)
    rows = table.splitlines()[3:]
    assert rows[0] == "| 1 | asgd | 0.1 | 5 | 3–not reached | 2/3 | 1 |"
    assert rows[1] == "| 2 | rennala | 0.3 | not reached | — | 0/3 | 2 |"
