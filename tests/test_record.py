"""Reading a run back: `History.to_pandas` (pandas stays optional) and the CSV tables, exactly."""

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


def test_tables_read_back_exactly_whether_written_by_the_recorder_or_by_hand(tmp_path):
    values = [0.1, 1 / 3, 2.5e-300, -7.0, 1e16 + 2]
    rows = "".join(f"{v!r},{k},{'step' if k % 2 else 'drop'},\n" for k, v in enumerate(values))
    (tmp_path / "arrivals.csv").write_text("now,worker,action,latency\n" + rows + "0.5,9")
    table = load(tmp_path).arrivals  # the cut last line (a killed run) is left out
    assert table["now"].tolist() == values and table["now"].dtype == np.float64
    assert table["worker"].dtype == np.int64 and table["worker"].tolist() == [0, 1, 2, 3, 4]
    assert table["action"].tolist() == ["drop", "step", "drop", "step", "drop"]
    assert np.isnan(table["latency"]).all()
    # a row of another length, or quoted fields: read by the csv module, the odd row dropped
    (tmp_path / "arrivals.csv").write_text('now,worker,action,latency\n0.25,1,"step",\n'
                                           "1.0,2\n0.75,-3,drop,0.5\n")
    table = load(tmp_path).arrivals
    assert table["now"].tolist() == [0.25, 0.75] and table["worker"].tolist() == [1, -3]
    assert table["latency"][1] == 0.5 and table["action"].tolist() == ["step", "drop"]
