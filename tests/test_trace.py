"""Measured speeds: the recorded latency and server time, traces as a speed model, the server.

Traces are small CSV files and run directories made here; one real processes run (slow) shows
that a real run records what a trace needs.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from test_resume_sim import _same

import asyncopt
from asyncopt.api import resume_run
from asyncopt.errors import ConfigError
from asyncopt.problems.datasets import DataFileError
from asyncopt.record import load
from asyncopt.runtimes.sim.speed import make_speed_model
from asyncopt.runtimes.sim.speed_spec import resolve_speed_spec
from asyncopt.runtimes.sim.trace_file import read_trace
from tests.conftest import simulate

QUADRATIC = {"name": "quadratic", "dim": 10, "noise": 0.1, "heterogeneity": 1.0}


def _csv(tmp_path: Path, text: str, name: str = "trace.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _two_workers(tmp_path: Path) -> str:
    rows = ["worker,compute_time,latency"]
    rows += [f"0,{t},0.5" for t in (1.0, 2.0, 3.0)] + [f"1,{t},0.25" for t in (10.0, 20.0)]
    return _csv(tmp_path, "\n".join(rows) + "\n")


def _draws(model, worker: int, count: int, now: float = 0.0) -> list[float]:
    return [model.compute_time(worker, now) for _ in range(count)]


def test_resampling_draws_each_workers_own_times_deterministically(tmp_path):
    spec = {"trace": _two_workers(tmp_path)}
    model = make_speed_model(spec, 2, seed=3)
    first = _draws(model, 0, 200)
    assert set(first) == {1.0, 2.0, 3.0} and set(_draws(model, 1, 50)) == {10.0, 20.0}
    assert model.latency(1, 0.0) == 0.25
    assert _draws(make_speed_model(spec, 2, seed=3), 0, 200) == first
    assert _draws(make_speed_model(spec, 2, seed=4), 0, 200) != first


def test_replay_goes_through_a_workers_times_in_order_and_starts_over(tmp_path):
    model = make_speed_model({"trace": _two_workers(tmp_path), "trace_mode": "replay"}, 2, 0)
    assert _draws(model, 0, 7) == [1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 1.0]
    assert _draws(model, 1, 3) == [10.0, 20.0, 10.0]


def test_a_fresh_worker_replays_its_slow_first_gradients_then_resamples_the_rest(tmp_path):
    times = [9.0, 5.0, 1.0, 2.0, 8.0, 1.0, 2.0]  # 9 and 5 lead, slower than twice the median
    trace = _csv(tmp_path, "worker,compute_time,latency\n" + "".join(
        f"0,{t},{k}\n" for k, t in enumerate(times)))
    model = make_speed_model({"trace": trace}, 1, 0)
    first = [(model.compute_time(0, 0.0), model.latency(0, 0.0)) for _ in range(2)]
    assert first == [(9.0, 0.0), (5.0, 1.0)]  # in order, each with its own latency
    assert set(_draws(model, 0, 300)) == {1.0, 2.0, 8.0}  # a later 8 is no warm-up
    assert _draws(make_speed_model({"trace": trace, "trace_warmup": 3}, 1, 0), 0, 3) == [
        9.0, 5.0, 1.0]
    assert 9.0 in set(_draws(make_speed_model({"trace": trace, "trace_warmup": 0}, 1, 0), 0,
                             300))
    with pytest.raises(ConfigError, match=r'speed.trace_warmup = 2 .*trace_mode = "replay"'):
        make_speed_model({"trace": trace, "trace_mode": "replay", "trace_warmup": 2}, 1, 0)


def test_windows_resample_within_the_time_the_job_started(tmp_path):
    # worker 0 is fast (1 s) for its first 10 jobs, then slow (5 s): starts 0..9, then 10, 15, ..
    times = [1.0] * 10 + [5.0] * 10
    path = _csv(tmp_path, "worker,compute_time\n" + "".join(f"0,{t}\n" for t in times))
    model = make_speed_model({"trace": path, "trace_window": 10.0}, 1, 0)
    assert set(_draws(model, 0, 50, now=3.0)) == {1.0}
    assert set(_draws(model, 0, 50, now=12.0)) == {5.0}
    assert set(_draws(model, 0, 50, now=1e6)) == {5.0}  # past the end: the last window


def test_worker_counts_that_differ_need_a_mapping(tmp_path):
    spec = {"trace": _two_workers(tmp_path)}
    with pytest.raises(ConfigError, match=r"workers = 3 .*trace's worker count.*modulo"):
        make_speed_model(spec, 3, 0)
    modulo = make_speed_model({**spec, "trace_workers": "modulo"}, 3, 0)
    assert set(_draws(modulo, 2, 100)) == {1.0, 2.0, 3.0}  # worker 2 <- trace worker 0
    pooled = make_speed_model({**spec, "trace_workers": "pooled"}, 3, 0)
    assert set(_draws(pooled, 2, 300)) == {1.0, 2.0, 3.0, 10.0, 20.0}


@pytest.mark.parametrize("text, match", [
    ("worker,time\n0,1.0\n", r"line 1: no column 'compute_time'"),
    ("worker,compute_time\n0,1.0\n0,nan\n", r"line 3: column 'compute_time': 'nan'"),
    ("worker,compute_time\n0,0\n", r"line 2: column 'compute_time': '0' is not .*> 0"),
    ("worker,compute_time\n0,-1.5\n", r"line 2: column 'compute_time': '-1.5'"),
    ("worker,compute_time,latency\n0,1.0,-1\n", r"line 2: column 'latency': '-1' .*>= 0"),
    ("worker,compute_time\n0,1.0\n2,1.0\n", r"column 'worker': no rows for worker 1 of 0..2"),
    ("worker,compute_time\nx,1.0\n", r"line 2: column 'worker': 'x' is not a worker id"),
    ("worker,compute_time\n0\n", r"line 2: 1 values for 2 columns"),
])
def test_a_bad_trace_names_the_file_the_line_and_the_column(tmp_path, text, match):
    path = _csv(tmp_path, text)
    with pytest.raises(DataFileError, match=match) as caught:
        make_speed_model({"trace": path}, 1, 0)
    assert path in str(caught.value)


def test_a_trace_replaces_the_parametric_keys_and_needs_an_existing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"speed.noise .*left out when speed.trace"):
        resolve_speed_spec({"trace": "x.csv", "noise": "exponential"})
    with pytest.raises(ConfigError, match=r"speed.trace = .*run directory"):
        make_speed_model({"trace": str(tmp_path / "missing")}, 1, 0)
    with pytest.raises(ConfigError, match=r"speed.trace_window .*replay"):
        resolve_speed_spec({"trace": "x.csv", "trace_mode": "replay", "trace_window": 5.0})
    with pytest.raises(ConfigError, match=r"speed.server_time = 'trace' .*no measured"):
        make_speed_model({"trace": _two_workers(tmp_path), "server_time": "trace"}, 2, 0)
    assert resolve_speed_spec(resolve_speed_spec({"trace": "x.csv"})) == resolve_speed_spec(
        {"trace": "x.csv"})


def _config(tmp_path: Path, name: str, speed: dict, **extra) -> dict:
    return {"problem": {"name": "logistic", "dataset": "breast_cancer"}, "workers": 3,
            "rule": {"name": "sgd", "lr": 0.05}, "protocol": {"name": "asgd"}, "speed": speed,
            "budget": {"steps": 120}, "eval": {"every": 30},
            "output": {"dir": str(tmp_path), "name": name}, **extra}


def test_the_queue_is_taken_out_of_a_runs_latency(tmp_path):
    # three workers whose gradients travel 0.1, 0.2, 0.3 s to a server that takes 0.4 s per
    # arrival: they queue; the trace's latency is the travel time, the queue taken out
    speed = {"times": [1.0, 1.0, 1.5], "latency": [0.1, 0.2, 0.3], "server_time": 0.4}
    run = asyncopt.run(_config(tmp_path, "queued", speed))
    arrivals = run.history.arrivals
    assert (arrivals["server_time"] == pytest.approx(0.4)) and arrivals["latency"].max() > 0.5
    trace = read_trace(run.run_dir)
    for worker, travel in enumerate((0.1, 0.2, 0.3)):
        assert np.median(trace.latency[worker]) == pytest.approx(travel, abs=1e-9)
        assert (trace.latency[worker] <= travel + 1e-9).all()
        assert trace.compute[worker] == pytest.approx(speed["times"][worker])
    assert trace.server == pytest.approx(0.4)


def test_a_busy_server_caps_the_arrival_rate(tmp_path):
    budget = {"time": 100.0}
    free = asyncopt.run(_config(tmp_path, "free", {}, workers=8) | {"budget": budget})
    busy = asyncopt.run(_config(tmp_path, "busy", {"server_time": 0.5}, workers=8)
                        | {"budget": budget})
    assert free.summary["arrivals"] == pytest.approx(800, abs=8)  # 8 workers, 1 s each
    assert busy.summary["arrivals"] == pytest.approx(200, abs=2)  # one per 0.5 s at most
    assert (free.history.arrivals["latency"] == 0.0).all()


def test_a_simulation_from_a_run_directory_is_deterministic_and_resumes_bit_for_bit(tmp_path):
    source = asyncopt.run(_config(tmp_path, "source", {
        "times": [1.0, 2.0, 3.0], "noise": "exponential", "noise_scale": 0.5,
        "latency": 0.1, "server_time": 0.05}))
    speed = {"trace": str(source.run_dir), "trace_window": 20.0}
    config = _config(tmp_path, "traced", speed, runtime_options={"checkpoint_every": 40})
    whole = asyncopt.run(config)
    again = asyncopt.run(config | {"output": {"dir": str(tmp_path), "name": "again"}})
    _same(whole, again)
    _same(whole, resume_run(whole.run_dir))
    other = _config(tmp_path, "other", speed) | {"problem": {"name": "logistic",
                                                             "dataset": "iris"}}
    with pytest.raises(ConfigError, match=r"problem.dataset is 'breast_cancer'"):
        asyncopt.run(other)
    assert not (tmp_path / "other").exists()  # refused before anything was written


def test_histories_without_the_new_columns_still_load_and_trace(tmp_path):
    result = simulate(QUADRATIC, {"name": "sgd", "lr": 0.05}, run_dir=tmp_path / "run",
                      workers=2, steps=20)
    path = result.run_dir / "arrivals.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(",".join(line.split(",")[:8]) for line in lines) + "\n")
    history = load(result.run_dir)
    assert "latency" not in history.arrivals and history.num_arrivals == 20
    trace = read_trace(result.run_dir)
    assert [len(c) for c in trace.compute] == [10, 10] and not len(trace.server)
    assert all((latency == 0).all() for latency in trace.latency)


@pytest.mark.slow
def test_a_real_run_records_latency_and_server_time_and_drives_the_simulator(tmp_path):
    config = _config(tmp_path, "real", {"factors": [1.0, 1.0, 3.0]}, runtime="processes",
                     runtime_options={"time_scale": 0.01}) | {"budget": {"steps": 150}}
    real = asyncopt.run(config)
    arrivals = real.history.arrivals
    handled = arrivals["action"] == "step"
    assert np.isfinite(arrivals["latency"][handled]).all()
    assert (arrivals["latency"][handled] >= 0).all()
    assert (arrivals["server_time"][handled] > 0).all()
    trace = read_trace(real.run_dir)
    slow, fast = np.median(trace.compute[2]), np.median(trace.compute[0])
    assert 2.0 < slow / fast < 4.0
    sim = asyncopt.run(_config(tmp_path, "sim", {"trace": str(real.run_dir)}))
    assert sim.summary["status"] == "completed"
    share = np.mean(sim.history.arrivals["worker"] == 2)
    assert share == pytest.approx(np.mean(arrivals["worker"][handled] == 2), abs=0.08)
    assert math.isfinite(sim.summary["now"])
