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
    assert math.isnan(rows[0]["now median"])
    rows, _ = summary_rows(never, "now", failed=math.inf)
    assert rows[0]["now median"] == math.inf
