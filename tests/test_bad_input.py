"""Bad input a new user might give: an error naming the field, never a traceback or a stale file."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import asyncopt
from asyncopt.checkpoint import load_model
from asyncopt.cli import main
from asyncopt.errors import ConfigError
from asyncopt.problems.datasets import DataFileError, load_dataset
from asyncopt.problems.registry import make_problem

QUADRATIC = """
workers = 4
[problem]
name = "quadratic"
[rule]
name = "sgd"
lr = 0.05
[budget]
steps = 20
"""


def _run(tmp_path, *overrides: str, config: str = QUADRATIC) -> int:
    path = tmp_path / "q.toml"
    path.write_text(config)
    args = ["run", str(path), "--quiet", "--no-plot", "--out", str(tmp_path / "runs")]
    for item in overrides:
        args += ["--set", item]
    return main(args)


class _Unsafe:
    def __reduce__(self):
        return os.system, ("true",)


def _quadratic(workers: int = 2):
    return make_problem({"name": "quadratic"}, workers, 0)


# --- item 2: non-finite data --------------------------------------------------------------------

def test_nan_and_inf_in_user_data_are_refused_with_the_first_sample_and_the_count():
    X, y = torch.randn(50, 4), torch.randint(0, 2, (50,))
    X[7, 2], X[9, 0] = float("inf"), float("nan")
    with pytest.raises(ConfigError, match=r"data = 'TensorDataset' .*inputs with finite values "
                       r"only: 2 value\(s\) .*the first in sample 7"):
        asyncopt.train(torch.nn.Linear(4, 2), "sgd", loss=F.cross_entropy,
                       data=TensorDataset(X, y), workers=2, budget={"steps": 5})
    targets = torch.randn(50)
    targets[3] = float("nan")
    with pytest.raises(ConfigError, match=r"eval_data .*targets with finite values only: 1 .*"
                       r"sample 3"):
        asyncopt.train(torch.nn.Linear(4, 1), "sgd", loss=F.mse_loss,
                       data=(torch.randn(50, 4), torch.randn(50, 1)),
                       eval_data=(torch.randn(50, 4), targets), workers=2, budget={"steps": 5})


def test_a_libsvm_value_beyond_float32_names_its_line(tmp_path):
    path = tmp_path / "data.svm"
    path.write_text("1 1:0.5\n0 1:1e39\n1 2:0.25\n0 1:2\n")
    with pytest.raises(DataFileError, match=r"line 2: .*beyond float32's range"):
        load_dataset("libsvm", seed=0, path=str(path))


def _inf_loss(outputs, targets, reduction="mean"):
    return F.cross_entropy(outputs, targets, reduction=reduction) + torch.log(torch.zeros(()))


def test_a_non_finite_loss_at_a_finite_model_does_not_blame_the_step_size():
    X, y = torch.randn(40, 3), torch.randint(0, 2, (40,))
    problem = asyncopt.user_problem(torch.nn.Linear(3, 2), F.cross_entropy, (X, y), workers=2)
    problem.loss_fn = _inf_loss  # built with a finite loss, then the loss gives -inf
    with pytest.warns(RuntimeWarning, match="diverged"):
        result = asyncopt.train(problem, "sgd", budget={"steps": 5})
    reason = result.summary["reason"]
    assert "every parameter is finite" in reason and "lower the step size" not in reason


# --- item 3: what summary.final is -------------------------------------------------------------

def test_final_says_when_it_is_not_the_end_of_the_run(tmp_path):
    with pytest.warns(RuntimeWarning, match="run diverged: the last 100 gradients"):
        assert _run(tmp_path, "rule.lr=1e300", "budget.steps=1000") == 1
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["version"] > 0
    assert summary["final_at"] == {"version": 0, "now": 0.0, "arrivals": 0}
    assert "not the end of the run" in summary["final_note"]
    result = asyncopt.train(_quadratic(), "sgd", budget={"steps": 30})
    assert result.summary["final_at"]["version"] == result.summary["version"] == 30
    assert "final_note" not in result.summary


# --- item 4: refusals leave no files -----------------------------------------------------------

@pytest.mark.parametrize("option", ['runtime_options.mode="lockfree"', "runtime_options.servers=2"])
def test_a_protocol_a_serverless_mode_cannot_run_leaves_no_run_directory(tmp_path, capsys, option):
    assert _run(tmp_path, "runtime=processes", "workers=2", "protocol.name=minibatch",
                option) == 2
    assert "protocol.name = 'minibatch' is not allowed" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# --- item 5: raw tracebacks --------------------------------------------------------------------

def test_a_seed_beyond_64_bits_is_a_config_error(tmp_path, capsys):
    assert _run(tmp_path, "seed=1180591620717411303424") == 2
    assert "seed = 1180591620717411303424 is not allowed: an integer in [0, " in (
        capsys.readouterr().err)
    with pytest.raises(ConfigError, match="seed"):
        asyncopt.train(_quadratic(), "sgd", budget={"steps": 5}, seed=2**64)


def test_an_output_dir_that_is_a_file_is_a_config_error(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    (tmp_path / "q.toml").write_text(QUADRATIC)
    assert main(["run", str(tmp_path / "q.toml"), "--quiet", "--no-plot", "--set",
                 f'output.dir="{tmp_path / "afile"}"']) == 2
    assert f"output.dir = '{tmp_path / 'afile'}' is not allowed: a directory where runs" in (
        capsys.readouterr().err)


def test_the_api_takes_a_rule_by_name_and_checks_budget_and_evaluation():
    result = asyncopt.train(_quadratic(), "adam", budget={"steps": 5})
    assert result.summary["version"] == 5
    with pytest.raises(ConfigError, match=r"budget = 50 .*a Budget or a dict"):
        asyncopt.train(_quadratic(), "sgd", budget=50)
    with pytest.raises(ConfigError, match=r"budget = 'step' .*did you mean 'steps'\?"):
        asyncopt.train(_quadratic(), "sgd", budget={"step": 5})
    with pytest.raises(ConfigError, match=r"evaluation = 'evry' .*did you mean 'every'\?"):
        asyncopt.train(_quadratic(), "sgd", budget={"steps": 5}, evaluation={"evry": 5})
    with pytest.raises(ConfigError, match=r"rule.name = 'adamm' .*did you mean 'adam'\?"):
        asyncopt.train(_quadratic(), "adamm", budget={"steps": 5})
    with pytest.raises(ConfigError, match=r"protocol = 5 "):
        asyncopt.train(_quadratic(), "sgd", 5, budget={"steps": 5})


def test_an_empty_config_file_is_refused(tmp_path, capsys):
    assert _run(tmp_path, config="# nothing yet\n") == 2
    assert "a file with at least one setting" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# --- item 8: messages keep what the user needs ----------------------------------------------------

def test_an_unsafe_checkpoint_is_refused_naming_its_global(tmp_path, capsys):
    assert _run(tmp_path, "runtime_options.checkpoint_every=5") == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    torch.save({"params": _Unsafe()}, run_dir / "checkpoint.pt")
    assert main(["run", "--resume", str(run_dir), "--quiet", "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert "posix.system" in err and "weights_only` set to `False`" not in err
    assert not run_dir.with_name(run_dir.name + "-resumed").exists()
    torch.save(_Unsafe(), tmp_path / "model.pt")
    with pytest.raises(ConfigError, match=r"posix\.system"):
        load_model(tmp_path / "model.pt")

