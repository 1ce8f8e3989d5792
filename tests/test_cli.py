"""The command line end to end, on small budgets."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from asyncopt.cli import main
from asyncopt.record import load

CONFIG = """
seed = 0
workers = 3
[problem]
name = "quadratic"
dim = 5
[rule]
name = "sgd"
lr = 0.1
[speed]
profile = "linear"
[budget]
steps = 40
[eval]
every = 10
"""


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(CONFIG)
    return path


def test_run_writes_a_complete_run_directory(tmp_path, capsys):
    code = main(["run", str(_config(tmp_path)), "--out", str(tmp_path / "runs"), "--quiet",
                 "--set", "rule.lr=0.05"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "status:   completed" in printed and "final:" in printed
    (run_dir,) = (tmp_path / "runs").iterdir()
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.toml", "arrivals.csv", "evaluations.csv", "summary.json",
            "curves.png", "delays.png"} <= names
    assert "lr = 0.05" in (run_dir / "config.toml").read_text()
    assert json.loads((run_dir / "summary.json").read_text())["version"] == 40
    assert main(["plot", str(run_dir), "--out", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "curves.png").stat().st_size > 1000


def test_compare_runs_variations_over_seeds(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", str(_config(tmp_path)), "--vary", "protocol.name=asgd,minibatch",
                 "--seeds", "2", "--out", str(out), "--quiet", "--jobs", "1"])
    assert code == 0
    assert (out / "compare.png").stat().st_size > 1000
    table = (out / "compare.md").read_text()
    assert "protocol.name=asgd" in table and "protocol.name=minibatch" in table
    runs = sorted(out.glob("*/seed*"))
    assert len(runs) == 4 and all(load(r).summary["status"] == "completed" for r in runs)
    # recorded runs can be compared again without re-running them
    assert main(["compare", *map(str, runs[:2]), "--out", str(tmp_path / "again")]) == 0


def test_bad_input_exits_2_with_a_clear_message(tmp_path, capsys):
    assert main(["run", str(_config(tmp_path)), "--set", "rule.name=sgdd", "--quiet"]) == 2
    assert "rule.name = 'sgdd'" in capsys.readouterr().err
    assert main(["plot", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_ctrl_c_on_the_command_line_leaves_a_readable_run(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    config = _config(tmp_path)
    command = [sys.executable, "-m", "asyncopt.cli", "run", str(config), "--quiet",
               "--out", str(tmp_path / "runs"), "--set", "budget.steps=100000000",
               "--set", "eval.every=1000"]
    # a background job of a non-interactive shell (as CI may be) inherits SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler: give the child the default back
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while time.time() < deadline and not list((tmp_path / "runs").glob("*/arrivals.csv")):
        time.sleep(0.2)
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    try:
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:  # never leave it behind, whatever failed
            process.kill()
            process.communicate()
    report = out.decode() + err.decode()
    assert process.returncode == 1, report
    assert "interrupted" in out.decode(), report
    (run_dir,) = (tmp_path / "runs").iterdir()
    history = load(run_dir)
    assert history.summary["status"] == "interrupted"
    assert history.num_arrivals > 0 and history.num_arrivals == history.summary["arrivals"]


METHODS = CONFIG + """
[[methods]]
label = "fast"
rule = { name = "sgd", lr = 0.1 }

[[methods]]
label = "sync"
protocol = { name = "minibatch" }
"""


def test_methods_tune_and_compare(tmp_path, capsys):
    path = tmp_path / "methods.toml"
    path.write_text(METHODS)
    assert main(["run", str(path), "--quiet"]) == 2
    assert "--method" in capsys.readouterr().err
    assert main(["run", str(path), "--method", "sync", "--quiet", "--out", str(tmp_path)]) == 0
    assert "minibatch" in next(tmp_path.glob("*/config.toml")).read_text()

    assert main(["tune", str(path), "--grid", "rule.lr=0.001,0.2", "--out",
                 str(tmp_path / "tune"), "--quiet", "--jobs", "1"]) == 0
    tuned = tomllib.loads((tmp_path / "tune" / "tuned.toml").read_text())
    by_label = {m["label"]: m for m in tuned["methods"]}
    assert by_label["fast"]["rule"]["lr"] == 0.2  # a larger step wins on this quadratic
    assert by_label["sync"]["rule"] == {"name": "sgd", "lr": 0.2}  # base rule copied, then set
    assert tuned["problem"]["dim"] == 5

    assert main(["compare", str(tmp_path / "tune" / "tuned.toml"), "--seeds", "2", "--out",
                 str(tmp_path / "cmp"), "--quiet", "--jobs", "1"]) == 0
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| fast" in table and "| sync" in table
