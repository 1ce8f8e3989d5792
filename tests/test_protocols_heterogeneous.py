"""Rennala, Malenia, IA²SGD, Ringmaster and Ringleader: scripted arrivals and simulated runs.

Simulated runs use the heterogeneous quadratic under random and time-varying speed models; the
checks are the methods' defining properties (algorithms.md, paper 4): Ringleader's delay bound
2n − 2, its rounds of n steps and that it loses no gradient; Malenia and Rennala never apply a
stale gradient; Ringmaster never applies one with delay ≥ R; IA²SGD steps on every arrival after
its warm-up. A registry of cases runs every protocol with several rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from conftest import simulate

from asyncopt import tree
from asyncopt.config import Budget, Evaluation
from asyncopt.errors import ConfigError
from asyncopt.problems.registry import make_problem
from asyncopt.protocols import (
    Action,
    Arrival,
    GradientTable,
    Protocol,
    Rennala,
    Ringleader,
    Ringmaster,
    Server,
    make_protocol,
    protocol_names,
)
from asyncopt.record import History, Recorder
from asyncopt.rules.registry import make_rule, rule_names
from asyncopt.runtimes.coordinator import Coordinator
from asyncopt.runtimes.sim.loop import Simulator
from asyncopt.runtimes.sim.speed import make_speed_model

QUADRATIC = {"name": "quadratic", "dim": 10, "noise": 0.1, "heterogeneity": 1.0}
SGD = {"name": "sgd", "lr": 0.1}
RANDOM = {"profile": "linear", "permute": True, "noise": "half_normal", "noise_grows": True}
SLOWDOWNS = {"profile": "sqrt", "noise": "exponential", "noise_scale": 0.3,
             "slowdowns": [{"workers": [0, 1], "start": 5.0, "end": 40.0, "factor": 25.0},
                           {"workers": [2], "start": 20.0, "factor": 8.0}]}
PERIODIC = {"profile": "linear", "permute": True, "noise": "half_normal",
            "periodic": [{"period": 15.0, "amplitude": 6.0},
                         {"workers": [0], "period": 7.0, "amplitude": 20.0, "phase": 0.5}]}
STRAGGLERS = {"profile": "linear", "permute": True, "noise": "lognormal", "noise_scale": 3.0,
              "noise_grows": True, "straggler_probability": 0.1, "straggler_factor": 50.0}
SPEEDS = {"random": RANDOM, "slowdowns": SLOWDOWNS, "periodic": PERIODIC,
          "stragglers": STRAGGLERS}


def run(spec: dict[str, Any], workers: int, speed: dict[str, Any], *, seed: int = 0,
        steps: int = 200, rule: dict[str, Any] = SGD,
        problem_spec: dict[str, Any] = QUADRATIC) -> tuple[Protocol, History]:
    """A simulated run that keeps the protocol object, to read its counters afterwards."""
    problem = make_problem(problem_spec, workers, seed)
    server = Server(problem.init_params(torch.Generator().manual_seed(seed)),
                    make_rule(rule, workers))
    protocol = make_protocol(spec, server, workers)
    recorder = Recorder()
    coordinator = Coordinator(problem, protocol, recorder, Budget(steps=steps),
                              Evaluation(every=10**9))
    Simulator(problem, make_speed_model(speed, workers, seed), seed).run(coordinator)
    coordinator.finish()
    return protocol, recorder.history()


def segments(arrivals: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Row indices of the used (step/buffer) arrivals of each step, the step's row last."""
    used = np.flatnonzero(np.isin(arrivals["action"], ("step", "buffer")))
    out, start = [], 0
    for position, row in enumerate(used):
        if arrivals["action"][row] == "step":
            out.append(used[start:position + 1])
            start = position + 1
    return out


def grads(value: list[float]) -> dict[str, torch.Tensor]:
    return {"x": torch.tensor(value, dtype=torch.float32)}


# --- the shared table -------------------------------------------------------------------------

def test_gradient_table_average_matches_a_direct_recomputation():
    n, dim = 50, 7
    rng = torch.Generator().manual_seed(0)
    table = GradientTable(n)
    sums, counts = torch.zeros(n, dim), [0] * n
    for step in range(3000):
        worker = int(torch.randint(n, (1,), generator=rng))
        g = torch.randn(dim, generator=rng) * 10 + worker
        if step % 3 == 0:
            table.replace(worker, {"x": g})
            sums[worker], counts[worker] = g, 1
        else:
            table.add(worker, {"x": g})
            sums[worker] += g
            counts[worker] += 1
        if step == 1500:
            table.clear()
            sums.zero_()
            counts = [0] * n
    means = [sums[i] / counts[i] for i in range(n) if counts[i]]
    expected = torch.stack(means).sum(0) / n
    assert table.total == sum(counts) and table.full == all(counts)
    assert torch.allclose(table.average["x"], expected, atol=1e-5, rtol=1e-5)
    assert torch.allclose(table.exact_average()["x"], expected, atol=1e-5, rtol=1e-5)
    harmonic = n / sum(1 / b for b in counts)
    assert table.harmonic_count() == pytest.approx(harmonic)


# --- Ringleader ----------------------------------------------------------------------------------

def test_ringleader_phases_buffers_and_steps_exactly_as_the_pseudocode():
    server = Server({"x": torch.zeros(2)}, make_rule({"name": "sgd", "lr": 1.0}, 3))
    protocol = Ringleader(server, 3)
    assert protocol.begin().start == (0, 1, 2)
    g = {k: grads(v) for k, v in {"0a": [1, 0], "0b": [3, 0], "1": [0, 3], "2": [3, 3],
                                  "2+": [6, 0], "0c": [0, 6], "1b": [9, 9]}.items()}

    def arrive(worker: int, name: str) -> Action:
        reply = protocol.handle(Arrival(worker, protocol.in_flight[worker], g[name], 0.0))
        assert reply.start == (worker,) and reply.cancel == ()
        return reply.action

    # phase 1: no step until every worker has a gradient; worker 0 sends two
    assert [arrive(0, "0a"), arrive(0, "0b"), arrive(1, "1")] == [Action.BUFFER] * 3
    assert server.version == 0 and protocol.collecting
    x = torch.zeros(2)
    assert arrive(2, "2") is Action.STEP  # completes the table and steps
    x -= (torch.tensor([2.0, 0]) + torch.tensor([0.0, 3]) + torch.tensor([3.0, 3])) / 3
    assert torch.allclose(server.params["x"], x)
    # phase 2: worker 2 is already updated, so its next gradient waits in the buffer
    assert arrive(2, "2+") is Action.BUFFER and server.version == 1
    assert arrive(0, "0c") is Action.STEP  # b_0 = 3, mean (1+3+0, 0+0+6)/3
    x -= (torch.tensor([4 / 3, 2]) + torch.tensor([0.0, 3]) + torch.tensor([3.0, 3])) / 3
    assert torch.allclose(server.params["x"], x)
    assert arrive(1, "1b") is Action.STEP and protocol.rounds == 1  # the third step ends it
    assert server.version == 3 and protocol.collecting
    # the buffer became the current table: only worker 2's buffered gradient
    assert protocol.current.counts == [0, 0, 1] and protocol.buffer.total == 0
    assert torch.equal(protocol.current.mean(2)["x"], g["2+"]["x"])
    assert protocol.retired + protocol.held == 7  # arrivals so far


@pytest.mark.parametrize("speed", SPEEDS, ids=str)
@pytest.mark.parametrize(("workers", "seed"), [(3, 0), (6, 1), (11, 2)])
def test_ringleader_delay_bound_rounds_and_no_lost_gradient(speed, workers, seed):
    rounds = 15
    protocol, history = run({"name": "ringleader"}, workers, SPEEDS[speed], seed=seed,
                            steps=rounds * workers)
    arrivals = history.arrivals
    assert isinstance(protocol, Ringleader)
    assert set(arrivals["action"]) == {"step", "buffer"}  # nothing dropped, nothing cancelled
    assert arrivals["delay"].max() <= 2 * workers - 2
    # exactly n steps per round, one per worker
    stepped = arrivals["worker"][arrivals["action"] == "step"]
    assert len(stepped) == rounds * workers and protocol.rounds == rounds
    for r in range(rounds):
        assert sorted(stepped[r * workers:(r + 1) * workers]) == list(range(workers))
    # every gradient was used in a step of a finished round or is still held
    assert protocol.retired + protocol.held == len(arrivals["action"])
    for table in (protocol.current, protocol.buffer):
        if table.total:
            assert torch.allclose(table.average["x"], table.exact_average()["x"], atol=1e-5)


def test_ringleader_delay_bound_is_nearly_reached():
    """The bound is not vacuous: with stragglers some gradient is almost 2n − 2 versions old."""
    workers = 8
    worst = max(run({"name": "ringleader"}, workers, STRAGGLERS, seed=seed, steps=30 * workers)
                [1].arrivals["delay"].max() for seed in range(4))
    assert 2 * workers - 4 <= worst <= 2 * workers - 2


# --- Malenia and Rennala -------------------------------------------------------------------------

@pytest.mark.parametrize("batch_size", [None, 17])
def test_malenia_uses_only_fresh_gradients_from_every_worker(batch_size):
    workers = 5
    spec = {"name": "malenia", "batch_size": batch_size}
    _, history = run(spec, workers, RANDOM, seed=3, steps=40)
    arrivals = history.arrivals
    used = np.isin(arrivals["action"], ("step", "buffer"))
    assert np.all(arrivals["delay"][used] == 0)
    assert "drop" not in set(arrivals["action"])
    assert (arrivals["action"] == "cancel").sum() > 0  # the restarts cancel work in flight
    parts = segments(arrivals)
    assert len(parts) == 40
    for rows in parts:
        counts = np.bincount(arrivals["worker"][rows], minlength=workers)
        assert counts.min() >= 1
        if batch_size is not None:  # the harmonic rule: step at the first B > S/n
            before = counts.copy()
            before[arrivals["worker"][rows[-1]]] -= 1
            assert workers / np.sum(1 / counts) > batch_size / workers
            assert before.min() == 0 or workers / np.sum(1 / before) <= batch_size / workers


@pytest.mark.parametrize("batch_size", [None, 2, 9])
def test_rennala_averages_the_first_s_fresh_gradients(batch_size):
    workers = 5
    spec = {"name": "rennala", "batch_size": batch_size}
    _, history = run(spec, workers, PERIODIC, seed=4, steps=30)
    arrivals = history.arrivals
    used = np.isin(arrivals["action"], ("step", "buffer"))
    assert np.all(arrivals["delay"][used] == 0)
    assert [len(rows) for rows in segments(arrivals)] == [batch_size or workers] * 30


def test_rennala_drops_a_gradient_computed_at_an_old_model():
    """A runtime that could not cancel a computation delivers it late: it is never applied."""
    server = Server({"x": torch.zeros(2)}, make_rule({"name": "sgd", "lr": 1.0}, 2))
    protocol = Rennala(server, 2, batch_size=1)
    protocol.begin()
    reply = protocol.handle(Arrival(0, 0, grads([1, 1]), 0.0))
    assert reply.action is Action.STEP and reply.cancel == (1,) and server.version == 1
    reply = protocol.handle(Arrival(1, 0, grads([5, 5]), 0.0))
    assert reply.action is Action.DROP and reply.start == (1,) and reply.delay == 1
    assert server.version == 1 and torch.equal(server.params["x"], -torch.ones(2))


# --- Ringmaster ----------------------------------------------------------------------------------

@pytest.mark.parametrize("stops", [True, False])
def test_ringmaster_never_applies_a_gradient_delayed_r_or_more(stops):
    max_delay = 3
    spec = {"name": "ringmaster", "max_delay": max_delay, "stops": stops}
    _, history = run(spec, 8, RANDOM, seed=5, steps=300)
    arrivals = history.arrivals
    actions, delays = arrivals["action"], arrivals["delay"]
    assert np.all(delays[actions == "step"] < max_delay)
    if stops:  # stopped at delay R exactly, so nothing arrives stale enough to be dropped
        assert (actions == "cancel").sum() > 0 and np.all(delays[actions == "cancel"] == max_delay)
        assert "drop" not in set(actions)
    else:
        assert (actions == "drop").sum() > 0 and np.all(delays[actions == "drop"] >= max_delay)
        assert "cancel" not in set(actions)


def test_ringmaster_stops_exactly_the_computations_that_reached_r():
    server = Server({"x": torch.zeros(2)}, make_rule({"name": "sgd", "lr": 0.1}, 4))
    protocol = Ringmaster(server, 4, max_delay=2)
    protocol.begin()
    reply = protocol.handle(Arrival(0, 0, grads([1, 1]), 0.0))
    assert reply.action is Action.STEP and reply.cancel == ()  # delays reached 1 < R
    reply = protocol.handle(Arrival(0, 1, grads([1, 1]), 0.0))
    assert reply.cancel == (1, 2, 3) and reply.start == (0, 1, 2, 3)
    assert protocol.in_flight == {0: 2, 1: 2, 2: 2, 3: 2}
    reply = protocol.handle(Arrival(1, 2, grads([1, 1]), 0.0))
    assert reply.cancel == () and protocol.in_flight[1] == 3


# --- IA²SGD --------------------------------------------------------------------------------------

def test_ia2sgd_steps_on_every_arrival_after_warm_up_and_its_slots_grow_stale():
    workers = 6
    _, history = run({"name": "ia2sgd"}, workers, RANDOM, seed=6, steps=300)
    arrivals = history.arrivals
    actions = arrivals["action"]
    first = int(np.flatnonzero(actions == "step")[0])
    assert set(actions[:first]) == {"buffer"} and set(actions[first:]) == {"step"}
    # the step that ends the warm-up is the first arrival of the last worker to report
    assert len(set(arrivals["worker"][:first])) == workers - 1
    assert arrivals["worker"][first] not in set(arrivals["worker"][:first])
    # without Ringleader's rounds the slow workers' gradients exceed the 2n − 2 bound
    assert arrivals["delay"].max() > 2 * workers - 2


# --- against the authors' simulator (tests/ringleader_reference.py) ------------------------------

AUTHORS_SPEED = {"profile": "linear", "permute": True, "noise": "half_normal",
                 "noise_grows": True, "noise_index": "worker", "seeding": "offset"}


class _Node:
    """A node of the authors' transport computing asyncopt's quadratic f_i without noise."""

    def __init__(self, problem: Any, worker: int) -> None:
        self._curvature = problem.curvature.numpy()
        self._center = problem.centers[worker].numpy()

    def create_instance(self) -> _Node:
        return self

    def calculate_stochastic_gradient(self, point: np.ndarray) -> np.ndarray:
        return (point - self._center) * self._curvature


def authors_run(method: Any, workers: int, seed: int, calls: int, times: Any = None,
                **options: Any) -> tuple[np.ndarray, list[tuple[float, int]]]:
    """The authors' ``method`` on the noiseless quadratic with their time model (or fixed
    ``times``, without noise): the final point and every arrival (time, worker), read from
    their transport."""
    from ringleader_reference import (
        RandomDelayedAsynchronousTransport,
        make_delays,
        make_noise_function,
    )

    arrivals: list[tuple[float, int]] = []

    class Logged(RandomDelayedAsynchronousTransport):
        def call_ready_node(self, time: float, node_index: int) -> Any:
            arrivals.append((time, node_index))
            return super().call_ready_node(time, node_index)

    problem = make_problem({**QUADRATIC, "noise": 0.0}, workers, seed)
    start = problem.init_params(torch.Generator().manual_seed(seed))["x"].numpy().copy()
    if times is None:
        delays, noise = make_delays(workers, seed), make_noise_function(workers, seed)
    else:
        delays, noise = np.asarray(times), lambda index: 0.0
    transport = Logged([_Node(problem, w) for w in range(workers)], delays, noise)
    optimizer = method(transport, start, gamma=SGD["lr"], **options)
    for _ in range(calls):
        optimizer.step()
    return optimizer.get_point(), arrivals


def ours_run(spec: dict[str, Any], workers: int, seed: int, steps: int,
             speed: dict[str, Any] = AUTHORS_SPEED) -> tuple[Any, History]:
    protocol, history = run(spec, workers, speed, seed=seed, steps=steps,
                            problem_spec={**QUADRATIC, "noise": 0.0})
    return protocol.server.params["x"].numpy(), history


def test_ia2sgd_without_step_on_fill_is_the_authors_iaasgd():
    from ringleader_reference import IAASGD

    workers, seed, calls = 7, 26, 6
    theirs, arrivals = authors_run(IAASGD, workers, seed, calls)
    ours, history = ours_run({"name": "ia2sgd", "step_on_fill": False}, workers, seed,
                             steps=calls * workers)
    used = history.arrivals["action"] != "cancel"
    assert history.arrivals["worker"][used].tolist() == [w for _, w in arrivals]
    np.testing.assert_allclose(history.arrivals["now"][used], [t for t, _ in arrivals],
                               rtol=1e-12)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    stepping, _ = ours_run({"name": "ia2sgd"}, workers, seed, steps=calls * workers)
    assert not np.allclose(stepping, theirs, rtol=1e-5, atol=1e-6)  # the default differs


def test_ringleader_under_the_authors_time_model_is_the_authors_ringleader():
    from ringleader_reference import RingleaderASGD

    workers, seed, rounds = 6, 27, 8
    theirs, arrivals = authors_run(RingleaderASGD, workers, seed, rounds)
    ours, history = ours_run({"name": "ringleader"}, workers, seed, steps=rounds * workers)
    assert set(history.arrivals["action"]) == {"step", "buffer"}  # nothing lost
    assert history.arrivals["worker"].tolist() == [w for _, w in arrivals]
    np.testing.assert_allclose(history.arrivals["now"], [t for t, _ in arrivals], rtol=1e-12)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_rennala_launching_everyone_gives_the_authors_b_fastest_batches():
    """The authors' RennalaSGD with B < n launches only the B workers that finish first. Launching
    all n (ours) gives the same batches: the B earliest arrivals all come from those B workers,
    since each of the others finishes after all B of them have finished once. Without noise the
    runs agree step for step. With noise the random streams part: the authors also draw a compute
    time for the worker that completes a batch before restarting everyone (asyncopt draws one
    per start), so that worker's later times are shifted by one draw."""
    from ringleader_reference import RennalaSGD

    workers, batch, calls = 7, 3, 12
    times = [float(t) for t in np.sqrt([2.0, 3.0, 5.0, 7.0, 11.0, 13.0, 17.0])[::-1]]
    theirs, arrivals = authors_run(RennalaSGD, workers, 0, calls, times, batch_size=batch)
    ours, history = ours_run({"name": "rennala", "batch_size": batch}, workers, 0, calls,
                             {"times": times})
    used = np.isin(history.arrivals["action"], ("step", "buffer"))
    assert history.arrivals["worker"][used].tolist() == [w for _, w in arrivals]
    np.testing.assert_allclose(history.arrivals["now"][used], [t for t, _ in arrivals],
                               rtol=1e-12)
    assert {w for _, w in arrivals} == {4, 5, 6}  # only the three fastest ever contribute
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


# --- every protocol with several rules -----------------------------------------------------------

@dataclass(frozen=True)
class ProtocolCase:
    """One registry entry: a protocol spec and how many steps it needs on the quadratic."""

    spec: dict[str, Any]
    steps: int = 150
    speed: dict[str, Any] = field(default_factory=lambda: RANDOM)

    @property
    def id(self) -> str:
        return "-".join(str(v) for v in self.spec.values())


PROTOCOL_DB = [
    ProtocolCase({"name": "asgd"}),
    ProtocolCase({"name": "minibatch"}, steps=60),
    ProtocolCase({"name": "minibatch", "wait_for": 3}, steps=60),
    ProtocolCase({"name": "rennala"}, steps=60),
    ProtocolCase({"name": "rennala", "batch_size": 2}, steps=100),
    ProtocolCase({"name": "malenia"}, steps=60),
    ProtocolCase({"name": "malenia", "batch_size": 12}, steps=60, speed=SLOWDOWNS),
    ProtocolCase({"name": "ia2sgd"}, speed=PERIODIC),
    ProtocolCase({"name": "ringmaster", "max_delay": 3}),
    ProtocolCase({"name": "ringmaster", "max_delay": 3, "stops": False}, speed=PERIODIC),
    ProtocolCase({"name": "ringleader"}),
    ProtocolCase({"name": "ringleader"}, speed=SLOWDOWNS),
]
RULES = [{"name": "sgd", "lr": 0.1}, {"name": "momentum", "lr": 0.01},
         {"name": "adam", "lr": 0.05}]


def test_the_case_registry_covers_every_protocol():
    assert {case.spec["name"] for case in PROTOCOL_DB} == set(protocol_names())


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule["name"])
@pytest.mark.parametrize("case", PROTOCOL_DB, ids=lambda case: case.id)
def test_every_protocol_with_every_rule_decreases_the_loss(case, rule):
    result = simulate(QUADRATIC, rule, case.spec, workers=6, speed=case.speed, seed=7,
                      steps=case.steps)
    loss = result.history.evaluations["loss"]
    assert result.summary["status"] == "completed" and result.summary["version"] == case.steps
    assert loss[-1] < 0.5 * loss[0]
    assert all(torch.isfinite(v).all() for v in result.params.values())


# --- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "message"), [
    ({"name": "ringmaster", "max_delay": 0}, r"protocol\.max_delay = 0 .*integer >= 1"),
    ({"name": "ringmaster", "max_delay": 2.5}, r"protocol\.max_delay = 2\.5"),
    ({"name": "ringmaster", "stops": "yes"}, r"protocol\.stops = 'yes' .*true or false"),
    ({"name": "rennala", "batch_size": 0}, r"protocol\.batch_size = 0 .*integer >= 1"),
    ({"name": "malenia", "batch_size": -3}, r"protocol\.batch_size = -3 .*integer >= 1"),
    ({"name": "ringleader", "max_delay": 3}, r"protocol = 'max_delay' .*known keys are none"),
    ({"name": "ia2sgd", "batch": 3}, r"protocol = 'batch' .*known keys are step_on_fill"),
    ({"name": "ia2sgd", "step_on_fill": 1}, r"protocol\.step_on_fill = 1 .*true or false"),
])
def test_bad_options_name_the_field(spec, message):
    server = Server({"x": torch.zeros(2)}, make_rule(SGD, 3))
    with pytest.raises(ConfigError, match=message):
        make_protocol(spec, server, 3)


@pytest.mark.parametrize("name", rule_names())
def test_no_rule_writes_into_the_aggregate_it_is_given(name):
    """Malenia, IA²SGD and Ringleader hand their running average to the rule without a copy."""
    params = {"x": torch.ones(4), "y": torch.ones(2, 3)}
    rule = make_rule({"name": name, "max_delay": 5, "delay_adaptive": True}, 3)
    state = rule.init(params)
    aggregate = {"x": torch.linspace(-1, 1, 4), "y": torch.full((2, 3), 0.5)}
    before = tree.clone(aggregate)
    for delay in (0, 4, 2):
        rule.update(aggregate, state, params, delay=delay, worker=1)
    assert all(torch.equal(aggregate[k], before[k]) for k in aggregate)
