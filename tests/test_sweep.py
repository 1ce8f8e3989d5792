"""``asyncopt sweep`` with ``--metric now``: time to a target loss and the speed-up table."""

from __future__ import annotations

import math

import pytest

from asyncopt.sweep import parse_axis, run_sweep, summary_rows

RAW = {"seed": 0, "workers": 1, "problem": {"name": "quadratic", "dim": 5, "noise": 0.0},
       "rule": {"name": "sgd", "lr": 0.1}, "protocol": {"name": "asgd"},
       "speed": {"profile": "constant"}, "budget": {"time": 500.0, "target_loss": 0.05},
       "eval": {"every": 1.0, "unit": "time"}}


def test_time_to_target_falls_with_workers_and_unreached_targets_count_as_failed():
    points = run_sweep(RAW, parse_axis("workers=1,4"), seeds=1)
    assert all(p.reached for p in points)
    rows, best = summary_rows(points, "now")
    one, four = rows
    assert four["now median"] < one["now median"]
    assert one["speed-up"] == 1.0
    assert four["speed-up"] == pytest.approx(one["now median"] / four["now median"])
    assert best[0]["best x"] == 4
    never = run_sweep({**RAW, "budget": {"time": 2.0, "target_loss": 1e-9}},
                      parse_axis("workers=2"), seeds=1)
    assert not never[0].reached
    rows, _ = summary_rows(never, "now")
    assert math.isnan(rows[0]["now median"]) and rows[0]["failed"] == 1
    rows, _ = summary_rows(never, "now", failed=math.inf)
    assert rows[0]["now median"] == math.inf


def test_loglog_slope_recovers_the_exponent_of_a_power_law():
    import importlib.util
    from pathlib import Path

    import numpy as np

    path = Path(__file__).parents[1] / "scripts" / "loglog_slope.py"
    spec = importlib.util.spec_from_file_location("loglog_slope", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    times = np.linspace(0.0, 100.0, 401)
    noisy = 3.0 / np.sqrt(np.maximum(times, 1e-9)) * (1 + 0.5 * np.sin(times))
    b, _, fitted = module.slope(times, noisy)
    assert b == pytest.approx(-0.5, abs=0.1)  # the running minimum removes the wiggles' rises
    assert fitted.sum() > 300 and times[1:][fitted].min() >= 10.0
    assert math.isnan(module.slope(times[:3], noisy[:3])[0])
