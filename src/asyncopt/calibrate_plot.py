"""Figures of a calibration (:mod:`asyncopt.calibrate`): measured against fitted, per worker.

``calibration.png`` has two rows of small multiples (up to ``MAX_WORKERS`` workers): on top,
each worker's empirical distribution function of its de-trended compute times against the
fitted model's (its own fit, and the one ``[speed]`` table's); below, its compute times against
the start of their jobs with the fitted levels (the slowdown windows). Written with
matplotlib's object-oriented Figure and the Agg renderer, as :mod:`asyncopt.plots`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from asyncopt.calibrate import Calibration, mixture_cdf, table_fit

MAX_WORKERS = 8
DPI = 110


def plot_calibration(calibration: Calibration, out_path: str | Path) -> Path:
    """Write the figure to ``out_path``; return it."""
    out_path = Path(out_path)
    fits = calibration.fits[:MAX_WORKERS]
    figure = Figure(figsize=(3.6 * len(fits), 6.4), layout="constrained")
    axes = figure.subplots(2, len(fits), squeeze=False)
    for column, fit in enumerate(fits):
        top, bottom = axes[0][column], axes[1][column]
        y = fit.detrended
        top.step(y, np.arange(1, len(y) + 1) / len(y), where="post", color="0.2",
                 label=f"measured (n={fit.samples})")
        grid = np.geomspace(y[0] * 0.8, y[-1] * 1.05, 400)
        top.plot(grid, mixture_cdf(fit, grid), color="C0",
                 label=f"{fit.noise.replace('_', '-')}, D={fit.ks:.3f}")
        table = table_fit(fit, calibration.speed)
        table_ks = calibration.table_ks[calibration.fits.index(fit)]
        top.plot(grid, mixture_cdf(table, grid), color="C1", linestyle="--",
                 label=f"[speed] table, D={table_ks:.3f}")
        top.set(xlabel="de-trended compute time (s)", ylabel="P(time ≤ x)", xscale="log",
                title=f"worker {fit.worker}")
        top.legend(fontsize="x-small")
        top.grid(alpha=0.3)
        starts, times = fit.series
        bottom.plot(starts, times, ".", markersize=2, color="0.4")
        for begin, end, level in fit.levels:
            right = end if np.isfinite(end) else starts[-1]
            bottom.plot([begin, right], [level, level], color="C3")
        bottom.set(xlabel="job start (s)", ylabel="compute time (s)", yscale="log")
        bottom.grid(alpha=0.3)
    shown = "" if len(calibration.fits) <= MAX_WORKERS else \
        f" (first {MAX_WORKERS} of {len(calibration.fits)} workers)"
    figure.suptitle(f"calibration of {calibration.source}{shown}")
    figure.savefig(out_path, dpi=DPI)
    return out_path
