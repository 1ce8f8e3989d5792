"""The O(1/√t) check of Gratton & Toint (2026): the log-log slope of min_{s≤t} ‖∇f(x_s)‖² in t.

    .venv/bin/python scripts/loglog_slope.py runs/gratton-toint [--metric grad_norm_sq]

reads every run directory under the given folder (as ``asyncopt compare --out`` lays them out:
``<folder>/<method>/seed<k>``), takes each run's running minimum of ``metric`` against its clock,
and fits log(min) = a + slope · log t by least squares over the last decade of time points
(t ≥ t_end/10, so the start-up transient is left out). A rate O(1/√t) up to logs shows as a
slope of about −1/2 or steeper. Writes ``slope.md`` (median slope over seeds per method) and
``slope.png`` (the running minima on log-log axes with the fitted lines) into the folder.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from asyncopt.aggregate import curve, format_table
from asyncopt.record import load


def slope(times: np.ndarray, values: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(slope, intercept, mask of the fitted points) of log running-min against log t."""
    keep = (times > 0) & np.isfinite(values) & (values > 0)
    times, running = times[keep], np.minimum.accumulate(values[keep])
    fitted = times >= times[-1] / 10 if len(times) else np.array([], dtype=bool)
    if fitted.sum() < 3:
        return math.nan, math.nan, fitted
    b, a = np.polyfit(np.log(times[fitted]), np.log(running[fitted]), 1)
    return float(b), float(a), fitted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--metric", default="grad_norm_sq")
    args = parser.parse_args()
    folder = Path(args.folder)
    figure = Figure(figsize=(7.5, 5), layout="constrained")
    ax = figure.subplots()
    rows = []
    methods = sorted(p for p in folder.iterdir() if p.is_dir())
    for index, method in enumerate(methods):
        name = method.name.split("-", 1)[-1]  # compare names it <config stem>-<method label>
        slopes = []
        for run_dir in sorted(p for p in method.iterdir() if (p / "summary.json").exists()):
            times, values = curve(load(run_dir), args.metric)
            b, a, _ = slope(times, values)
            slopes.append(b)
            keep = (times > 0) & (values > 0)
            color = f"C{index % 10}"
            ax.plot(times[keep], np.minimum.accumulate(values[keep]), color=color, alpha=0.6,
                    label=name if len(slopes) == 1 else None)
            if math.isfinite(b):
                t = np.array([times[keep][-1] / 10, times[keep][-1]])
                ax.plot(t, np.exp(a) * t ** b, "--", color=color, linewidth=1)
        finite = [s for s in slopes if math.isfinite(s)]
        rows.append({"method": name, "seeds": len(slopes),
                     "slope (median)": float(np.median(finite)) if finite else math.nan,
                     "slopes": ", ".join(f"{s:.2f}" for s in slopes)})
    ax.set(xscale="log", yscale="log", xlabel="time (s)",
           ylabel=f"min over s ≤ t of {args.metric}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="x-small")
    figure.suptitle("running minimum, log-log; dashed: least-squares fit over the last decade")
    figure.savefig(folder / "slope.png", dpi=110)
    table = format_table(rows)
    (folder / "slope.md").write_text(table + "\n")
    print(table)
    print(f"written:  {folder / 'slope.md'}, {folder / 'slope.png'}")


if __name__ == "__main__":
    main()
