"""The server-mode process runtime: real worker processes, shared-memory model, lifecycle.

Every run here starts real processes (about 2 s of start-up each), so the runs are few and tiny.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading

import numpy as np
import pytest
import torch
from faults import Faulty, logged

from asyncopt.api import Result, train
from asyncopt.config import Evaluation
from asyncopt.errors import ConfigError
from asyncopt.problems.base import Problem
from asyncopt.problems.registry import make_problem
from asyncopt.rules.registry import make_rule
from asyncopt.runtimes.common.shared import SharedModel

QUADRATIC = {"name": "quadratic", "dim": 10, "noise": 0.1, "heterogeneity": 1.0}


def _train(problem: Problem, protocol: str = "asgd", *, speed: dict | None = None,
           options: dict | None = None, every: float = 50, **budget) -> Result:
    return train(problem, make_rule({"name": "sgd", "lr": 0.1}, problem.num_workers), protocol,
                 speed=speed or {}, budget=budget, evaluation=Evaluation(every),
                 runtime="processes", runtime_options=options or {})


def _workers_left() -> list[multiprocessing.Process]:
    return [p for p in multiprocessing.active_children()
            if p.name.startswith(("asyncopt-worker", "asyncopt-server"))]


@pytest.mark.slow
def test_asgd_with_two_processes_trains_and_records_real_delays():
    result = _train(make_problem(QUADRATIC, 2, 0), steps=300)
    summary, arrivals = result.summary, result.history.arrivals
    assert summary["status"] == "completed" and summary["version"] == 300
    losses = result.history.evaluations["loss"]
    assert losses[-1] < 0.5 * losses[0]
    assert set(arrivals["worker"]) == {0, 1}
    assert (arrivals["delay"] >= 0).all() and summary["max_delay"] >= 1  # both really overlap
    assert (np.diff(arrivals["now"]) >= 0).all() and arrivals["now"][-1] > 0
    assert (arrivals["compute_time"] > 0).all()
    assert not _workers_left()


@pytest.mark.slow
def test_minibatch_is_synchronous_and_slow_workers_are_emulated():
    result = _train(make_problem(QUADRATIC, 2, 0), "minibatch", steps=20,
                    speed={"factors": [3.0, 1.0]}, options={"time_scale": 0.02})
    arrivals = result.history.arrivals
    used = np.isin(arrivals["action"], ("step", "buffer"))
    assert (arrivals["delay"][used] == 0).all()
    assert result.summary["version"] == used.sum() // 2 == 20
    times = [np.median(arrivals["compute_time"][arrivals["worker"] == w]) for w in (0, 1)]
    # padded to 60 ms and 20 ms: long enough that scheduling noise on a busy machine cannot
    # blur the 3:1 ratio past these bounds
    assert times[1] >= 0.02 and 2.0 < times[0] / times[1] < 4.0


@pytest.mark.slow
def test_synchronous_training_goes_on_without_a_dead_worker(caplog):
    problem = Faulty(make_problem(QUADRATIC, 3, 0), victims=(2,), at=10)
    result = _train(problem, "minibatch", steps=40)
    assert logged(caplog, "worker process 2 died"), caplog.text
    assert result.summary["status"] == "completed" and result.summary["version"] == 40
    actions = result.history.arrivals["action"]
    assert list(actions).count("lost") == 1
    after = np.flatnonzero(actions == "lost")[0]
    assert set(result.history.arrivals["worker"][after + 1:]) <= {0, 1}
    assert not _workers_left()


@pytest.mark.slow
def test_when_every_worker_dies_the_run_fails_with_a_clear_reason(caplog):
    problem = Faulty(make_problem(QUADRATIC, 2, 0), victims=(0, 1), at=5)
    result = _train(problem, steps=1000)
    assert logged(caplog, "died"), caplog.text
    assert result.summary["status"] == "failed"
    assert "all 2 workers died" in result.summary["reason"]
    assert not _workers_left()


@pytest.mark.slow
def test_ctrl_c_and_worker_errors_stop_every_process():
    interrupted = _train(Faulty(make_problem(QUADRATIC, 2, 0), interrupt_at=3), steps=10**6,
                         every=20)
    assert interrupted.summary["status"] == "interrupted"
    assert interrupted.summary["version"] >= 40
    assert not _workers_left()
    broken = Faulty(make_problem(QUADRATIC, 2, 0), victims=(1,), at=10, how="raise")
    with pytest.raises(RuntimeError, match=r"(?s)worker process 1 raised.*broken gradient"):
        _train(broken, steps=10**6)
    assert not _workers_left()


@pytest.mark.slow
def test_a_time_budget_is_wall_seconds_after_start_up():
    result = _train(make_problem(QUADRATIC, 2, 0), time=0.5, options={"time_scale": 0.01})
    assert result.summary["reason"].startswith("time budget")
    assert result.summary["now"] == 0.5
    assert result.history.arrivals["now"].max() <= 0.5
    assert 30 <= result.summary["arrivals"] <= 110  # ~100 at 10 ms a gradient on 2 workers


DIGITS = {"name": "logistic", "dataset": "digits"}  # 2 tensors: weight (640), bias (10)


@pytest.mark.slow
def test_two_parameter_servers_train_like_one():
    results = {servers: _train(make_problem(DIGITS, 2, 0), steps=300, every=100,
                               options={"servers": servers, "device": "cpu"})
               for servers in (1, 2)}
    one, two = (results[k].history for k in (1, 2))
    assert results[2].summary["status"] == "completed" and 300 <= results[2].summary[
        "version"] <= 301
    assert two.evaluations["loss"][-1] < 0.5 * two.evaluations["loss"][0]
    assert abs(two.evaluations["loss"][-1] - one.evaluations["loss"][-1]) < 0.1 * one.evaluations[
        "loss"][-1]
    arrivals = two.arrivals
    assert set(arrivals["worker"]) == {0, 1} and (arrivals["action"] == "step").all()
    assert (arrivals["delay"] >= 0).all() and (np.diff(arrivals["version"]) >= 0).all()
    assert not _workers_left()


class _KillsServer(Problem):
    """Digits logistic regression whose 3rd evaluation (main process) kills server process 0."""

    def __init__(self, inner: Problem) -> None:
        self.inner, self.num_workers, self.evaluations = inner, inner.num_workers, 0

    def init_params(self, generator):
        return self.inner.init_params(generator)

    def loss_and_grad(self, params, worker, generator):
        return self.inner.loss_and_grad(params, worker, generator)

    def evaluate(self, params):
        self.evaluations += 1
        if self.evaluations == 3:
            server = next(p for p in multiprocessing.active_children()
                          if p.name == "asyncopt-server-0")
            os.kill(server.pid, signal.SIGKILL)
        return self.inner.evaluate(params)


@pytest.mark.slow
def test_a_dead_server_fails_the_run_and_stops_every_process():
    result = _train(_KillsServer(make_problem(DIGITS, 2, 0)), steps=10**6, time=60.0, every=20,
                    options={"servers": 2})
    assert result.summary["status"] == "failed"
    assert "server process 0 died" in result.summary["reason"]
    assert 40 <= result.summary["version"] < 10**6
    assert not _workers_left()


def test_bad_server_counts_and_protocols_are_refused_naming_the_field():
    problem = make_problem(DIGITS, 2, 0)
    for options, protocol, field in (({"servers": 0}, "asgd", "runtime_options.servers"),
                                     ({"servers": 3}, "asgd", "runtime_options.servers"),
                                     ({"servers": 2, "mode": "lockfree"}, "asgd",
                                      "runtime_options.servers"),
                                     ({"servers": 2}, "minibatch", "protocol.name")):
        with pytest.raises(ConfigError, match=field):
            _train(problem, protocol, steps=1, options=options)
    assert not _workers_left()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a CPU-only machine")
def test_a_cuda_device_on_a_machine_without_one_is_refused_before_any_process_starts():
    problem = make_problem(QUADRATIC, 2, 0)
    for device, allowed in (("cuda", "has 0 CUDA device"), ("cuda:1", "has 0 CUDA device"),
                            ("gpu", "'cpu', 'cuda' or 'cuda:K'")):
        with pytest.raises(ConfigError, match=f"runtime_options.device.*{allowed}"):
            _train(problem, steps=1, options={"device": device})
    assert not _workers_left()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_device_index_past_the_last_one_is_refused():
    problem, count = make_problem(QUADRATIC, 2, 0), torch.cuda.device_count()
    with pytest.raises(ConfigError, match=f"runtime_options.device.*has {count} CUDA"):
        _train(problem, steps=1, options={"device": f"cuda:{count}"})
    assert not _workers_left()


def test_bad_options_and_unpicklable_problems_name_the_field():
    problem = make_problem(QUADRATIC, 2, 0)
    for options, field in (({"time_scale": -1.0}, "runtime_options.time_scale"),
                           ({"start_method": "fork"}, "runtime_options.start_method"),
                           ({"startup_timeout": 0}, "runtime_options.startup_timeout"),
                           ({"threads": 2}, "runtime_options (processes)")):
        with pytest.raises(ConfigError, match=field.replace("(", r"\(").replace(")", r"\)")):
            _train(problem, steps=1, options=options)
    unpicklable = make_problem(QUADRATIC, 2, 0)
    unpicklable.hook = lambda: None
    with pytest.raises(ConfigError, match=r"problem.*pickl"):
        _train(unpicklable, steps=1)
    assert not _workers_left()


def test_the_seqlock_never_lets_a_torn_model_through():
    """A writer publishes versions whose every entry equals the version while a reader copies:
    each copy must be one whole version (the double buffer alone would not guarantee it)."""
    like = {"a": torch.zeros(300_000), "b": torch.zeros(7)}
    model = SharedModel(like)
    model.publish({k: torch.zeros_like(v) for k, v in like.items()}, 0)
    stop = threading.Event()

    def write() -> None:
        version = 0
        while not stop.is_set():
            version += 1
            model.publish({k: torch.full_like(v, float(version)) for k, v in like.items()},
                          version)

    writer = threading.Thread(target=write)
    writer.start()
    out = torch.empty(300_007)
    try:
        for _ in range(400):
            version, _ = model.read(out)
            assert torch.all(out == version), "a torn read got through"
    finally:
        stop.set()
        writer.join(timeout=10)


def test_built_in_data_problems_run_on_processes():
    """The built-in models are rebuilt in each worker from module-level factories."""
    import asyncopt

    result = asyncopt.run({"workers": 2, "runtime": "processes",
                           "problem": {"name": "mlp", "hidden": 16},
                           "rule": {"name": "sgd", "lr": 0.1}, "budget": {"steps": 60}},
                          save=False)
    assert result.summary["status"] == "completed"
    assert result.history.evaluations["loss"][-1] < result.history.evaluations["loss"][0]
