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


def test_a_lost_worker_is_never_restarted_and_minibatch_stops_waiting_for_it():
    server = Server({"x": torch.zeros(2)}, make_rule({"name": "sgd", "lr": 1.0}, 3))
    protocol = Minibatch(server, 3)
    protocol.begin()
    protocol.handle(Arrival(0, 0, {"x": torch.ones(2)}, 0.0))
    protocol.handle(Arrival(1, 0, {"x": torch.ones(2)}, 0.0))
    reply = protocol.lose(2)  # the two gradients in hand are now the whole batch
    assert reply.action is Action.LOST and server.version == 1
    assert reply.start == (0, 1) and 2 not in protocol.in_flight
    assert torch.equal(server.params["x"], -torch.ones(2))
    assert protocol.restart_all(Action.STEP, 0).start == (0, 1)


@pytest.mark.parametrize("name, stops", [("asgd", False), ("minibatch", False),
                                         ("ringleader", True), ("malenia", True)])
def test_the_coordinator_goes_on_without_a_lost_worker_only_where_the_protocol_can(name, stops):
    from asyncopt.config import Budget, Evaluation
    from asyncopt.problems.registry import make_problem
    from asyncopt.record import Recorder
    from asyncopt.runtimes.coordinator import Coordinator

    problem = make_problem({"name": "quadratic", "dim": 3}, 3, 0)
    server = Server(problem.init_params(torch.Generator().manual_seed(0)),
                    make_rule({"name": "sgd", "lr": 0.1}, 3))
    recorder = Recorder()
    coordinator = Coordinator(problem, make_protocol({"name": name}, server, 3), recorder,
                              Budget(steps=10), Evaluation())
    coordinator.begin()
    coordinator.lost(1.0, 2)
    assert (coordinator.stop_reason is not None) == stops
    if stops:
        assert coordinator.status == "failed" and "worker 2 died" in coordinator.stop_reason
    assert list(recorder.history().arrivals["action"]) == ["lost"]
    coordinator.lost(2.0, 0)
    coordinator.lost(3.0, 1)
    assert coordinator.status == "failed"
