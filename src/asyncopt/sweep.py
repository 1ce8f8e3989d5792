"""Parameter sweeps: the final value of a metric as a function of one key, one curve per series.

The figures of the delay and momentum studies (Liu et al., NeurIPS 2018: the best
delay for each momentum; the best momentum for each worker count) and of APAM's artificial-delay
study (Xu et al., paper 2) plot a *final* metric against a swept key, not a metric against time:

    asyncopt sweep configs/pca_delay.toml --x workers=1:202:10 --seeds 5 --x-axis delay

runs every ``[[methods]]`` entry (each a series, or one series per value of ``--series``) for
every value of ``--x`` and every seed, and writes

* ``sweep.csv``: one row per run (label, series, x, seed, status, the final metrics, the measured
  mean and max delay, the run's clock and wall seconds);
* ``sweep.md``: the median (and 25–75% quantiles) over seeds per series and x, and each series'
  best x;
* ``sweep.png``: the medians against x with their interquartile bands.

Runs are not saved (a sweep is hundreds of runs); a run that did not complete (diverged) counts
as ``failed`` (default NaN: left out of the median, and counted in the table).

``--metric now`` is the run's clock when it stopped. With ``budget.target_loss`` set, that is the
time to the target (a run that never reached it counts as ``failed``), and the table adds the
**speed-up** of each x over the series' first x: median time at the first x / median time here
(APAM's speed-up tables, Xu et al.).
``--x-axis delay`` puts the measured median max delay of each point on the x axis instead of the
swept value: with ``workers = τ + 1`` identical constant-speed workers under ``asgd`` that is
exactly τ (``tests/test_pca.py``), so the figure's axis is a measured delay, never an assumed one.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from asyncopt import config as configuration
from asyncopt.aggregate import format_table
from asyncopt.errors import check, check_choice
from asyncopt.jobs import Task, run_all


@dataclass(frozen=True)
class Point:
    """One run of a sweep."""

    label: str
    series: str
    x: Any
    seed: int
    status: str
    final: dict[str, float]
    mean_delay: float
    max_delay: float
    now: float
    wall: float
    reached: bool = False  # stopped because the target loss was reached


@dataclass
class Group:
    """The runs of one (series, x) point and their summary."""

    label: str
    x: Any
    points: list[Point] = field(default_factory=list)

    def values(self, metric: str, failed: float) -> np.ndarray:
        return np.array([_value(p, metric, failed) for p in self.points], dtype=float)


def _failed(point: Point, metric: str) -> bool:
    """Did not complete, or (``metric = "now"``) never reached the target."""
    return point.status != "completed" or (metric == "now" and not point.reached)


def _value(point: Point, metric: str, failed: float) -> float:
    if _failed(point, metric):
        return failed
    return point.now if metric == "now" else point.final.get(metric, math.nan)


def parse_axis(text: str) -> tuple[str, list[Any]]:
    """``"workers=1,2,4"`` or ``"workers=1:202:10"`` (integers start:stop:step, stop excluded)
    -> ``("workers", [values])``."""
    key, sep, values = text.partition("=")
    check(bool(sep) and bool(key) and bool(values), "--x/--series", text,
          "KEY=V1,V2,... or KEY=START:STOP:STEP, e.g. workers=1:202:10")
    if values.count(":") == 2 and "," not in values:
        try:
            start, stop, step = (int(v) for v in values.split(":"))
        except ValueError:
            check(False, "--x/--series", text, "integers START:STOP:STEP")
        check(step != 0 and len(range(start, stop, step)) > 0, "--x/--series", text,
              "a non-empty integer range START:STOP:STEP")
        return key, list(range(start, stop, step))
    return key, [configuration.parse_value(v) for v in values.split(",")]


def run_sweep(raw: Mapping[str, Any], x: tuple[str, Sequence[Any]],
              series: tuple[str, Sequence[Any]] | None = None, *, seeds: int = 3,
              first_seed: int = 0, overrides: Sequence[str] = (),
              report: Callable[[Point], None] | None = None, jobs: int = 1) -> list[Point]:
    """Every method × series value × x value × seed of a raw config, run in the simulator or
    the config's runtime, unsaved; simulated runs ``jobs`` at a time in processes
    (:mod:`asyncopt.jobs`, same points in the same order). ``report`` is called after each
    run, in order (progress)."""
    check(seeds >= 1, "--seeds", seeds, "an integer >= 1")
    x_key, x_values = x
    s_key, s_values = series if series is not None else ("", [None])
    planned: list[tuple[str, Any, Any, int]] = []
    tasks = []
    for method, method_raw in configuration.methods(raw):
        for s_value in s_values:
            name = " ".join(p for p in (method, "" if s_value is None else
                                        f"{s_key}={s_value}") if p) or "config"
            for value in x_values:
                for seed in range(first_seed, first_seed + seeds):
                    extra = [f"{x_key}={value}", f"seed={seed}"]
                    if s_value is not None:
                        extra.append(f"{s_key}={s_value}")
                    tasks.append(Task(configuration.resolve(configuration.apply_overrides(
                        method_raw, [*overrides, *extra]))))
                    planned.append((name, s_value, value, seed))
    points = []
    for (name, s_value, value, seed), outcome in zip(planned, run_all(tasks, jobs),
                                                     strict=True):
        summary = outcome.summary
        point = Point(name, "" if s_value is None else str(s_value), value, seed,
                      summary["status"], dict(summary["final"]), float(summary["mean_delay"]),
                      float(summary["max_delay"]), float(summary["now"]),
                      float(summary["wall_seconds"]),
                      str(summary["reason"]).startswith("target loss"))
        points.append(point)
        if report is not None:
            report(point)
    return points


def group(points: Sequence[Point]) -> dict[str, list[Group]]:
    """label -> its groups in sweep order."""
    out: dict[str, dict[Any, Group]] = {}
    for point in points:
        groups = out.setdefault(point.label, {})
        groups.setdefault(point.x, Group(point.label, point.x)).points.append(point)
    return {label: list(groups.values()) for label, groups in out.items()}


def summary_rows(points: Sequence[Point], metric: str, mode: str = "min",
                 failed: float = math.nan) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(one row per series and x: median, quantiles, failed runs, measured delays;
    one row per series: its best x by median ``metric``)."""
    check_choice("--mode", mode, ("min", "max"))
    rows, best = [], []
    for label, groups in group(points).items():
        medians: list[float] = []
        for g in groups:
            values = g.values(metric, failed)
            finite = values[~np.isnan(values)]
            median, q25, q75 = (_quantiles(finite) if len(finite)
                                else (math.nan,) * 3)
            medians.append(median)
            rows.append({"series": label, "x": g.x, f"{metric} median": float(median),
                         "q25": float(q25), "q75": float(q75),
                         "failed": sum(_failed(p, metric) for p in g.points),
                         "seeds": len(g.points),
                         "max delay": float(np.median([p.max_delay for p in g.points])),
                         "mean delay": float(np.median([p.mean_delay for p in g.points]))})
            if metric == "now":
                ok = 0 < median < math.inf and math.isfinite(medians[0])
                rows[-1]["speed-up"] = float(medians[0] / median) if ok else math.nan
        scores = np.array(medians, dtype=float)
        if np.isnan(scores).all():
            best.append({"series": label, "best x": "none", f"{metric} median": math.nan})
            continue
        index = int(np.nanargmin(scores) if mode == "min" else np.nanargmax(scores))
        best.append({"series": label, "best x": groups[index].x,
                     f"{metric} median": float(scores[index]),
                     "max delay there": float(np.median([p.max_delay
                                                         for p in groups[index].points]))})
    return rows, best


def write_csv(points: Sequence[Point], path: Path) -> Path:
    metrics = sorted({m for p in points for m in p.final})
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "series", "x", "seed", "status", *metrics, "mean_delay",
                         "max_delay", "now", "wall_seconds"])
        for p in points:
            writer.writerow([p.label, p.series, p.x, p.seed, p.status,
                             *(p.final.get(m, math.nan) for m in metrics), p.mean_delay,
                             p.max_delay, p.now, p.wall])
    return path


def plot_sweep(points: Sequence[Point], metric: str, path: Path, *, x_label: str,
               x_axis: str = "value", failed: float = math.nan, title: str = "") -> Path:
    """Median final ``metric`` over seeds against x (the swept value, or the measured median
    max delay with ``x_axis = "delay"``), one line per series, 25–75% band."""
    check_choice("--x-axis", x_axis, ("value", "delay"))
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    ax = figure.subplots()
    positive = True
    for index, (label, groups) in enumerate(group(points).items()):
        xs, stats = [], []
        for g in groups:
            values = g.values(metric, failed)
            finite = values[~np.isnan(values)]
            if not len(finite):
                continue
            xs.append(float(np.median([p.max_delay for p in g.points])) if x_axis == "delay"
                      else g.x)
            stats.append(_quantiles(finite))
        if not xs:
            continue
        stats_array = np.array(stats)
        positive = positive and bool((stats_array > 0).all())
        color = f"C{index % 10}"
        ax.plot(xs, stats_array[:, 0], "o-", color=color, markersize=3, label=label)
        ax.fill_between(xs, stats_array[:, 1], stats_array[:, 2], color=color, alpha=0.2,
                        linewidth=0)
    if positive and "accuracy" not in metric:
        ax.set_yscale("log")
    ax.set(xlabel="measured delay τ (median of max delay)" if x_axis == "delay" else x_label,
           ylabel=("time to the target loss" if metric == "now" else f"final {metric}")
           + " (median over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    figure.suptitle(title or "final value against the swept key; band = 25–75% quantiles")
    figure.savefig(path, dpi=110)
    return path


def write_outputs(points: Sequence[Point], out: Path, metric: str, *, mode: str = "min",
                  failed: float = math.nan, x_label: str = "", x_axis: str = "value",
                  title: str = "") -> tuple[Path, Path, Path, str]:
    """``sweep.csv``, ``sweep.md`` and ``sweep.png`` in ``out``; also returns the tables."""
    out.mkdir(parents=True, exist_ok=True)
    rows, best = summary_rows(points, metric, mode, failed)
    text = f"{format_table(best)}\n\n{format_table(rows)}\n"
    (out / "sweep.md").write_text(text)
    figure = plot_sweep(points, metric, out / "sweep.png", x_label=x_label, x_axis=x_axis,
                        failed=failed, title=title)
    return write_csv(points, out / "sweep.csv"), out / "sweep.md", figure, text


def _quantiles(values: np.ndarray) -> np.ndarray:
    """Median and the 25% / 75% order statistics (no interpolation, so that ``failed = inf``
    runs give inf rather than NaN)."""
    return np.array([np.median(values), np.quantile(values, 0.25, method="lower"),
                     np.quantile(values, 0.75, method="higher")])
