"""Which method reaches a target first on your machines: ``asyncopt advise CONFIG --speed FROM``.

The simulator predicts a real run once its speed model is the machines' own (a measured trace,
``[speed] trace = RUN_DIR``, or the table ``asyncopt calibrate`` fitted). ``advise`` asks it, for
each candidate method (a protocol):

1. *tune*: the step size ``rule.lr`` over a grid (default: the config's value × 0.1, 0.3, 1, 3,
   10) on the first seed, best by final training loss (a run that did not complete loses);
2. *predict*: the tuned method over ``seeds`` seeds, each seed its own draw of the speeds and the
   minibatches, and the simulated time until the training loss first reaches the target;
3. *rank*: by the median predicted time (a method that misses the target on a seed counts ∞
   there), then by the median final loss.

The candidates default to the protocols that fit the data: with workers that share one
distribution (``partition = "iid"``, or a quadratic without heterogeneity) asgd, minibatch,
rennala and ringmaster; with heterogeneous workers asgd, malenia, ia2sgd, ringleader and
ringmaster (Maranjyan & Richtárik, ICLR 2026, compare these on heterogeneous data). The target
defaults to the median, over the methods, of their median final loss, so that about half of
them reach it. Every prediction is a simulated run on the ``sim`` runtime, ``--jobs`` at a time.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncopt import config as configuration
from asyncopt.aggregate import time_to_target
from asyncopt.errors import ConfigError, check
from asyncopt.jobs import Task, run_all

HOMOGENEOUS = ("asgd", "minibatch", "rennala", "ringmaster")
HETEROGENEOUS = ("asgd", "malenia", "ia2sgd", "ringleader", "ringmaster")
GRID = (0.1, 0.3, 1.0, 3.0, 10.0)
"""The default step sizes tried: the config's ``rule.lr`` times these."""


@dataclass(frozen=True)
class Prediction:
    """One method's tuned step size and its predicted times to the target, one per seed."""

    method: str
    lr: float
    times: list[float]
    finals: list[float]

    @property
    def median_time(self) -> float:
        return statistics.median(self.times)

    @property
    def median_final(self) -> float:
        return statistics.median(self.finals)


def speed_from(source: str | Path) -> dict[str, Any]:
    """The ``[speed]`` table of ``--speed``: a run directory or CSV trace (measured times), or a
    TOML file holding a ``[speed]`` table (``asyncopt calibrate``'s speed.toml, or a config)."""
    path = Path(source)
    if path.is_dir() or path.suffix == ".csv":
        check(path.exists(), "--speed", str(source), "an existing run directory or CSV trace")
        return {"trace": str(path)}
    try:
        table = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError("--speed", str(source), f"a run directory, a CSV trace or a TOML file "
                          f"with a [speed] table ({error})") from error
    speed = table.get("speed")
    check(isinstance(speed, dict), "--speed", str(source), "a TOML file with a [speed] table")
    return dict(speed)


def heterogeneous(resolved: Mapping[str, Any]) -> bool:
    """Whether the workers' objectives differ (a non-iid partition, a heterogeneous quadratic)."""
    problem = resolved["problem"]
    if problem["name"] == "quadratic":
        return float(problem.get("heterogeneity", 0.0)) > 0.0
    return problem.get("partition", "iid") != "iid"


def advise(config: str | Path, speed: Mapping[str, Any], *, methods: Sequence[str] = (),
           grid: Sequence[float] = (), seeds: int = 3, target: float | None = None,
           overrides: Sequence[str] = (), jobs: int = 1, progress: bool = False,
           ) -> tuple[list[Prediction], float]:
    """The methods ranked by predicted time to ``target`` (see the module docstring), and the
    target used."""
    check(seeds >= 1, "--seeds", seeds, "an integer >= 1")
    raw = configuration.apply_overrides(configuration.read(config), overrides)
    raw = {**raw, "speed": dict(speed), "runtime": "sim", "runtime_options": {}}
    raw.pop("methods", None)
    base = configuration.resolve(raw)
    methods = list(methods) or list(HETEROGENEOUS if heterogeneous(base) else HOMOGENEOUS)
    lrs = list(grid) or [base["rule"]["lr"] * factor for factor in GRID]
    tuned = {method: _tune(raw, base, method, lrs, jobs, progress) for method in methods}
    with tempfile.TemporaryDirectory() as scratch:
        tasks = [Task(_resolved(raw, base, method, tuned[method], seed),
                      Path(scratch) / f"{method}-{seed}")
                 for method in methods for seed in range(seeds)]
        histories = [outcome.history for outcome in run_all(tasks, jobs, progress=progress)]
    finals = {method: [h.final("loss") for h in histories[i * seeds:(i + 1) * seeds]]
              for i, method in enumerate(methods)}
    if target is None:
        target = statistics.median(statistics.median(values) for values in finals.values())
    predictions = [Prediction(method, tuned[method],
                              [time_to_target(h, "loss", target)
                               for h in histories[i * seeds:(i + 1) * seeds]], finals[method])
                   for i, method in enumerate(methods)]
    predictions.sort(key=lambda p: (p.median_time, p.median_final))
    return predictions, target


def _tune(raw: Mapping[str, Any], base: Mapping[str, Any], method: str, lrs: Sequence[float],
          jobs: int, progress: bool) -> float:
    """The step size of ``lrs`` with the lowest final loss on seed 0 (a failed run loses)."""
    tasks = [Task(_resolved(raw, base, method, lr, 0)) for lr in lrs]
    scores = [outcome.finals.get("loss", math.inf) if outcome.summary["status"] == "completed"
              else math.inf for outcome in run_all(tasks, jobs, progress=progress)]
    scores = [math.inf if math.isnan(s) else s for s in scores]
    return lrs[min(range(len(lrs)), key=scores.__getitem__)]


def _resolved(raw: Mapping[str, Any], base: Mapping[str, Any], method: str, lr: float,
              seed: int) -> dict[str, Any]:
    """The config with protocol ``method`` (its default options), ``rule.lr = lr``, ``seed``."""
    return configuration.resolve({**raw, "protocol": {"name": method}, "seed": seed,
                                  "rule": {**base["rule"], "lr": lr}})


def winner_config(config: str | Path, speed_source: str | Path, winner: Prediction,
                  overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The config that runs ``winner`` for real: its protocol and step size, on the runtime
    (and runtime options) of the run whose speeds were measured when ``speed_source`` is a run
    directory, else on the config's own runtime, which must not be the simulator."""
    raw = configuration.apply_overrides(configuration.read(config), overrides)
    raw.pop("methods", None)
    measured = Path(speed_source) / "config.toml"
    if measured.is_file():
        run = tomllib.loads(measured.read_text())
        raw = {**raw, "runtime": run["runtime"], "runtime_options": run["runtime_options"]}
    resolved = configuration.resolve(raw)
    check(resolved["runtime"] != "sim", "--run", str(config), "a real runtime to run on: a "
          "--speed run directory (its runtime), or a config with runtime = 'processes' or 'ray'")
    return _resolved(raw, resolved, winner.method, winner.lr, resolved["seed"])


def format_advice(predictions: Sequence[Prediction], target: float) -> str:
    """The ranked table: method, tuned step size, predicted time (median and range over the
    seeds, how many reached the target) and final loss."""
    lines = [f"predicted time to training loss {target:.4g} (simulated seconds)",
             "| rank | method | rule.lr | time (median) | time (min–max) | reached | final loss |",
             "|---|---|---|---|---|---|---|"]
    for rank, p in enumerate(predictions, 1):
        reached = sum(math.isfinite(t) for t in p.times)
        spread = f"{_time(min(p.times))}–{_time(max(p.times))}" if reached else "—"
        lines.append(f"| {rank} | {p.method} | {p.lr:.4g} | {_time(p.median_time)} | "
                     f"{spread} | {reached}/{len(p.times)} | {p.median_final:.4g} |")
    return "\n".join(lines)


def _time(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else "not reached"
