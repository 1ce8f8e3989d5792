"""The simulator resumed from a checkpoint gives the uninterrupted run's history, bit for bit.

Its checkpoint holds the work in flight (pending jobs, the snapshots they read, every worker's
minibatch generator and the speed model's streams) besides the server's state, so the resumed
run is the same run: same arrivals, same delays, same evaluations, same final model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_resume_protocols import VARIANTS

import asyncopt
from asyncopt.api import resume_run
from asyncopt.errors import ConfigError

SPEED = {"profile": "linear", "noise": "exponential", "noise_scale": 0.5,
         "straggler_probability": 0.1, "straggler_factor": 4.0}


def _config(tmp_path: Path, protocol: dict[str, Any], **runtime: Any) -> dict[str, Any]:
    return {"problem": {"name": "logistic", "dataset": "breast_cancer"}, "workers": 4,
            "rule": {"name": "adam", "lr": 0.01}, "protocol": protocol, "speed": SPEED,
            "budget": {"steps": 60}, "eval": {"every": 7},
            "runtime_options": {"checkpoint_every": 25, **runtime},
            "output": {"dir": str(tmp_path), "name": "run"}}


def _same(a: asyncopt.Result, b: asyncopt.Result) -> None:
    for table in ("arrivals", "evaluations"):
        left, right = getattr(a.history, table), getattr(b.history, table)
        assert left.keys() == right.keys()
        for column in left:
            numeric = left[column].dtype.kind == "f"
            assert np.array_equal(left[column], right[column], equal_nan=numeric), (table, column)
    for name, value in a.params.items():
        assert torch.equal(value, b.params[name]), name
    assert a.summary["version"] == b.summary["version"]
    assert a.summary["final"] == b.summary["final"]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_a_resumed_simulation_is_the_uninterrupted_one(tmp_path, variant):
    whole = asyncopt.run(_config(tmp_path, VARIANTS[variant]))
    assert (whole.run_dir / "checkpoint.pt").is_file()  # the last one: at version >= 50
    resumed = resume_run(whole.run_dir)
    assert resumed.run_dir != whole.run_dir
    _same(whole, resumed)


def test_a_resumed_simulation_can_go_on_past_the_old_budget(tmp_path):
    longer = asyncopt.run(_config(tmp_path, {"name": "ringmaster", "max_delay": 2},
                                  checkpoint_every=0) | {"budget": {"steps": 90}})
    first = asyncopt.run(_config(tmp_path, {"name": "ringmaster", "max_delay": 2}))
    _same(longer, resume_run(first.run_dir, overrides=["budget.steps=90"]))


def test_gradients_computed_ahead_cannot_be_checkpointed_yet(tmp_path):
    with pytest.raises(ConfigError, match=r"runtime_options\.ahead"):
        asyncopt.run(_config(tmp_path, {"name": "asgd"}, ahead=2))
    assert not (tmp_path / "run").exists()


def _net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _train_user_model(run_dir: Path, steps: int, resume: Path | None = None) -> asyncopt.Result:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(120, 4, generator=generator)
    data = torch.utils.data.TensorDataset(x, x[:, :3].argmax(1))
    return asyncopt.train(_net, {"name": "adam", "lr": 0.01}, "asgd",
                          loss=torch.nn.functional.cross_entropy, data=data, workers=3,
                          batch_size=8, speed=SPEED, budget={"steps": steps},
                          evaluation={"every": 7}, runtime_options={"checkpoint_every": 20},
                          run_dir=run_dir, resume=resume)


def test_a_train_run_of_your_own_objects_resumes_with_the_same_call(tmp_path):
    whole = _train_user_model(tmp_path / "whole", 70)
    first = _train_user_model(tmp_path / "first", 50)  # its last checkpoint: at version 40
    resumed = _train_user_model(tmp_path / "again", 70, resume=first.run_dir)
    _same(whole, resumed)
    assert sorted(p.name for p in first.run_dir.iterdir()) == sorted(
        p.name for p in whole.run_dir.iterdir())  # the resumed run never wrote there
    with pytest.raises(ConfigError, match="never writes into the run it continues"):
        _train_user_model(first.run_dir, 70, resume=first.run_dir)
