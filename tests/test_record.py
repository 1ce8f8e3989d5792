"""``History.to_pandas``: each recorded table as a DataFrame; pandas stays optional."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from asyncopt.errors import ConfigError
from asyncopt.record import load
from tests.conftest import simulate


def test_each_table_becomes_a_dataframe_with_the_recorded_values(tmp_path, quadratic):
    pandas = pytest.importorskip("pandas")
    result = simulate(quadratic, {"name": "sgd", "lr": 0.05}, run_dir=tmp_path, steps=40)
    for history in (result.history, load(tmp_path)):  # in memory and read back
        curves, arrivals = history.to_pandas(), history.to_pandas("arrivals")
        assert isinstance(curves, pandas.DataFrame)
        assert len(curves) == len(history.evaluations["now"]) >= 2
        assert list(curves.columns) == list(history.evaluations)
        assert list(arrivals.columns) == list(history.arrivals)
        assert len(arrivals) == history.num_arrivals >= 40
        np.testing.assert_array_equal(curves["loss"].to_numpy(), history.evaluations["loss"])
        assert set(arrivals["action"]) == {"step"}
        assert arrivals["delay"].max() == result.summary["max_delay"]


def test_an_unknown_table_or_missing_pandas_says_what_to_do(quadratic, monkeypatch):
    history = simulate(quadratic, {"name": "sgd", "lr": 0.05}, steps=5).history
    with pytest.raises(ConfigError, match=r"table = 'evaluation' .*did you mean 'evaluations'"):
        history.to_pandas("evaluation")
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"needs pandas.*pip install pandas"):
        history.to_pandas()
