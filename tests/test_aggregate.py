"""Aggregation of recorded histories: grids, seed bands, time to target, tables, staleness."""

from __future__ import annotations

import math

import numpy as np
import pytest

from asyncopt.aggregate import (
    bands,
    compare_table,
    delay_stats,
    final_value,
    format_table,
    on_grid,
    time_to_target,
)
from asyncopt.record import History, Recorder, load


def evaluated(points: list[tuple[float, int, float]], metric: str = "loss") -> History:
    """A history with only evaluations: ``(now, version, value)`` rows."""
    recorder = Recorder()
    for count, (now, version, value) in enumerate(points):
        recorder.evaluation(now, version, count, {metric: value})
    return recorder.history()


def synthetic(workers: int = 3, arrivals: int = 300, seed: int = 0, evaluate: bool = True,
              accuracy: bool = False, run_dir=None) -> History:
    """A plausible asynchronous run without the simulator: decaying metrics, Poisson delays."""
    rng = np.random.default_rng(seed)
    recorder = Recorder(run_dir)
    now, version = 0.0, 0
    for count in range(arrivals):
        if evaluate and count % 25 == 0:
            metrics = {"loss": math.exp(-now / 20) + 0.01, "grad_norm_sq": math.exp(-now / 10)}
            if accuracy:
                metrics["accuracy"] = 1 - 0.9 * math.exp(-now / 20)
            recorder.evaluation(now, version, count, metrics)
        now += float(rng.exponential(0.2))
        action = "drop" if rng.random() < 0.1 else "step"
        version += action == "step"
        recorder.arrival(now, int(rng.integers(workers)), version, int(rng.poisson(workers / 2)),
                         float(rng.random()), action, 0.5)
    recorder.finish({"status": "completed", "arrivals_per_second": 1000.0 + seed})
    return load(run_dir) if run_dir is not None else recorder.history()


def test_on_grid_holds_the_last_value_and_is_nan_before_the_first():
    early = evaluated([(1.0, 1, 5.0), (2.0, 2, 3.0), (4.0, 4, 1.0)])
    late = evaluated([(0.0, 0, 9.0), (3.0, 3, 2.0), (10.0, 9, 0.5)])
    grid, values = on_grid([early, late], "loss", points=5)
    np.testing.assert_allclose(grid, [0.0, 1.0, 2.0, 3.0, 4.0])  # ends at the shortest run
    np.testing.assert_array_equal(values[0], [np.nan, 5.0, 3.0, 3.0, 1.0])
    np.testing.assert_array_equal(values[1], [9.0, 9.0, 9.0, 2.0, 2.0])
    grid, values = on_grid([early, late], "loss", x="version", points=3)
    np.testing.assert_allclose(grid, [0.0, 2.0, 4.0])
    np.testing.assert_array_equal(values[1], [9.0, 9.0, 2.0])


def test_on_grid_skips_unmeasured_rows_and_runs():
    measured = evaluated([(0.0, 0, 4.0), (1.0, 1, math.nan), (2.0, 2, 1.0)])
    grid, values = on_grid([measured, evaluated([])], "loss", points=3)
    np.testing.assert_array_equal(values[0], [4.0, 4.0, 1.0])
    assert np.isnan(values[1]).all()
    grid, values = on_grid([measured], "accuracy")
    assert grid.shape == (0,) and values.shape == (1, 0)
    with pytest.raises(ValueError, match="x='steps'"):
        on_grid([measured], "loss", x="steps")


def test_bands_on_known_numbers_ignore_nan():
    values = np.array([[1.0, 10.0, np.nan], [2.0, np.nan, np.nan], [3.0, 30.0, np.nan],
                       [4.0, 20.0, np.nan], [5.0, np.nan, np.nan]])
    median, q25, q75 = bands(values)
    np.testing.assert_allclose(median[:2], [3.0, 20.0])
    np.testing.assert_allclose(q25[:2], [2.0, 15.0])
    np.testing.assert_allclose(q75[:2], [4.0, 25.0])
    assert np.isnan([median[2], q25[2], q75[2]]).all()


def test_time_to_target_hit_never_and_max_mode():
    run = evaluated([(0.0, 0, 1.0), (2.0, 5, 0.4), (3.0, 7, 0.1)])
    assert time_to_target(run, "loss", 0.5) == 2.0
    assert time_to_target(run, "loss", 0.5, x="version") == 5.0
    assert time_to_target(run, "loss", 0.01) == math.inf
    assert time_to_target(run, "missing", 0.5) == math.inf
    accuracy = evaluated([(0.0, 0, 0.1), (1.0, 1, 0.8), (2.0, 2, 0.95)], metric="accuracy")
    assert time_to_target(accuracy, "accuracy", 0.9, mode="max") == 2.0
    with pytest.raises(ValueError, match="mode='up'"):
        time_to_target(run, "loss", 0.5, mode="up")


def test_delay_stats_on_a_hand_made_history():
    recorder = Recorder()
    for now, worker, delay, action in [(1.0, 0, 0, "step"), (2.0, 1, 4, "buffer"),
                                       (3.0, 0, 2, "step"), (4.0, 1, 9, "drop"),
                                       (5.0, 2, 7, "reject"), (6.0, 1, 2, "step")]:
        recorder.arrival(now, worker, 0, delay, 0.5, action, 1.0)
    report = delay_stats(recorder.history())
    assert report["overall"] == {"count": 4, "mean": 2.0, "max": 4, "unused": 2}
    assert report["workers"][0] == {"count": 2, "mean": 1.0, "max": 2, "unused": 0}
    assert report["workers"][1] == {"count": 2, "mean": 3.0, "max": 4, "unused": 1}
    idle = report["workers"][2]
    assert idle["count"] == 0 and idle["unused"] == 1 and math.isnan(idle["mean"])


def test_compare_table_values_and_markdown(tmp_path):
    fast = [evaluated([(0.0, 0, 1.0), (1.0, 1, v)]) for v in (0.1, 0.2, 0.3, 0.4)]
    slow = [evaluated([(0.0, 0, 1.0), (5.0, 1, 0.5), (9.0, 2, 0.3)])]
    rows = compare_table({"fast": fast, "slow | single": slow}, target=0.35)
    assert rows[0]["seeds"] == 4 and rows[0]["final_median"] == pytest.approx(0.25)
    assert (rows[0]["final_q25"], rows[0]["final_q75"]) == pytest.approx((0.175, 0.325))
    assert rows[0]["time_to_target"] == 1.0 and rows[0]["reached"] == "3/4"
    assert rows[1]["time_to_target"] == 9.0 and rows[1]["final_median"] == 0.3
    assert compare_table({"slow": slow}, target=0.35, x="version")[0]["time_to_target"] == 2.0
    assert math.isnan(rows[1]["mean_delay"])  # no arrivals recorded
    runs = [synthetic(seed=s, run_dir=tmp_path / str(s)) for s in range(3)]
    row = compare_table({"asgd": runs})[0]
    assert row["arrivals_per_s"] == 1001.0 and "time_to_target" not in row
    assert row["final_median"] == pytest.approx(np.median([final_value(h, "loss") for h in runs]))
    lines = format_table([*rows, row]).splitlines()
    assert lines[0].startswith("| label") and set(lines[1]) == {"|", "-"}
    assert len({len(line) for line in lines}) == 1  # aligned
    assert "slow \\| single" in lines[3] and "0.25 " in lines[2]
    assert format_table([]) == "(no rows)"
