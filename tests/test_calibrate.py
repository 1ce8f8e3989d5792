"""``asyncopt calibrate``: the fit recovers a known speed model from its own draws."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

from asyncopt.calibrate import calibrate, fit_noise
from asyncopt.cli import main
from asyncopt.runtimes.sim.speed import make_speed_model
from asyncopt.runtimes.sim.speed_spec import resolve_speed_spec

TRUTH = {"times": [1.0, 2.0], "noise": "exponential", "noise_scale": 0.5,
         "straggler_probability": 0.05, "straggler_factor": 5.0,
         "slowdowns": [{"workers": [0], "start": 400.0, "end": 700.0, "factor": 3.0}]}


def _trace(tmp_path: Path, spec: dict, count: int = 600) -> Path:
    """Each worker's jobs one after the other, drawn from ``spec``: a CSV trace."""
    model = make_speed_model(spec, 2, seed=1)
    lines = ["worker,compute_time,start"]
    for worker in range(2):
        now = 0.0
        for _ in range(count):
            time = model.compute_time(worker, now)
            lines.append(f"{worker},{time!r},{now!r}")
            now += time
    path = tmp_path / "trace.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_fit_recovers_base_noise_stragglers_and_a_slowdown(tmp_path):
    calibration = calibrate(_trace(tmp_path, TRUTH))
    for fit, base in zip(calibration.fits, (1.0, 2.0), strict=True):
        assert fit.noise == "exponential"
        assert fit.base == pytest.approx(base, rel=0.05)
        assert fit.spread == pytest.approx(0.5, rel=0.15)
        assert fit.straggler_probability == pytest.approx(0.05, abs=0.025)
        assert fit.straggler_factor == pytest.approx(5.0, rel=0.2)
        assert fit.ks < 0.06
    slow = calibration.fits[0].windows
    assert len(slow) == 1 and slow[0]["factor"] == pytest.approx(3.0, rel=0.1)
    assert slow[0]["start"] == pytest.approx(400.0, abs=15) and slow[0]["end"] == pytest.approx(
        700.0, abs=15)
    assert calibration.fits[1].windows == []
    speed = resolve_speed_spec(calibration.speed)
    assert speed["noise"] == "exponential" and max(calibration.table_ks) < 0.08
    model = make_speed_model(speed, 2, seed=5)
    times = [model.compute_time(1, 0.0) for _ in range(4000)]
    truth = make_speed_model(TRUTH, 2, seed=5)
    assert np.mean(times) == pytest.approx(np.mean([truth.compute_time(1, 0.0)
                                                    for _ in range(4000)]), rel=0.05)


@pytest.mark.parametrize("family", ["half_normal", "lognormal"])
def test_each_noise_family_is_told_apart(family):
    model = make_speed_model({"noise": family, "noise_scale": 0.3, "scale": 2.0}, 1, 0)
    y = np.array([model.compute_time(0, 0.0) for _ in range(1500)])
    fits = {f: fit_noise(y, f) for f in ("half_normal", "exponential", "lognormal")}
    assert min(fits, key=lambda f: fits[f][2]) == family
    assert fits[family][0] == pytest.approx(2.0, rel=0.05)


def test_the_command_writes_a_speed_table_and_a_figure_and_never_overwrites(tmp_path, capsys):
    trace = _trace(tmp_path, {"times": [1.0, 3.0], "noise": "half_normal"}, count=200)
    out = tmp_path / "fit"
    assert main(["calibrate", str(trace), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "KS D (own fit)" in printed and "half_normal" in printed
    speed = tomllib.loads((out / "speed.toml").read_text())["speed"]
    assert resolve_speed_spec(speed)["noise"] == "half_normal"
    assert (out / "calibration.png").stat().st_size > 0
    assert main(["calibrate", str(trace), "--out", str(out)]) == 2
    assert "never overwritten" in capsys.readouterr().err


def test_the_probe_times_the_server_of_a_config(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text('workers = 3\n[problem]\nname = "quadratic"\ndim = 50\n'
                      '[rule]\nname = "adam"\nlr = 0.01\n[protocol]\nname = "minibatch"\n')
    assert main(["calibrate", "--probe", str(config)]) == 0
    printed = capsys.readouterr().out
    server = tomllib.loads(printed[printed.index("[speed]"):])["speed"]["server_time"]
    assert 0 < server < 0.1 and "arrivals that step" in printed
    assert main(["calibrate", str(config), "--probe", str(config)]) == 2
