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


def test_parallel_jobs_give_the_sequential_results_in_the_same_order(tmp_path, capsys):
    """``--jobs 2`` (two spawned processes) against ``--jobs 1`` for all three commands: the
    same points, the same tuned values, the same recorded histories, the same printed lines."""
    import tomllib

    import numpy as np

    from asyncopt.cli import main
    from asyncopt.record import load

    noisy = {**RAW, "workers": 3, "problem": {"name": "quadratic", "dim": 5, "noise": 0.3},
             "speed": {"profile": "linear", "noise": "half_normal"},
             "budget": {"time": 30.0}}
    one, two = (run_sweep(noisy, parse_axis("workers=2,3"), seeds=2, jobs=jobs)
                for jobs in (1, 2))
    drop_wall = [(p.label, p.x, p.seed, p.status, p.final, p.max_delay, p.now) for p in one]
    assert drop_wall == [(p.label, p.x, p.seed, p.status, p.final, p.max_delay, p.now)
                         for p in two]
    assert len({p.final["loss"] for p in one}) == 4  # four different runs, not one repeated
    config = tmp_path / "exp.toml"
    config.write_text('seed = 0\nworkers = 3\n[problem]\nname = "quadratic"\ndim = 5\n'
                      '[rule]\nname = "sgd"\nlr = 0.1\n[speed]\nprofile = "linear"\n'
                      'noise = "exponential"\n[budget]\nsteps = 40\n[eval]\nevery = 10\n')
    printed = []
    for jobs in ("1", "2"):
        assert main(["compare", str(config), "--vary", "rule.lr=0.05,0.2", "--seeds", "2",
                     "--out", str(tmp_path / f"cmp{jobs}"), "--quiet", "--jobs", jobs]) == 0
        assert main(["tune", str(config), "--grid", "rule.lr=0.01,0.1,0.3", "--out",
                     str(tmp_path / f"tune{jobs}"), "--quiet", "--jobs", jobs]) == 0
        text = capsys.readouterr().out.replace(f"cmp{jobs}", "cmp").replace(f"tune{jobs}", "tune")
        # the tables' arrivals-per-second column is a wall-clock measurement: left out
        printed.append([line for line in text.splitlines() if not line.startswith("|")])
    assert printed[0] == printed[1] and len(printed[0]) >= 4 + 3
    runs = sorted(p.relative_to(tmp_path / "cmp1") for p in (tmp_path / "cmp1").glob("*/seed*"))
    assert len(runs) == 4
    for run in runs:
        first, second = load(tmp_path / "cmp1" / run), load(tmp_path / "cmp2" / run)
        for column in ("now", "worker", "delay", "loss"):
            assert np.array_equal(first.arrivals[column], second.arrivals[column])
    tuned = [tomllib.loads((tmp_path / f"tune{j}" / "tuned.toml").read_text()) for j in "12"]
    assert tuned[0]["rule"] == tuned[1]["rule"]


def test_parallel_runs_show_one_progress_bar_over_the_set(monkeypatch):
    from asyncopt import config as configuration
    from asyncopt import jobs

    bars = []
    make = jobs._set_bar
    monkeypatch.setattr(jobs, "_set_bar", lambda total: bars.append(make(total)) or bars[-1])
    tasks = [jobs.Task(configuration.resolve({**RAW, "problem": {"name": "quadratic", "dim": 3},
                                              "budget": {"steps": 20}, "seed": seed}))
             for seed in range(3)]
    counts = []
    for outcome in jobs.run_all(tasks, 2, progress=True):
        assert outcome.summary["status"] == "completed"
        counts.append(bars[0].n)  # at least the runs given back so far
    assert len(bars) == 1 and bars[0].total == 3
    assert counts[-1] == 3 and all(n >= k for k, n in enumerate(counts, 1))


def test_jobs_zero_is_refused_before_anything_runs(tmp_path, capsys):
    from asyncopt.cli import main

    config = tmp_path / "exp.toml"
    config.write_text('workers = 2\n[problem]\nname = "quadratic"\n[budget]\nsteps = 5\n')
    for command in (["compare", str(config)], ["tune", str(config), "--grid", "rule.lr=0.1"],
                    ["sweep", str(config), "--x", "workers=1,2"]):
        out = tmp_path / command[0]
        assert main([*command, "--jobs", "0", "--out", str(out), "--quiet"]) == 2
        assert "--jobs = 0 is not allowed: an integer >= 1" in capsys.readouterr().err
        assert not out.exists()


def test_a_run_refused_at_build_time_leaves_no_run_directory(tmp_path, capsys):
    from asyncopt.cli import main

    config = tmp_path / "exp.toml"
    config.write_text(f'workers = 2\n[problem]\nname = "mlp"\ndataset = "fashion_mnist"\n'
                      f'path = "{tmp_path / "none"}"\n[budget]\nsteps = 5\n')
    for jobs in ("1", "2"):
        out = tmp_path / f"cmp{jobs}"
        assert main(["compare", str(config), "--seeds", "2", "--out", str(out), "--quiet",
                     "--jobs", jobs]) == 2
        assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err
        assert not any(p.is_dir() and any(p.iterdir()) for p in out.glob("*/*"))
        assert not list(out.glob("*/seed*"))
