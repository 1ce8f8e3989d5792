"""Figures from recorded histories: files are written, valid and non-trivial, whatever the run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from test_aggregate import evaluated, synthetic

from asyncopt.plots import plot_compare, plot_run
from asyncopt.record import Recorder

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert len(data) > 10_000, f"{path} is suspiciously small ({len(data)} bytes)"


def test_plot_run_with_three_workers_from_a_run_directory(tmp_path):
    history = synthetic(workers=3, accuracy=True, run_dir=tmp_path / "run")
    figures = plot_run(history, tmp_path / "run")
    assert [f.name for f in figures] == ["curves.png", "delays.png"]
    for figure in figures:
        assert_png(figure)


def test_plot_run_with_two_hundred_workers(tmp_path):
    figures = plot_run(synthetic(workers=200, arrivals=3000), tmp_path, title="many workers")
    for figure in figures:
        assert_png(figure)


def test_plot_run_without_evaluations_or_arrivals(tmp_path):
    for figure in plot_run(synthetic(evaluate=False), tmp_path / "unevaluated"):
        assert_png(figure)
    for figure in plot_run(Recorder().history(), tmp_path / "empty"):
        assert_png(figure)


def test_plot_run_with_nan_and_a_missing_metric(tmp_path):
    history = evaluated([(0.0, 0, 1.0), (1.0, 3, np.nan), (2.0, 6, 0.2), (3.0, 9, np.inf)])
    for figure in plot_run(history, tmp_path):
        assert_png(figure)


def test_plot_compare_over_seeds_single_seed_and_missing_data(tmp_path):
    groups = {"asgd": [synthetic(seed=s) for s in range(3)], "single seed": [synthetic(seed=9)],
              "never evaluated": [synthetic(evaluate=False)]}
    for x in ("now", "version"):
        assert_png(plot_compare(groups, tmp_path / x / "compare.png", x=x))
    path = plot_compare(groups, tmp_path / "metrics.png", metrics=("loss", "accuracy"),
                        xlabel="wall time (s)")
    assert_png(path)
