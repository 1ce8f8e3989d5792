"""ASGD and minibatch in the simulator: real delays, buffering, restarts, cancellations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import simulate

from asyncopt.errors import ConfigError
from asyncopt.protocols import ASGD, Action, Arrival, Minibatch, Server, make_protocol
from asyncopt.rules.registry import make_rule


def test_asgd_steps_on_every_arrival_and_measures_real_delays(quadratic):
    result = simulate(quadratic, {"name": "sgd", "lr": 0.05}, "asgd", workers=2,
                      speed={"times": [1.0, 3.0]}, steps=60)
    arrivals = result.history.arrivals
    assert set(arrivals["action"]) == {"step"}
    assert list(arrivals["version"]) == list(range(1, 61))
    slow = arrivals["worker"] == 1
    # the fast worker steps 3 times while the slow one computes: the slow one is 3 versions stale
    assert set(arrivals["delay"][slow][1:]) == {3}
    assert set(arrivals["delay"][~slow][1:]) <= {0, 1}
    assert np.all(np.diff(arrivals["now"]) >= 0)


def test_minibatch_waits_for_everyone_and_never_uses_stale_gradients(quadratic):
    result = simulate(quadratic, {"name": "sgd", "lr": 0.05}, "minibatch", workers=3,
                      speed={"times": [1.0, 2.0, 5.0]}, steps=10)
    arrivals = result.history.arrivals
    assert result.summary["version"] == 10
    assert np.all(arrivals["delay"] == 0)
    steps = arrivals["action"] == "step"
    assert steps.sum() == 10 and (arrivals["action"] == "buffer").sum() == 20
    # one step every max_i τ_i = 5 s: synchronous time is the slowest worker's
    assert np.allclose(arrivals["now"][steps], 5.0 * np.arange(1, 11))


def test_m_synchronous_cancels_the_slowest(quadratic):
    result = simulate(quadratic, {"name": "sgd", "lr": 0.05},
                      {"name": "minibatch", "wait_for": 2}, workers=3,
                      speed={"times": [1.0, 2.0, 5.0]}, steps=10)
    arrivals = result.history.arrivals
    assert set(arrivals["worker"][arrivals["action"] != "cancel"]) == {0, 1}
    assert (arrivals["action"] == "cancel").sum() == 10
    assert np.allclose(arrivals["now"][arrivals["action"] == "step"], 2.0 * np.arange(1, 11))


def test_nonfinite_gradient_is_rejected_and_the_model_untouched():
    server = Server({"x": torch.zeros(3)}, make_rule({"name": "sgd", "lr": 1.0}, 2))
    protocol = ASGD(server, 2)
    protocol.begin()
    bad = Arrival(0, 0, {"x": torch.tensor([1.0, float("nan"), 0.0])}, 1.0)
    reply = protocol.handle(bad)
    assert reply.action is Action.REJECT and reply.start == (0,)
    assert server.version == 0 and torch.equal(server.params["x"], torch.zeros(3))
    reply = protocol.handle(Arrival(1, 0, {"x": torch.ones(3)}, float("inf")))
    assert reply.action is Action.REJECT and server.version == 0
    reply = protocol.handle(Arrival(0, 0, {"x": torch.ones(3)}, 0.5))
    assert reply.action is Action.STEP and torch.equal(server.params["x"], -torch.ones(3))


def test_restart_all_cancels_exactly_the_workers_in_flight():
    server = Server({"x": torch.zeros(2)}, make_rule({"name": "sgd", "lr": 0.1}, 3))
    protocol = Minibatch(server, 3, wait_for=1)
    assert protocol.begin().start == (0, 1, 2)
    reply = protocol.handle(Arrival(2, 0, {"x": torch.ones(2)}, 0.0))
    assert reply.action is Action.STEP
    assert reply.cancel == (0, 1) and reply.start == (0, 1, 2)
    assert protocol.in_flight == {0: 1, 1: 1, 2: 1}


def test_protocol_registry_errors_name_the_field():
    server = Server({"x": torch.zeros(2)}, make_rule({"name": "sgd", "lr": 0.1}, 2))
    with pytest.raises(ConfigError,
                       match=r"protocol\.name = 'hogwash'.*asgd, ia2sgd, malenia, minibatch"):
        make_protocol({"name": "hogwash"}, server, 2)
    with pytest.raises(ConfigError, match=r"protocol\.wait_for = 5.*\[1, 2\]"):
        make_protocol({"name": "minibatch", "wait_for": 5}, server, 2)
    with pytest.raises(ConfigError, match="known keys are wait_for"):
        make_protocol({"name": "minibatch", "wiat_for": 1}, server, 2)
