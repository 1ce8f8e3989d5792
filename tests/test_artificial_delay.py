"""APAM's artificial delay (Xu et al. §5.4): gradients at a model drawn from the last D versions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asyncopt.api import run
from asyncopt.errors import ConfigError
from asyncopt.protocols.artificial_delay import ArtificialDelayASGD
from asyncopt.protocols.asgd import ASGD
from asyncopt.protocols.base import Arrival, Server
from asyncopt.protocols.registry import make_protocol
from asyncopt.rules.registry import make_rule


def _config(window: int, workers: int = 1, seed: int = 0, steps: int = 3000) -> dict:
    return {"seed": seed, "workers": workers, "problem": {"name": "quadratic", "dim": 4},
            "rule": {"name": "amsgrad", "lr": 0.01},
            "protocol": {"name": "asgd", "artificial_delay": window},
            "speed": {"profile": "constant"}, "budget": {"steps": steps}}


def test_one_worker_sees_delays_uniform_on_0_to_d_minus_1():
    window = 8
    delays = run(_config(window), save=False).history.arrivals["delay"]
    assert all(delays[k] <= k for k in range(window))
    steady = delays[window:]
    counts = np.bincount(steady, minlength=window)
    assert len(counts) == window  # never older than D − 1
    expected = len(steady) / window
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 24.3  # 99.9% quantile of χ²(7): uniform, not merely bounded


def test_several_workers_add_the_pipeline_delay_and_every_delay_is_measured():
    history = run(_config(5, workers=3, steps=600), save=False).history
    delays = history.arrivals["delay"][10:]
    assert delays.min() >= 0 and delays.max() <= 5 - 1 + 2
    assert delays.mean() > 2 + 0.5  # pipeline delay 2 plus a drawn one of mean 2


def test_window_one_is_plain_asgd_and_the_draws_follow_the_run_seed():
    server = Server({"x": torch.zeros(2)}, make_rule({"name": "sgd"}, 1))
    assert type(make_protocol({"name": "asgd"}, server, 1)) is ASGD
    assert isinstance(make_protocol({"name": "asgd", "artificial_delay": 4}, server, 1),
                      ArtificialDelayASGD)
    first, again, other = (run(_config(6, seed=s, steps=200), save=False).history
                           .arrivals["delay"] for s in (0, 0, 1))
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_the_worker_computes_at_the_version_it_was_handed():
    server = Server({"x": torch.zeros(1)}, make_rule({"name": "sgd", "lr": 1.0}, 1))
    protocol = ArtificialDelayASGD(server, 1, window=3, seed=0)
    for step in range(6):
        version, params = protocol.model_for(0)
        assert float(params["x"]) == -version  # x_v = −v after v steps of gradient 1
        assert protocol.in_flight[0] == version
        reply = protocol.handle(Arrival(0, version, {"x": torch.ones(1)}, 0.0))
        assert reply.delay == step - version and 0 <= reply.delay <= 2


@pytest.mark.parametrize("window", [0, -3, 2.5, True])
def test_bad_windows_are_refused(window):
    with pytest.raises(ConfigError) as error:
        run(_config(window, steps=5), save=False)
    assert error.value.field == "protocol.artificial_delay"


def test_a_runtime_that_never_asks_which_model_is_refused():
    server = Server({"x": torch.zeros(1)}, make_rule({"name": "sgd"}, 1))
    protocol = ArtificialDelayASGD(server, 1, window=3, seed=0)
    protocol.begin()
    with pytest.raises(ConfigError) as error:
        protocol.handle(Arrival(0, 0, {"x": torch.ones(1)}, 0.0))
    assert error.value.field == "protocol.artificial_delay"


@pytest.mark.parametrize("overrides", [["runtime=processes"],
                                       ["runtime=processes", "runtime_options.servers=0"]])
def test_a_refused_run_leaves_no_run_directory(tmp_path, overrides):
    # refused before any worker starts: the run directory made for it is removed again
    config = {**_config(3, workers=2, steps=5), "output": {"dir": str(tmp_path)}}
    with pytest.raises(ConfigError) as error:
        run(config, overrides=overrides)
    assert error.value.field == ("runtime" if len(overrides) == 1 else "runtime_options.servers")
    assert list(tmp_path.iterdir()) == []
