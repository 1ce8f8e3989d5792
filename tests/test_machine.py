"""What simulated workers share (sim.machine): shared cores, cancels that finish, evaluation
pauses; a trace's times taken back to seconds alone on a core; the processes worker, which
finishes a cancelled gradient as the simulator's ``cancel = "finish"`` says."""

from __future__ import annotations

import json
import threading
import time
from multiprocessing import Pipe
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import asyncopt
from asyncopt.api import Result
from asyncopt.errors import ConfigError
from asyncopt.problems.registry import make_problem
from asyncopt.runtimes.common.shared import GradientSlots, SharedModel, template
from asyncopt.runtimes.processes.worker import STOP, _Worker
from asyncopt.runtimes.sim.loop import Simulator
from asyncopt.runtimes.sim.machine import Cores, SharedCores
from asyncopt.runtimes.sim.speed import make_speed_model
from asyncopt.runtimes.sim.speed_spec import resolve_speed_spec
from asyncopt.runtimes.sim.trace_file import Trace, read_trace

QUADRATIC = {"name": "quadratic", "dim": 4, "noise": 0.1}


def _run(tmp_path, name: str, workers: int, speed: dict, protocol: str = "asgd",
         budget: dict | None = None, evaluation: dict | None = None) -> Result:
    return asyncopt.run({"problem": QUADRATIC, "workers": workers, "protocol": {"name": protocol},
                         "rule": {"name": "sgd", "lr": 0.05}, "speed": speed,
                         "budget": budget or {"steps": 8},
                         "eval": evaluation or {"every": 1000},
                         "output": {"dir": str(tmp_path), "name": name}})


def test_processor_sharing_divides_the_cores_among_the_computations_in_progress():
    cores = Cores(2)
    for key, work in enumerate((1.0, 2.0, 3.0)):
        cores.add(key, work, 0.0)
    # three on two cores at 2/3 each until the first ends (W = 1), then two at full speed
    assert [cores.pop() for _ in range(3)] == [(1.5, 0), (2.5, 1), (3.5, 2)]
    cores.add("a", 1.0, 4.0)
    cores.add("b", 1.0, 4.0)
    cores.add("c", 1.0, 4.5)  # a and b have 0.5 left; three share two cores from 4.5
    cores.remove("b", 4.5)  # preempted: a and c at full speed again
    assert cores.pop() == (5.0, "a") and cores.pop() == (5.5, "c")
    assert cores.next_end() == float("inf")


def _job(worker: int, order: int, compute: float, before: float = 0.0) -> SimpleNamespace:
    return SimpleNamespace(worker=worker, order=order, compute=compute, before=before,
                           started=None)


@pytest.mark.parametrize("cancel", ["finish", "preempt", "queue"])
def test_a_cancelled_computation_runs_to_its_end_unless_preempted(cancel):
    shared = SharedCores(1, cancel)
    first, second = _job(0, 1, 2.0), _job(0, 2, 1.0)
    shared.start(first, 0.0)
    shared.cancel(first, 1.0)  # in its computation
    shared.start(second, 1.0)
    if cancel == "preempt":
        assert shared.complete() == (2.0, second) and second.started == 1.0
    else:  # the worker ends the dropped gradient first; the new job waits for it
        assert shared.complete() == (2.0, None)
        assert shared.complete() == (3.0, second) and second.started == 2.0
    woken = _job(1, 3, 5.0, before=1.0)  # its time before computing: a cancel drops it,
    shared.start(woken, 3.0)  # unless every job sent runs
    shared.cancel(woken, 3.5)
    if cancel == "queue":
        assert shared.complete() == (4.0, None) and shared.complete() == (9.0, None)
    assert shared.next_end() == float("inf")


@pytest.mark.parametrize("cancel", ["finish", "queue"])
def test_a_newer_job_replaces_one_waiting_for_a_dropped_computation_unless_all_run(cancel):
    shared = SharedCores(1, cancel)
    first, waiting, newest = _job(0, 1, 2.0), _job(0, 2, 1.0), _job(0, 3, 1.0)
    shared.start(first, 0.0)
    shared.cancel(first, 0.5)
    shared.start(waiting, 0.5)
    shared.cancel(waiting, 1.0)  # not begun: dropped, or run in its turn (as a Ray actor does)
    shared.start(newest, 1.0)
    assert shared.complete() == (2.0, None)
    if cancel == "queue":
        assert shared.complete() == (3.0, None)
    assert shared.complete() == ((4.0 if cancel == "queue" else 3.0), newest)


@pytest.mark.parametrize("cancel, arrival", [("preempt", 3.0), ("finish", 4.0), ("queue", 6.0)])
def test_what_a_cancel_costs_a_worker_with_a_processor_of_its_own(cancel, arrival):
    problem = make_problem(QUADRATIC, 2, 0)
    params = problem.init_params(torch.Generator().manual_seed(0))
    simulator = Simulator(problem, make_speed_model({"times": [2.0, 0.5], "cancel": cancel},
                                                    2, 0), seed=0)
    simulator.open(SimpleNamespace(now=0.0, budget=SimpleNamespace(time=None)))
    job = iter(range(1, 100))

    def fast_arrives() -> None:
        (event,) = simulator.wait(1.0)
        assert event.worker == 1
        simulator.receive(event)
        simulator.start(1, next(job), 0, params)

    simulator.start(0, next(job), 0, params)  # 2 s, begun at 0
    simulator.start(1, next(job), 0, params)
    for _ in range(2):  # at 0.5 and at 1: worker 0's job is cancelled and it is restarted
        fast_arrives()
        simulator.cancel(0, 0)
        simulator.start(0, next(job), 0, params)
    # preempt: the last restart begins at 1; finish: at 2, once the first computation ends
    # (the one started at 0.5 had not begun: dropped); queue: at 4, after that one too
    while True:
        (event,) = simulator.wait(1.0)
        if event.worker == 0:
            break
        simulator.receive(event)
        simulator.start(1, next(job), 0, params)
    assert simulator.now() == arrival and event.compute_time == 2.0


def test_more_workers_than_cores_stretch_every_gradient(tmp_path):
    alone = _run(tmp_path, "alone", 4, {"times": [1.0] * 4})
    shared = _run(tmp_path, "shared", 4, {"times": [1.0] * 4, "cores": 2})
    assert alone.history.arrivals["now"].tolist() == [1.0] * 4 + [2.0] * 4
    assert shared.history.arrivals["now"].tolist() == [2.0] * 4 + [4.0] * 4
    assert shared.history.arrivals["compute_time"] == pytest.approx(2.0)


def test_workers_left_idle_speed_up_the_others(tmp_path):
    # minibatch waits for the slow worker: on 2 cores the three fast ones share them at half
    # speed until t = 2, then the slow one has a core to itself
    speed = {"times": [1.0, 1.0, 1.0, 3.0]}
    alone = _run(tmp_path, "alone", 4, speed, protocol="minibatch", budget={"steps": 1})
    shared = _run(tmp_path, "shared", 4, {**speed, "cores": 2}, protocol="minibatch",
                  budget={"steps": 1})
    assert alone.summary["now"] == 3.0 and shared.summary["now"] == 4.0


def test_the_server_shares_the_cores_it_works_on(tmp_path):
    # one worker and the server on one core: 0.5 s of server work per arrival leaves the
    # worker's next gradient (begun as the server works) at half speed meanwhile
    run = _run(tmp_path, "server", 1, {"times": [1.0], "server_time": 0.5, "cores": 1},
               budget={"steps": 3})
    assert run.history.arrivals["now"].tolist() == [1.0, 2.5, 4.0]


def test_evaluations_pause_the_server(tmp_path):
    every = {"every": 2.5, "unit": "time"}
    free = _run(tmp_path, "free", 1, {"times": [1.0]}, budget={"time": 10.0}, evaluation=every)
    paused = _run(tmp_path, "paused", 1, {"times": [1.0], "eval_time": 1.0},
                  budget={"time": 10.0}, evaluation=every)
    assert free.history.arrivals["now"].tolist() == [float(t) for t in range(1, 11)]
    # the first evaluation (at 0) ends before the first arrival; one due at 2.5 starts then
    # and holds the arrival at 3 until 3.5, when the worker starts again, and so on
    assert paused.history.arrivals["now"].tolist() == [1.0, 2.0, 3.5, 4.5, 6.0, 7.0, 8.5, 9.5]
    assert list(paused.history.evaluations["now"]) == [0.0, 2.5, 5.0, 7.5, 10.0]


def test_the_machine_options_are_checked():
    with pytest.raises(ConfigError, match=r"speed.cores = -1 .*>= 0"):
        resolve_speed_spec({"cores": -1})
    with pytest.raises(ConfigError, match=r"speed.cancel = 'wait'.*one of finish, preempt"):
        resolve_speed_spec({"cancel": "wait"})
    with pytest.raises(ConfigError, match=r"speed.eval_time = 'trace'.*seconds >= 0 per "
                                          r"evaluation$"):
        resolve_speed_spec({"eval_time": "trace"})
    model = make_speed_model({"cores": 3, "cancel": "finish", "eval_time": 0.25}, 2, 0)
    assert (model.cores, model.cancel, model.eval_time) == (3, "finish", 0.25)
    assert "3 shared cores" in model.describe() and "0.25 s per evaluation" in model.describe()
    plain = make_speed_model({}, 2, 0)
    assert (plain.cores, plain.cancel, plain.eval_time) == (None, "preempt", 0.0)


def test_a_trace_is_taken_back_to_seconds_alone_on_a_core():
    # one core: two computations side by side on [0, 2] (half speed), then on [2, 3] worker
    # 0's next one beside a handling [2, 3], and from 2.5 worker 1's next one too (a third)
    trace = Trace(path=None, compute=[np.array([2.0, 1.0]), np.array([2.0, 0.5])],  # type: ignore[arg-type]
                  latency=[np.zeros(2), np.zeros(2)],
                  start=[np.array([0.0, 2.0]), np.array([0.0, 2.5])],
                  server=np.array([1.0]), handled=np.array([2.0]), eval_time=1.0)
    alone = trace.alone(1)
    third = 0.5 / 3
    assert alone.compute[0] == pytest.approx([1.0, 0.25 + third])
    assert alone.compute[1] == pytest.approx([1.0, third])
    assert alone.server == pytest.approx([0.25 + third])
    assert alone.eval_time == pytest.approx(0.25 + third)  # scaled as the handlings
    assert all((ell == 0).all() for ell in alone.latency)
    cut = Trace(path=None, compute=[np.array([1.0, 2.0]), np.array([2.0])],  # type: ignore[arg-type]
                latency=[np.zeros(2), np.zeros(1)], start=[np.array([0.0, 1.0]),
                                                          np.array([0.0])],
                server=np.array([]), handled=np.array([])).alone(1)
    # worker 0's second computation ended after worker 1's last: left out
    assert [len(c) for c in cut.compute] == [1, 1] and cut.compute[0] == pytest.approx([0.5])


def test_a_shared_machine_is_predicted_from_its_own_trace(tmp_path):
    # a run on 2 shared cores, read back as a trace of a 2-core machine: its times taken back
    # to seconds alone and shared again give the same arrivals
    speed = {"times": [1.0, 1.5, 2.0, 2.5], "cores": 2}
    source = _run(tmp_path, "source", 4, speed, budget={"steps": 40})
    alone = read_trace(source.run_dir).alone(2)
    for worker, seconds in enumerate((1.0, 1.5, 2.0, 2.5)):
        assert alone.compute[worker] == pytest.approx(seconds, rel=1e-9)
    again = _run(tmp_path, "again", 4, {"trace": str(source.run_dir), "cores": 2},
                 budget={"steps": 40})
    assert again.history.arrivals["now"] == pytest.approx(source.history.arrivals["now"])


def test_a_trace_of_a_real_run_gives_its_cores_and_its_evaluation_time(tmp_path):
    source = _run(tmp_path, "source", 2, {"times": [1.0, 2.0]}, budget={"steps": 20})
    summary = json.loads((source.run_dir / "summary.json").read_text())
    assert "cpus" not in summary  # a simulation shares no machine's cores
    config = (source.run_dir / "config.toml").read_text()
    (source.run_dir / "config.toml").write_text(config.replace('runtime = "sim"',
                                                               'runtime = "processes"'))
    (source.run_dir / "summary.json").write_text(json.dumps(
        {**summary, "cpus": 3, "evaluation_wall_seconds": 0.02}))
    model = make_speed_model({"trace": str(source.run_dir)}, 2, 0)
    assert (model.cores, model.cancel, model.eval_time) == (3, "finish", 0.02)
    assert model.mapping == "pooled"  # alike workers, scheduled by the operating system
    assert make_speed_model({"trace": str(source.run_dir), "cores": 0}, 2, 0).cores == 0
    (source.run_dir / "config.toml").write_text(config.replace(
        'runtime = "sim"', 'runtime = "processes"').replace(
        "[runtime_options]\n", "[runtime_options]\ntime_scale = 0.01\n"))
    model = make_speed_model({"trace": str(source.run_dir)}, 2, 0)  # its workers slept
    assert (model.cores, model.mapping) == (None, "same")
    (source.run_dir / "config.toml").write_text(config.replace('runtime = "sim"',
                                                               'runtime = "ray"'))
    assert make_speed_model({"trace": str(source.run_dir)}, 2, 0).cancel == "queue"
    with pytest.raises(ConfigError, match=r"speed.eval_time = 'trace'.*has no measured"):
        make_speed_model({"trace": str(_run(tmp_path, "sim", 2, {}).run_dir),
                          "eval_time": "trace"}, 2, 0)


class _Pipe:
    """The main process's end of a worker's pipe, with the worker built in this process."""

    def __init__(self, padding: float) -> None:
        self.main, theirs = Pipe()
        problem = make_problem(QUADRATIC, 1, 0)
        like = template(problem.init_params(torch.Generator().manual_seed(0)))
        model = SharedModel(like)
        model.publish(like, 0)
        self.worker = _Worker(0, theirs, problem, model, GradientSlots(like, 1),
                              make_speed_model({"times": [1.0]}, 1, 0), 0, padding)

    def send_after(self, seconds: float, command: tuple[int, float]) -> None:
        threading.Timer(seconds, self.main.send, (command,)).start()


def test_a_process_worker_finishes_its_padding_before_a_newer_job():
    pipe = _Pipe(padding=0.3)
    pipe.send_after(0.05, (0, 0.0))  # cancel
    pipe.send_after(0.1, (7, 0.0))  # and a restart's new job
    began = time.perf_counter()
    assert pipe.worker._compute(1, 0.0) == (7, 0.0)  # the newest command, once padded
    assert time.perf_counter() - began >= 0.3 - 1e-3
    assert not pipe.main.poll()  # the dropped gradient was not sent
    pipe.send_after(0.05, (STOP, 0.0))
    began = time.perf_counter()
    assert pipe.worker._compute(2, 0.0) == (STOP, 0.0)
    assert time.perf_counter() - began < 0.25  # a stop cuts the padding short


def test_a_process_worker_never_begins_a_superseded_job():
    pipe = _Pipe(padding=0.0)
    for command in ((1, 0.0), (0, 0.0), (3, 0.0)):
        pipe.main.send(command)
    time.sleep(0.05)
    assert pipe.worker._next_command() == (3, 0.0)
    pipe.send_after(0.2, (STOP, 0.0))
    assert pipe.worker._compute(3, 0.0) == (STOP, 0.0)  # sent, then waited for a command
    assert pipe.main.recv()[:2] == ("grad", 3)
