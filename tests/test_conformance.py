"""Every runtime through the same checks, as torch.optim's ``OptimizerInfo`` drives every optimizer.

:data:`CELLS` is the registry of runtime × mode × layout × protocol; each test asserts one
invariant for every cell it applies to (the applicability is a property of the cell, never a
skip):

* the history: delays ≥ 0, versions monotone, one row per arrival, step rows = final version
  (one server, lock-free, simulator; also after a killed worker and after SIGTERM), ``cancel``
  rows only where the protocol cancels, nothing left running and nothing left in ``/dev/shm``;
* with one worker and plain SGD every runtime computes the simulator's run: the same losses
  and the same final model;
* a killed worker gets a ``lost`` row and the run goes on (where the protocol allows it);
* SIGTERM to the whole process group of ``asyncopt run``: exit code 143, a summary with status
  ``interrupted``, ``model.pt``, and no process left in the group;
* a checkpointed run resumes and continues.

One local Ray serves every in-process Ray cell; the models and budgets are tiny.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faults
import numpy as np
import pytest
import torch
from faults import Faulty, logged

import asyncopt
from asyncopt.api import Result, resume_run, train
from asyncopt.problems.base import Problem
from asyncopt.problems.registry import make_problem
from asyncopt.record import load
from asyncopt.rules.registry import make_rule

pytestmark = pytest.mark.slow

DIGITS = {"name": "logistic", "dataset": "digits"}
SHM = Path("/dev/shm")


@dataclass(frozen=True)
class Cell:
    """One runtime, mode and layout with one protocol, and what it supports."""

    id: str
    runtime: str
    protocol: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
    cancels: bool = False  # the protocol cancels computations in flight (heterogeneous speeds)
    one_version: bool = True  # one version counter (not K block servers): step rows = version
    central: bool = True  # one server handles the arrivals (not lock-free, not block servers)

    def __repr__(self) -> str:
        return self.id


RAY = {"worker_cpus": 0.5}
CELLS = [
    Cell("sim-asgd", "sim", {"name": "asgd"}),
    Cell("sim-ringmaster", "sim", {"name": "ringmaster", "max_delay": 2}, cancels=True),
    Cell("processes-asgd", "processes", {"name": "asgd"}),
    Cell("processes-rennala", "processes", {"name": "rennala", "batch_size": 2}, cancels=True,
         options={"time_scale": 0.005}),
    Cell("processes-lockfree", "processes", {"name": "asgd"}, {"mode": "lockfree"},
         central=False),
    Cell("processes-servers", "processes", {"name": "asgd"}, {"servers": 2}, one_version=False,
         central=False),
    Cell("ray-asgd", "ray", {"name": "asgd"}, RAY),
    Cell("ray-rennala", "ray", {"name": "rennala", "batch_size": 2}, {**RAY, "time_scale": 0.005},
         cancels=True),
    Cell("ray-servers", "ray", {"name": "asgd"}, {**RAY, "servers": 2}, one_version=False,
         central=False),
]
REAL = [cell for cell in CELLS if cell.runtime != "sim" and cell.protocol["name"] == "asgd"]
SPEED = {"factors": [1.0, 1.0, 4.0]}


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray for every Ray cell of this module (started when the first one runs)."""
    yield
    if "ray" in sys.modules:
        import ray

        ray.shutdown()


def _ray_started(cell: Cell) -> None:
    if cell.runtime == "ray":
        import ray

        from asyncopt.runtimes.ray import cluster

        if not ray.is_initialized():
            cluster.start_local(num_cpus=4)
            _by_value()


def _train(cell: Cell, problem: Problem, *, run_dir: Path | None = None, every: float = 10,
           options: dict[str, Any] | None = None, **budget: Any) -> Result:
    _ray_started(cell)
    return train(problem, make_rule({"name": "sgd", "lr": 0.1}, problem.num_workers),
                 cell.protocol, speed=SPEED if problem.num_workers == 3 else {},
                 budget=budget, evaluation={"every": every}, runtime=cell.runtime,
                 runtime_options={**cell.options, **(options or {})}, run_dir=run_dir)


def _left_behind(before: set[str]) -> list[str]:
    """Worker processes of this process still alive, and new files in /dev/shm."""
    import multiprocessing

    processes = [p.name for p in multiprocessing.active_children()
                 if p.name.startswith("asyncopt-")]
    files = sorted(_shm() - before)
    return processes + [f for f in files if f.startswith(("asyncopt", "torch"))]


def _shm() -> set[str]:
    """/dev/shm's files, except the Ray segments of other live processes (another test run
    on the machine): a segment is ``asyncopt-ray-<creator pid>-<random>``."""
    names = {p.name for p in SHM.glob("*")} if SHM.is_dir() else set()
    return {name for name in names if not _someone_elses(name)}


def _someone_elses(name: str) -> bool:
    parts = name.split("-")
    if not name.startswith("asyncopt-ray-") or len(parts) < 4 or not parts[2].isdigit():
        return False
    creator = int(parts[2])
    if creator == os.getpid():
        return False
    try:
        os.kill(creator, 0)
    except ProcessLookupError:
        return False  # its creator is dead: a leftover, whoever made it
    return True


@pytest.mark.parametrize("cell", CELLS, ids=repr)
def test_the_history_accounts_for_every_arrival_and_step(cell):
    before = _shm()
    result = _train(cell, make_problem(DIGITS, 3, 0), steps=60)
    a, summary = result.history.arrivals, result.summary
    assert summary["status"] == "completed", summary["reason"]
    assert (a["delay"] >= 0).all() and (np.diff(a["version"]) >= 0).all()
    gradients = ~np.isin(a["action"], ["cancel", "lost", "restart"])
    assert summary["arrivals"] == gradients.sum() and (np.diff(a["now"]) >= 0).all()
    assert sum(summary["actions"].values()) == len(a["now"])
    steps = int((a["action"] == "step").sum())
    if cell.one_version:
        assert steps == summary["version"] >= 60
    else:  # K block servers: the recorded version is the least block's, and with SGD every
        # server applies every arrival: each one's steps are the step rows
        assert steps >= summary["version"] >= 60
        assert summary["servers"] == [steps, steps], summary["servers"]
    assert ("cancel" in set(a["action"])) == cell.cancels
    assert not _left_behind(before)


@pytest.mark.parametrize("cell", [c for c in CELLS if c.protocol["name"] == "asgd"], ids=repr)
def test_with_one_worker_every_runtime_computes_the_simulators_run(cell):
    problem = make_problem(DIGITS, 1, 0)
    simulated = _train(CELLS[0], problem, steps=25)
    real = _train(cell, problem, steps=25)
    assert real.summary["version"] == 25
    steps = real.history.arrivals["action"] == "step"
    assert (real.history.arrivals["delay"][steps] == 0).all()
    np.testing.assert_allclose(real.history.arrivals["loss"][steps],
                               simulated.history.arrivals["loss"], rtol=1e-6)
    for name, value in simulated.params.items():
        torch.testing.assert_close(real.params[name], value, rtol=1e-6, atol=1e-7)


def _by_value() -> None:
    """Ray actors cannot import the tests' modules: their classes travel by value."""
    import ray

    ray.cloudpickle.register_pickle_by_value(faults)


@pytest.mark.parametrize("cell", REAL, ids=repr)
def test_a_killed_worker_is_lost_and_the_run_goes_on(cell, caplog):
    # paced (2 ms a gradient at least), so that worker 1 reaches its 3rd gradient early
    options = {"time_scale": 0.002, **({"max_restarts": 0} if cell.runtime == "ray" else {})}
    before = _shm()
    result = _train(cell, Faulty(make_problem(DIGITS, 3, 0), victims=(1,), at=3), steps=150,
                    options=options)
    assert logged(caplog, "died"), caplog.text
    a = result.history.arrivals
    assert result.summary["status"] == "completed", result.summary["reason"]
    lost = np.flatnonzero((a["action"] == "lost") & (a["worker"] == 1))
    assert len(lost) == 1
    assert not (a["worker"][lost[0] + 1:] == 1).any()  # never heard of again
    assert set(a["worker"][lost[0] + 1:]) == {0, 2}  # the others go on
    if cell.central:  # the gradient it was computing: a cancel row just before its lost row
        mine = np.flatnonzero(a["worker"] == 1)
        assert list(a["action"][mine[-2:]]) == ["cancel", "lost"]
        assert (a["action"][mine[:-2]] == "step").all()
    if cell.one_version:  # every step has its row, the killed worker's last ones included
        assert int((a["action"] == "step").sum()) == result.summary["version"]
    assert not _left_behind(before)


CONFIG = """
workers = 2
[problem]
name = "logistic"
dataset = "digits"
[rule]
name = "sgd"
lr = 0.05
[budget]
time = 120
[eval]
every = 20
"""
SIGTERM_CELLS = [cell for cell in CELLS if cell.protocol["name"] == "asgd"]


@pytest.mark.parametrize("cell", SIGTERM_CELLS, ids=repr)
def test_sigterm_to_the_process_group_stops_the_run_cleanly(tmp_path, cell):
    config = tmp_path / "run.toml"
    config.write_text(CONFIG)
    overrides = [f"runtime={cell.runtime!r}"] + [
        f"runtime_options.{k}={v!r}" for k, v in cell.options.items()]
    if cell.runtime == "sim":  # 120 virtual seconds take no time at all
        overrides.append("budget.time=1e12")
    command = [sys.executable, "-m", "asyncopt.cli", "run", str(config), "--quiet", "--out",
               str(tmp_path / "runs"), *[a for o in overrides for a in ("--set", o)]]
    before = _shm()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not any(
                load(run).num_arrivals > 20 for run in _runs(tmp_path)):
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGTERM)  # as Slurm, systemd or `timeout` send it
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    report = (out + err).decode()
    assert process.returncode == 128 + signal.SIGTERM, report
    (run_dir,) = _runs(tmp_path)
    history = load(run_dir)
    summary = history.summary
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGTERM", report
    if cell.one_version:
        steps = int((history.arrivals["action"] == "step").sum())
        assert steps == summary["version"], report
    assert summary["final"] and (run_dir / "model.pt").is_file()
    assert _group_gone(process.pid), "processes of the run outlived it"
    assert not [f for f in _shm() - before if f.startswith("asyncopt")]


def _runs(root: Path) -> list[Path]:
    return [p for p in (root / "runs").glob("*") if (p / "arrivals.csv").is_file()]


def _group_gone(group: int, wait: float = 10.0) -> bool:
    deadline = time.time() + wait
    while time.time() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


PACED = {"sim": {}, "processes": {"time_scale": 0.02}, "ray": {"time_scale": 0.02}}
"""At least 20 ms a gradient: workers that step by themselves would otherwise take the whole step
budget before the driver first looks (a checkpoint is taken when the driver sees the version
pass a multiple of ``checkpoint_every``)."""


@pytest.mark.parametrize("cell", CELLS, ids=repr)
def test_a_checkpointed_run_resumes_and_goes_on(tmp_path, cell):
    _ray_started(cell)
    config = {"problem": DIGITS, "workers": 3, "rule": {"name": "sgd", "lr": 0.1},
              "protocol": cell.protocol, "speed": SPEED, "budget": {"steps": 40},
              "eval": {"every": 10}, "runtime": cell.runtime,
              "runtime_options": {**PACED[cell.runtime], **cell.options, "checkpoint_every": 15},
              "output": {"dir": str(tmp_path), "name": "run"}}
    first = asyncopt.run(config)
    assert first.summary["status"] == "completed"
    saved = torch.load(first.run_dir / "checkpoint.pt", weights_only=True)
    kept = saved["arrival_rows"]
    if cell.one_version:  # a consistent copy: the history up to it has a row for each version
        assert saved["version"] >= 15
        assert int((first.history.arrivals["action"][:kept] == "step").sum()) == saved["version"]
    else:  # K block servers: each one's snapshot at its own moment
        assert [b["version"] for b in saved["blocks"]] >= [15, 15]
    resumed = resume_run(first.run_dir, overrides=["budget.steps=70"])
    assert resumed.summary["status"] == "completed" and resumed.summary["version"] >= 70
    a, old = resumed.history.arrivals, first.history.arrivals
    assert np.array_equal(a["version"][:kept], old["version"][:kept])
    assert (np.diff(a["version"]) >= 0).all() and a["version"][kept] >= saved["version"]
