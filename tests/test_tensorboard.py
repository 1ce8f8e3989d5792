"""The TensorBoard writer: what a run writes is read back with TensorBoard's own reader."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import asyncopt
from asyncopt.cli import main
from asyncopt.errors import ConfigError
from asyncopt.problems.registry import make_problem

QUADRATIC = {"name": "quadratic", "dim": 10, "noise": 0.1, "heterogeneity": 1.0}


def _config(tmp_path, **output):
    return {"problem": QUADRATIC, "workers": 3, "rule": {"name": "sgd", "lr": 0.1},
            "speed": {"profile": "linear"}, "budget": {"steps": 120}, "eval": {"every": 40},
            "output": {"dir": str(tmp_path), "name": "run", **output}}


def _read(log_dir):
    reader = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    accumulator = reader.EventAccumulator(str(log_dir), size_guidance={reader.HISTOGRAMS: 0})
    accumulator.Reload()  # every histogram kept (TensorBoard's default samples one)
    return accumulator


def test_the_config_switch_writes_what_the_history_holds(tmp_path):
    pytest.importorskip("tensorboard")
    result = asyncopt.run(_config(tmp_path, tensorboard=True))
    events = _read(result.run_dir / "tensorboard")
    evaluations, arrivals = result.history.evaluations, result.history.arrivals
    scalars = {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}
    # each metric at each evaluation, the step being the server's version
    for metric in ("loss", "grad_norm_sq"):
        points = scalars[f"metrics/{metric}"]
        assert [p.step for p in points] == list(evaluations["version"])
        assert np.allclose([p.value for p in points], evaluations[metric], rtol=1e-6)
    # delays of the gradients used between two evaluations
    used = np.isin(arrivals["action"], ("step", "buffer"))
    windows = zip(evaluations["arrivals"][:-1], evaluations["arrivals"][1:], strict=True)
    for point, (lo, hi) in zip(scalars["delay/mean"], windows, strict=True):
        window = arrivals["delay"][lo:hi][used[lo:hi]]
        assert point.value == pytest.approx(window.mean(), rel=1e-6)
    assert max(p.value for p in scalars["delay/max"]) == result.summary["max_delay"]
    histograms = events.Histograms("delay")
    assert sum(h.histogram_value.num for h in histograms) == used.sum()
    # per-worker arrivals so far, steps/s on the simulated clock, the clock itself
    for worker in range(3):
        assert scalars[f"arrivals/worker_{worker}"][-1].value == (arrivals["worker"] ==
                                                                  worker).sum()
    per_worker = events.Histograms("arrivals/per_worker")[-1].histogram_value
    assert list(per_worker.bucket) == [(arrivals["worker"] == w).sum() for w in range(3)]
    steps_per_second = scalars["throughput/steps_per_second"]
    span = np.diff(evaluations["now"])
    assert np.allclose([p.value for p in steps_per_second], np.diff(evaluations["version"]) /
                       span, rtol=1e-6)
    assert scalars["time/clock"][-1].value == pytest.approx(result.summary["now"])
    assert set(events.Tags()["tensors"]) == {"config/text_summary", "summary/text_summary"}


def test_a_callback_object_with_its_own_log_dir(tmp_path):
    pytest.importorskip("tensorboard")
    problem = make_problem(QUADRATIC, 2, 0)
    result = asyncopt.train(problem, {"name": "sgd", "lr": 0.1}, "asgd", budget={"steps": 50},
                            evaluation={"every": 25},
                            callbacks=[asyncopt.TensorBoard(tmp_path / "tb")])
    assert result.run_dir is None
    loss = _read(tmp_path / "tb").Scalars("metrics/loss")
    assert [p.step for p in loss] == [0, 25, 50]
    with pytest.raises(ConfigError, match=r"TensorBoard\.log_dir"):  # nowhere to write
        asyncopt.train(problem, {"name": "sgd", "lr": 0.1}, "asgd", budget={"steps": 5},
                       callbacks=[asyncopt.TensorBoard()])


def test_the_cli_switch_and_its_refusals(tmp_path, monkeypatch, capsys):
    pytest.importorskip("tensorboard")
    assert main(["run", "quickstart", "--quiet", "--no-plot", "--out", str(tmp_path),
                 "--set", "output.tensorboard=true", "--set", "budget.steps=20",
                 "--set", 'output.name="cli"']) == 0
    assert _read(tmp_path / "cli" / "tensorboard").Scalars("metrics/accuracy")
    with pytest.raises(ConfigError, match=r"output\.tensorboard"):
        asyncopt.run(_config(tmp_path, tensorboard="yes", name="typo"))
    with pytest.raises(ConfigError, match=r"output\.tensorboard"):  # nowhere to write
        asyncopt.run(_config(tmp_path, tensorboard=True, name="unsaved"), save=False)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    capsys.readouterr()
    assert main(["run", "quickstart", "--quiet", "--out", str(tmp_path), "--set",
                 "output.tensorboard=true", "--set", 'output.name="missing"']) == 2
    assert "pip install tensorboard" in capsys.readouterr().err
    assert not (tmp_path / "missing").exists() and not (tmp_path / "typo").exists()
