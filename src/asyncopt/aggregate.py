"""Numbers from recorded histories: curves on a common grid, seed bands, tables, staleness.

Everything here reads :class:`~asyncopt.record.History` objects only (plain numpy, no plotting),
so the same numbers feed the figures of :mod:`asyncopt.plots` and the tables of ``asyncopt
compare``.

A metric's curve is the evaluations table restricted to the rows where the metric is not NaN: the
recorder writes NaN for a metric that an evaluation did not compute, so NaN means "not measured",
never a value to hold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from asyncopt.record import History

XAxis = Literal["now", "version"]
Mode = Literal["min", "max"]
USED_ACTIONS = ("step", "buffer")


def curve(history: History, metric: str, x: XAxis = "now") -> tuple[np.ndarray, np.ndarray]:
    """The evaluated ``(x, metric)`` points of one run, NaN rows left out; empty when missing."""
    _check_x(x)
    xs = history.evaluations.get(x)
    ys = history.evaluations.get(metric)
    if xs is None or ys is None or len(ys) == 0:
        return np.array([]), np.array([])
    xs = np.asarray(xs, dtype=float)
    ys = np.asarray(ys, dtype=float)
    keep = ~np.isnan(ys)
    return xs[keep], ys[keep]


def final_value(history: History, metric: str) -> float:
    """The last measured value of ``metric`` (NaN when it was never measured)."""
    _, ys = curve(history, metric)
    return float(ys[-1]) if len(ys) else math.nan


def on_grid(histories: Sequence[History], metric: str, x: XAxis = "now",
            points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Every run's ``metric`` curve on one x grid, as ``(grid, values[runs, points])``.

    The grid spans ``[0, min over runs of the last measured x]`` so that every run covers it.
    A run's value at ``g`` is its last measurement at ``x <= g`` (previous-value hold: the
    metric is what the model was last known to achieve), NaN before its first measurement.
    Runs that never measured ``metric`` get a row of NaN and do not shorten the grid; when no
    run measured it the grid is empty.
    """
    curves = [curve(h, metric, x) for h in histories]
    ends = [xs[-1] for xs, _ in curves if len(xs)]
    if not ends:
        return np.array([]), np.full((len(histories), 0), np.nan)
    grid = np.linspace(0.0, min(ends), points)
    values = np.full((len(histories), points), np.nan)
    for row, (xs, ys) in enumerate(curves):
        if len(xs):
            index = np.searchsorted(xs, grid, side="right") - 1
            values[row] = np.where(index >= 0, ys[np.maximum(index, 0)], np.nan)
    return grid, values


def bands(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(median, q25, q75)`` over runs (axis 0) of a ``[runs, points]`` array, NaN ignored.

    A column where every run is NaN gives NaN, without a warning.
    """
    values = np.atleast_2d(np.asarray(values, dtype=float))
    out = np.full((3, values.shape[1]), np.nan)
    some = ~np.all(np.isnan(values), axis=0)
    if some.any():
        out[:, some] = np.nanquantile(values[:, some], [0.5, 0.25, 0.75], axis=0)
    return out[0], out[1], out[2]


def time_to_target(history: History, metric: str, target: float, x: XAxis = "now",
                   mode: Mode = "min") -> float:
    """The first x at which ``metric <= target`` (``mode="min"``) or ``>= target`` (``"max"``,
    for accuracy-like metrics); ``inf`` when the run never gets there."""
    if mode not in ("min", "max"):
        raise ValueError(f"mode={mode!r} is not allowed: use 'min' or 'max'")
    xs, ys = curve(history, metric, x)
    hit = ys <= target if mode == "min" else ys >= target
    return float(xs[np.argmax(hit)]) if hit.any() else math.inf


def used_delays(history: History) -> tuple[np.ndarray, np.ndarray]:
    """``(worker, delay)`` of the arrivals the server used (action step or buffer)."""
    arrivals = history.arrivals
    if "action" not in arrivals or len(arrivals["action"]) == 0:
        return np.array([], dtype=int), np.array([], dtype=int)
    used = np.isin(arrivals["action"].astype(str), USED_ACTIONS)
    return (np.asarray(arrivals["worker"], dtype=int)[used],
            np.asarray(arrivals["delay"], dtype=int)[used])


def delay_stats(history: History) -> dict[str, Any]:
    """The staleness report: ``{"overall": stats, "workers": {worker: stats}}``.

    ``stats`` has ``count``, ``mean`` and ``max`` of the delays of used arrivals (step or buffer)
    and ``unused``, the worker's other arrivals (dropped, rejected, cancelled). Every worker seen
    in the arrivals is listed; one with no used arrival has NaN mean and max.
    """
    workers, delays = used_delays(history)
    every = np.asarray(history.arrivals.get("worker", np.array([])), dtype=int)
    report: dict[str, Any] = {"overall": _stats(delays, len(every) - len(delays)), "workers": {}}
    for worker in np.unique(every):
        mine = delays[workers == worker]
        report["workers"][int(worker)] = _stats(mine, int(np.sum(every == worker)) - len(mine))
    return report


def compare_table(groups: Mapping[str, Sequence[History]], metric: str = "loss",
                  target: float | None = None, mode: Mode = "min",
                  x: XAxis = "now") -> list[dict[str, Any]]:
    """One row per label: seeds, median and IQR of the final ``metric`` over seeds, median time
    (or version, by ``x``) to ``target`` with how many seeds reached it, median mean delay, and
    median arrivals per wall second when the summaries record it."""
    rows = []
    for label, histories in groups.items():
        finals = np.array([final_value(h, metric) for h in histories])
        median, q25, q75 = (v[0] for v in bands(finals[:, None]))
        row: dict[str, Any] = {"label": label, "seeds": len(histories), "metric": metric,
                               "final_median": median, "final_q25": q25, "final_q75": q75}
        if target is not None:
            times = np.array([time_to_target(h, metric, target, x, mode) for h in histories])
            row["time_to_target"] = float(np.median(times)) if len(times) else math.nan
            row["reached"] = f"{int(np.isfinite(times).sum())}/{len(times)}"
        means = [delay_stats(h)["overall"]["mean"] for h in histories]
        row["mean_delay"] = _nanmedian(means)
        rates = [h.summary["arrivals_per_second"] for h in histories
                 if "arrivals_per_second" in h.summary]
        if rates:
            row["arrivals_per_s"] = _nanmedian(rates)
        rows.append(row)
    return rows


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """An aligned plain-text table that is also a Markdown table (floats to 4 significant
    digits; a key missing from a row leaves its cell empty; ``|`` in a cell is escaped)."""
    if not rows:
        return "(no rows)"
    keys = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_cell(row.get(key, "")) for key in keys] for row in rows]
    widths = [max(len(k), *(len(r[i]) for r in cells)) for i, k in enumerate(keys)]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(keys), rule, *(line(r) for r in cells)])


def _stats(delays: np.ndarray, unused: int) -> dict[str, float]:
    count = len(delays)
    return {"count": count, "mean": float(delays.mean()) if count else math.nan,
            "max": int(delays.max()) if count else math.nan, "unused": unused}


def _nanmedian(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.median(finite)) if finite else math.nan


def _cell(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return f"{value:.0f}" if 1e4 <= abs(value) < 1e9 else f"{value:.4g}"
    return str(value).replace("|", "\\|")  # a "|" in a label would split the Markdown cell


def _check_x(x: str) -> None:
    if x not in ("now", "version"):
        raise ValueError(f"x={x!r} is not allowed: use 'now' (time) or 'version' (server steps)")
