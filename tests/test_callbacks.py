"""Callbacks (asyncopt.callbacks): every event, in the driver's thread, covering the history."""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest

import asyncopt
from asyncopt.errors import ConfigError
from asyncopt.problems.registry import make_problem

QUADRATIC = {"name": "quadratic", "dim": 10, "noise": 0.1, "heterogeneity": 1.0}


class Recording(asyncopt.Callback):
    """Keeps every event, and where (process, thread) it was called."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.places: set[tuple[int, int]] = set()

    def _keep(self, name: str, event: object) -> None:
        self.events.append((name, event))
        self.places.add((os.getpid(), threading.get_ident()))

    def on_begin(self, event):
        self._keep("begin", event)

    def on_evaluation(self, event):
        self._keep("evaluation", event)

    def on_arrivals(self, event):
        self._keep("arrivals", event)

    def on_end(self, summary):
        self._keep("end", summary)

    def of(self, name: str) -> list:
        return [event for kind, event in self.events if kind == name]

    def rows(self) -> list:
        return [row for batch in self.of("arrivals") for row in batch.rows]


def _train(tmp_path, callbacks, runtime="sim", workers=4, steps=200, **options):
    problem = make_problem(QUADRATIC, workers, 0)
    return asyncopt.train(problem, {"name": "sgd", "lr": 0.1}, "asgd", budget={"steps": steps},
                          evaluation={"every": 50}, run_dir=tmp_path / "run", runtime=runtime,
                          runtime_options=options, speed={"profile": "linear"},
                          callbacks=callbacks)


def _same_rows(rows: list, arrivals: dict[str, np.ndarray]) -> None:
    assert len(rows) == len(arrivals["now"])
    for column in ("worker", "version", "delay", "action"):
        assert [getattr(r, column) for r in rows] == list(arrivals[column]), column


def test_every_event_in_order_with_every_row_once(tmp_path):
    watcher = Recording()
    result = _train(tmp_path, [watcher])
    kinds = [kind for kind, _ in watcher.events]
    assert kinds[0] == "begin" and kinds[1] == "evaluation" and kinds[-1] == "end"
    assert kinds.count("begin") == kinds.count("end") == 1
    begin = watcher.of("begin")[0]
    assert begin.run_dir == tmp_path / "run" and begin.num_workers == 4
    # one batch per simulated arrival; together they are the history, row for row
    assert len(watcher.of("arrivals")) == result.history.num_arrivals
    _same_rows(watcher.rows(), result.history.arrivals)
    evaluations = watcher.of("evaluation")
    assert [e.version for e in evaluations] == list(result.history.evaluations["version"])
    assert [e.metrics["loss"] for e in evaluations] == list(result.history.evaluations["loss"])
    assert watcher.of("end")[0] == result.summary
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"
    assert watcher.places == {(os.getpid(), threading.get_ident())}


@pytest.mark.slow
def test_real_worker_processes_call_back_only_in_the_driver(tmp_path):
    watcher = Recording()
    result = _train(tmp_path, [watcher], runtime="processes", workers=2, steps=100)
    assert result.summary["status"] == "completed"
    assert watcher.places == {(os.getpid(), threading.get_ident())}
    _same_rows(watcher.rows(), result.history.arrivals)
    assert len(watcher.of("arrivals")) <= result.history.num_arrivals  # batches of events


def test_a_resumed_run_sends_only_its_new_rows(tmp_path):
    config = {"problem": QUADRATIC, "rule": {"name": "sgd", "lr": 0.1}, "budget": {"steps": 60},
              "eval": {"every": 10}, "runtime_options": {"checkpoint_every": 25},
              "output": {"dir": str(tmp_path), "name": "run"}}
    first = asyncopt.run(config)
    watcher = Recording()
    problem = make_problem(QUADRATIC, 4, 0)
    again = asyncopt.train(problem, {"name": "sgd", "lr": 0.1}, "asgd", budget={"steps": 90},
                           evaluation={"every": 10}, run_dir=tmp_path / "again",
                           runtime_options={"checkpoint_every": 25}, resume=first.run_dir,
                           callbacks=[watcher])
    restored = len(again.history.arrivals["now"]) - len(watcher.rows())
    assert 0 < restored < first.history.num_arrivals  # the rows up to the checkpoint
    tail = {k: v[restored:] for k, v in again.history.arrivals.items()}
    _same_rows(watcher.rows(), tail)
    assert watcher.of("begin")[0].config is None


def test_a_callback_that_raises_fails_the_run_and_the_others_still_end(tmp_path):
    class Broken(asyncopt.Callback):
        def on_evaluation(self, event):
            if event.version >= 100:
                raise OSError("tracker unreachable")

    watcher = Recording()
    with pytest.raises(OSError, match="tracker unreachable"):
        _train(tmp_path, [watcher, Broken()])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "tracker unreachable" in summary["reason"]
    assert [end["status"] for end in watcher.of("end")] == ["failed"]


def test_what_is_not_a_callback_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="callbacks"):
        _train(tmp_path, [print])
    assert not (tmp_path / "run").exists()


def test_a_callback_needs_only_the_methods_it_uses(tmp_path):
    class Losses:  # duck-typed: no base class, one method
        def __init__(self):
            self.losses = []

        def on_evaluation(self, event):
            self.losses.append(event.metrics["loss"])

    losses = Losses()
    result = _train(tmp_path, [losses])
    assert losses.losses == list(result.history.evaluations["loss"])


TRACKING = Path(__file__).resolve().parents[1] / "docs" / "tracking.md"


class _Recorder(types.ModuleType):
    """A stand-in for a tracking library: every function call is recorded, in ``calls``."""

    def __init__(self, name: str, calls: list, returns: object = None) -> None:
        super().__init__(name)
        self.calls, self.returns = calls, returns

    def __getattr__(self, attribute: str):
        if attribute.startswith("__"):
            raise AttributeError(attribute)

        def call(*args, **kwargs):
            self.calls.append((attribute, args, kwargs))
            return self.returns
        return call


@pytest.mark.parametrize("library", ["mlflow", "wandb"])
def test_the_tracking_docs_callbacks_run_as_written(library, tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", TRACKING.read_text(), re.DOTALL)
    block = next(b for b in blocks if f"import {library}\n" in b)
    calls: list[tuple[str, tuple, dict]] = []
    run = _Recorder("run", calls)  # what wandb.init returns
    run.summary = _Recorder("summary", calls)
    stand_in = _Recorder(library, calls, returns=run)
    monkeypatch.setitem(sys.modules, library, stand_in)
    real_run = asyncopt.run
    monkeypatch.setattr(asyncopt, "run", lambda config, callbacks: real_run(
        config, overrides=["budget.time=40", f'output.dir="{tmp_path}"'], callbacks=callbacks))
    exec(compile(block, f"docs/tracking.md {library} block", "exec"), {})
    names = [name for name, *_ in calls]
    if library == "mlflow":
        assert names[:2] == ["start_run", "log_params"] and names[-1] == "end_run"
        assert names.count("log_metrics") == 3 + 1  # evaluations at 0, 20, 40 s; the summary
        params = calls[1][1][0]
        assert params["rule.lr"] == 0.003 and params["problem.name"] == "mlp"
        assert calls[-1][1] == ("FINISHED",)
    else:
        assert names == ["init", "log", "log", "log", "update", "finish"]
        assert calls[0][2]["config"]["rule"]["lr"] == 0.003
