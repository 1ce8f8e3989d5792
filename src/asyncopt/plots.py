"""Figures drawn from recorded histories only: one run's curves and delays, and comparisons.

The figures are built with matplotlib's object-oriented :class:`~matplotlib.figure.Figure` and
written straight to PNG (the Agg renderer), never through ``pyplot``: no display is needed and no
global figure registry grows when many runs are plotted in one process.

Every function copes with what a real run directory may hold: no evaluations (a killed run, or
evaluation switched off), a metric that was not recorded, NaN values, one seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from asyncopt.aggregate import XAxis, bands, curve, on_grid, used_delays
from asyncopt.record import EVALUATION_HEAD, History

BASE_METRICS = ("loss", "grad_norm_sq")
METRIC_LABELS = {"loss": "loss f(x)", "grad_norm_sq": "‖∇f(x)‖²", "accuracy": "accuracy",
                 "test_loss": "test loss", "suboptimality": "f(x) − f*"}
VERSION_LABEL = "version (server steps)"
MAX_SMALL_MULTIPLES = 16
DPI = 110


def plot_run(history: History, out_dir: str | Path, title: str | None = None) -> list[Path]:
    """Write ``curves.png`` (each metric against time and against version) and ``delays.png``
    (the delay distribution per worker) into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    title = title or _run_title(history)
    return [_curves(history, out_dir / "curves.png", title),
            _delays(history, out_dir / "delays.png", title)]


def plot_compare(groups: Mapping[str, Sequence[History]], out_path: str | Path,
                 x: XAxis = "now", metrics: Sequence[str] = BASE_METRICS,
                 xlabel: str | None = None, title: str | None = None) -> Path:
    """One panel per metric: for each label, the median over seeds and its interquartile band
    (no band for a single seed), on a grid shared by the label's seeds."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    every = [h for histories in groups.values() for h in histories]
    xlabel = xlabel or (_time_label(every[0]) if x == "now" and every else
                        "time (s)" if x == "now" else VERSION_LABEL)
    figure = Figure(figsize=(5.5 * max(len(metrics), 1), 4.2), layout="constrained")
    axes = figure.subplots(1, max(len(metrics), 1), squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=False):
        drawn, missing = [], []
        for index, (label, histories) in enumerate(groups.items()):
            grid, values = on_grid(histories, metric, x)
            if len(grid) == 0:
                missing.append(label)
                continue
            median, q25, q75 = bands(values)
            color = f"C{index % 10}"
            ax.plot(grid, median, color=color, drawstyle="steps-post",
                    label=f"{label} (n={len(histories)})")
            if len(histories) > 1:
                ax.fill_between(grid, q25, q75, color=color, alpha=0.25, linewidth=0,
                                step="post")
            drawn.append(np.concatenate([median, q25]))
        _axis(ax, xlabel, metric, drawn)
        if drawn:
            ax.legend(fontsize="small")
        else:
            _note(ax, f"{metric}: not recorded by any run")
        if drawn and missing:
            ax.text(0.01, 0.01, "not recorded: " + ", ".join(missing), transform=ax.transAxes,
                    fontsize="x-small", color="0.4", va="bottom")
    figure.suptitle(title or "median over seeds, band = 25–75% quantiles")
    figure.savefig(out_path, dpi=DPI)
    return out_path


def _curves(history: History, path: Path, title: str) -> Path:
    extra = [m for m in history.evaluations if m not in EVALUATION_HEAD and m not in BASE_METRICS]
    metrics = [*BASE_METRICS, *extra]
    if not any(len(curve(history, m)[0]) for m in metrics):
        return _arrival_losses(history, path, title)
    figure = Figure(figsize=(11, 3.2 * len(metrics)), layout="constrained")
    axes = figure.subplots(len(metrics), 2, squeeze=False)
    for row, metric in zip(axes, metrics, strict=True):
        for ax, x, xlabel in zip(row, ("now", "version"), (_time_label(history), VERSION_LABEL),
                                 strict=True):
            xs, ys = curve(history, metric, x)
            ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, markersize=3)
            _axis(ax, xlabel, metric, [ys])
            if len(xs) == 0:
                _note(ax, f"{metric}: not recorded")
    figure.suptitle(title)
    figure.savefig(path, dpi=DPI)
    return path


def _arrival_losses(history: History, path: Path, title: str) -> Path:
    """The fallback when nothing was evaluated: the workers' stochastic losses as they arrived."""
    loss = np.asarray(history.arrivals.get("loss", []), dtype=float)
    keep = np.isfinite(loss)
    figure = Figure(figsize=(11, 3.6), layout="constrained")
    axes = figure.subplots(1, 2)
    for ax, x, xlabel in zip(axes, ("now", "version"), (_time_label(history), VERSION_LABEL),
                             strict=True):
        xs = np.asarray(history.arrivals.get(x, []), dtype=float)[keep]
        ys = loss[keep]
        ax.plot(xs, ys, ".", markersize=2, alpha=0.3, color="C0", label="one arrival")
        if len(ys):
            window = max(1, len(ys) // 50)
            smooth = np.convolve(ys, np.ones(window) / window, mode="valid")
            ax.plot(xs[window - 1:], smooth, color="C1", label=f"mean of {window}")
            ax.legend(fontsize="small")
        else:
            _note(ax, "no arrival with a loss")
        _axis(ax, xlabel, "stochastic loss", [ys])
    figure.suptitle(f"{title}\nno evaluations recorded: stochastic loss of each arrival")
    figure.savefig(path, dpi=DPI)
    return path


def _delays(history: History, path: Path, title: str) -> Path:
    workers, delays = used_delays(history)
    ids = np.unique(np.asarray(history.arrivals.get("worker", []), dtype=int))
    if len(delays) == 0:
        figure = Figure(figsize=(6, 3), layout="constrained")
        _note(figure.subplots(), "no arrival was used (step or buffer): no delays to show")
    elif len(ids) <= MAX_SMALL_MULTIPLES:
        figure = _delay_small_multiples(ids, workers, delays)
    else:
        figure = _delay_overview(ids, workers, delays)
    figure.suptitle(f"{title}\ndelays of used arrivals (server versions since the model was read)")
    figure.savefig(path, dpi=DPI)
    return path


def _delay_small_multiples(ids: np.ndarray, workers: np.ndarray, delays: np.ndarray) -> Figure:
    columns = int(np.ceil(np.sqrt(len(ids))))
    rows = int(np.ceil(len(ids) / columns))
    figure = Figure(figsize=(2.8 * columns + 1, 2.2 * rows + 1), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False, sharex=True, sharey=True).ravel()
    bins = _delay_bins(delays)
    for ax, worker in zip(axes, ids, strict=False):
        mine = delays[workers == worker]
        ax.hist(mine, bins=bins, color="C0")
        summary = f"mean {mine.mean():.1f}, max {mine.max()}" if len(mine) else "none used"
        ax.set_title(f"worker {worker}: {summary}", fontsize="small")
    for ax in axes[len(ids):]:
        ax.set_visible(False)
    for ax in axes[(rows - 1) * columns:]:
        ax.set_xlabel("delay")
    for ax in axes[::columns]:
        ax.set_ylabel("arrivals")
    return figure


def _delay_overview(ids: np.ndarray, workers: np.ndarray, delays: np.ndarray) -> Figure:
    """For many workers: the overall histogram and per-worker mean, max and count as curves
    over the worker index (bars or small multiples are unreadable at a thousand workers)."""
    figure = Figure(figsize=(11, 8), layout="constrained")
    overall, per_delay, per_count = figure.subplots(3, 1)
    overall.hist(delays, bins=_delay_bins(delays), color="C0")
    overall.set_yscale("log")
    overall.set(xlabel="delay", ylabel="arrivals",
                title=f"all {len(ids)} workers: mean {delays.mean():.1f}, max {delays.max()}")
    index = np.searchsorted(ids, workers)
    count = np.bincount(index, minlength=len(ids))
    total = np.bincount(index, weights=delays, minlength=len(ids))
    peak = np.full(len(ids), np.nan)
    np.fmax.at(peak, index, delays)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
    per_delay.plot(ids, peak, ".", color="C3", markersize=3, label="max")
    per_delay.plot(ids, mean, ".", color="C0", markersize=3, label="mean")
    per_delay.set(xlabel="worker", ylabel="delay")
    per_delay.legend(fontsize="small")
    per_count.plot(ids, count, ".", color="C2", markersize=3)
    per_count.set(xlabel="worker", ylabel="used arrivals")
    return figure


def _delay_bins(delays: np.ndarray) -> np.ndarray:
    # Whole-number bin widths: delays are integers, and uneven bins would draw false spikes.
    width = -(-(int(delays.max()) + 1) // 60)
    return np.arange(0, int(delays.max()) + width + 1, width) - 0.5


def _axis(ax: Axes, xlabel: str, metric: str, drawn: Sequence[np.ndarray]) -> None:
    """Label the axes; log y when every drawn value is positive (never for accuracy)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    values = np.concatenate([np.asarray(d, dtype=float) for d in drawn]) if drawn else []
    values = values[np.isfinite(values)] if len(values) else values
    if len(values) and (values > 0).all() and "accuracy" not in metric:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)


def _note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _time_label(history: History) -> str:
    runtime = history.config.get("runtime", "sim")
    return "simulated time (s)" if runtime == "sim" else "wall time (s)"


def _run_title(history: History) -> str:
    config = history.config
    status = history.summary.get("status")
    suffix = f" ({status})" if status and status != "completed" else ""
    if not config:
        return "asyncopt run" + suffix

    def name(key: str) -> str:
        value = config.get(key, "?")
        return str(value.get("name", "?") if isinstance(value, dict) else value)

    return (f"{name('protocol')} + {name('rule')} on {name('problem')}, "
            f"{config.get('workers', '?')} workers, {config.get('runtime', '?')} runtime{suffix}")
