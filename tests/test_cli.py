"""The command line end to end, on small budgets."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

import asyncopt
from asyncopt.arguments import parser
from asyncopt.cli import main
from asyncopt.record import load

ROOT = Path(__file__).resolve().parents[1]

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


@pytest.mark.parametrize("name, code", [("SIGINT", 130), ("SIGTERM", 143), ("SIGHUP", 129)])
def test_a_signal_on_the_command_line_leaves_a_readable_run(tmp_path, name, code):
    import os
    import signal
    import subprocess
    import sys
    import time

    config = _config(tmp_path)
    command = [sys.executable, "-m", "asyncopt.cli", "run", str(config), "--quiet",
               "--out", str(tmp_path / "runs"), "--set", "budget.steps=100000000",
               "--set", "eval.every=1000"]
    # a background job of a non-interactive shell (as CI may be) inherits SIGINT ignored: give
    # the child the default back; its own session, so that the signal can go to its group
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while time.time() < deadline and not list((tmp_path / "runs").glob("*/arrivals.csv")):
        time.sleep(0.2)
    time.sleep(1.0)
    os.killpg(process.pid, signal.Signals[name])  # as a terminal, Slurm or systemd sends it
    try:
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:  # never leave it behind, whatever failed
            process.kill()
            process.communicate()
    report = out.decode() + err.decode()
    assert process.returncode == code, report
    assert "interrupted" in out.decode(), report
    (run_dir,) = (tmp_path / "runs").iterdir()
    history = load(run_dir)
    assert history.summary["status"] == "interrupted" and history.summary["signal"] == name
    assert history.num_arrivals > 0 and history.num_arrivals == history.summary["arrivals"]
    assert history.summary["final"] and history.evaluations["version"][-1] == \
        history.summary["version"]  # the final evaluation was made at the end


def _session(sid: int) -> list[int]:
    """The live processes of session ``sid`` (from /proc: field 6 of each stat)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux's /proc")
def test_runs_in_parallel_stop_when_their_main_process_is_killed(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    config = _config(tmp_path)
    command = [sys.executable, "-m", "asyncopt.cli", "compare", str(config), "--seeds", "2",
               "--jobs", "2", "--quiet", "--no-plot", "--out", str(tmp_path / "set"),
               "--set", "budget.steps=100000000", "--set", "eval.every=1000"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and len(list(
                (tmp_path / "set").glob("*/seed*/arrivals.csv"))) < 2:
            time.sleep(0.2)
        assert len(list((tmp_path / "set").glob("*/seed*/arrivals.csv"))) == 2
        process.kill()  # the main process alone, with no chance to stop its workers
        process.wait()
        deadline = time.time() + 30
        while time.time() < deadline and _session(process.pid):
            time.sleep(0.2)
        assert not _session(process.pid), "pool workers outlived their main process"
    finally:
        for pid in _session(process.pid):
            os.kill(pid, signal.SIGKILL)
    for run_dir in (tmp_path / "set").glob("*/seed*"):  # each ended as a SIGTERM ends a run
        assert load(run_dir).summary["status"] == "interrupted"


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


def test_run_no_plot_writes_no_figures(tmp_path, capsys):
    assert main(["run", str(_config(tmp_path)), "--out", str(tmp_path), "--quiet",
                 "--no-plot"]) == 0
    (run_dir,) = (p for p in tmp_path.iterdir() if p.is_dir())
    assert "figures:" not in capsys.readouterr().out
    assert (run_dir / "summary.json").is_file() and not list(run_dir.glob("*.png"))


def test_run_events_are_log_lines_on_stderr_unless_quiet(tmp_path, capsys):
    args = ["run", str(_config(tmp_path)), "--no-plot", "--set",
            "runtime_options.checkpoint_every=20"]
    assert main([*args, "--out", str(tmp_path / "loud")]) == 0
    (run_dir,) = (tmp_path / "loud").iterdir()
    err = capsys.readouterr().err
    # at 20 steps (not at the budget's 40: the run's end is no checkpoint)
    assert f"asyncopt: INFO: checkpoint at version 20 written to {run_dir}" in err
    assert main([*args, "--out", str(tmp_path / "quiet"), "--quiet"]) == 0
    assert "checkpoint" not in capsys.readouterr().err
    assert not logging.getLogger("asyncopt").handlers  # main() leaves no handler behind


def test_a_ready_config_runs_by_name_and_copies_out(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here: the name is found in the ready configs
    assert main(["configs"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[:-2]]
    shipped = sorted(p.relative_to(ROOT / "configs").with_suffix("").as_posix()
                     for p in (ROOT / "configs").rglob("*.toml"))
    assert sorted(listed) == shipped and "quickstart" in listed
    assert main(["configs", "quickstart"]) == 0
    assert (tmp_path / "quickstart.toml").read_text() == \
        (ROOT / "configs" / "quickstart.toml").read_text()
    assert main(["configs", "quickstart"]) == 2  # never overwrites
    assert "no file is yet" in capsys.readouterr().err
    assert main(["run", "quickstart", "--quiet", "--no-plot", "--set", "budget.steps=20",
                 "--set", 'output.dir="elsewhere"']) == 0
    assert "status:   completed" in capsys.readouterr().out
    assert main(["run", "quickstrat"]) == 2
    assert "did you mean 'quickstart'?" in capsys.readouterr().err


def test_a_config_key_typo_suggests_the_nearest_key(tmp_path, capsys):
    path = _config(tmp_path)
    path.write_text(CONFIG.replace("lr = 0.1", "lrr = 0.1").replace("workers", "wrkers"))
    assert main(["run", str(path), "--quiet"]) == 2
    assert "did you mean 'workers'?" in capsys.readouterr().err
    path.write_text(CONFIG.replace("lr = 0.1", "lrr = 0.1"))
    assert main(["run", str(path), "--quiet"]) == 2
    assert "rule = 'lrr' is not allowed: known keys are" in (err := capsys.readouterr().err)
    assert err.rstrip().endswith("did you mean 'lr'?")


def _actions(parser: argparse.ArgumentParser, path: str = "asyncopt"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction | argparse._VersionAction):
            yield path, action


def test_every_argument_has_help_without_docstring_markup():
    actions = list(_actions(parser()))
    assert len(actions) > 40
    for path, action in actions:
        assert action.help, f"{path} {action.dest} has no help"
        assert not re.search(r"``|:func:|:class:|:mod:", action.help), (path, action.help)
    texts = [parser().format_help()] + [sub.format_help() for sub in
                                         parser()._actions[-1].choices.values()]
    assert not any(re.search(r"``|:func:|:class:|:mod:", text) for text in texts)


def test_help_and_version_start_without_torch_or_ray():
    code = ("import sys\nfrom asyncopt.cli import main\n"
            "for argv in (['--help'], ['--version'], ['run', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'ray', 'numpy') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True).stdout
    assert "usage: asyncopt" in out and out.strip().endswith("[]")
    version = subprocess.run([sys.executable, "-m", "asyncopt", "--version"], env=env,
                             capture_output=True, text=True, check=True).stdout
    assert version.strip() == f"asyncopt {asyncopt.__version__}"
    assert asyncopt.__version__ == importlib.metadata.version("asyncopt")


def test_the_progress_bar_shows_the_last_loss_and_the_mean_delay(tmp_path, capsys):
    assert main(["run", str(_config(tmp_path)), "--no-plot", "--out", str(tmp_path),
                 "--set", "budget.steps=200", "--set", "eval.every=50"]) == 0
    bar = capsys.readouterr().err.replace("\r", "\n")
    (run_dir,) = (p for p in tmp_path.iterdir() if p.is_dir())
    history = load(run_dir)
    shown = re.findall(r"version=(\d+), loss=([\d.e+-]+), delay=([\d.]+)", bar)
    assert shown, bar
    version, loss, delay = shown[-1]
    evaluations = history.evaluations
    last = evaluations["loss"][evaluations["version"] <= int(version)][-1]
    assert float(loss) == pytest.approx(last, rel=1e-3)
    arrivals = history.arrivals
    used = (arrivals["version"] <= int(version)) & np.isin(arrivals["action"], ("step",))
    assert float(delay) == pytest.approx(arrivals["delay"][used].mean(), abs=0.01)


def test_compare_reports_time_to_targets_of_any_metric_and_reloads_runs_by_label(tmp_path,
                                                                                 capsys):
    path = tmp_path / "methods.toml"
    path.write_text(METHODS.replace('label = "sync"\nprotocol = { name = "minibatch" }',
                                    'label = "fast twin"\nprotocol = { name = "asgd" }'))
    out = tmp_path / "cmp"
    assert main(["compare", str(path), "--seeds", "2", "--out", str(out), "--quiet",
                 "--jobs", "1", "--no-plot", "--target", "1e9", "--target",
                 "grad_norm_sq=1e9"]) == 0
    first = (out / "compare.md").read_text()
    loss_table, grad_table = first.split("\n\n")
    assert "| loss" in loss_table and "| grad_norm_sq" in grad_table
    assert loss_table.count("2/2") == 2 and grad_table.count("2/2") == 2  # every run reached
    # the same protocol and rule under two labels: reloaded, they stay two groups
    runs = sorted(str(p) for p in out.glob("*/seed*"))
    assert len(runs) == 4
    assert main(["compare", *runs, "--out", str(tmp_path / "again"), "--no-plot",
                 "--target", "1e9", "--target", "grad_norm_sq=1e9"]) == 0
    again = (tmp_path / "again" / "compare.md").read_text()
    assert again == first
    assert main(["compare", str(path), "--seeds", "1", "--out", str(tmp_path / "one"),
                 "--quiet", "--jobs", "1", "--no-plot", "--method", "fast twin"]) == 0
    assert [p.name for p in (tmp_path / "one").iterdir() if p.is_dir()] == ["methods-fast_twin"]
    assert main(["compare", str(path), "--out", str(tmp_path / "bad"), "--method", "fats"]) == 2
    assert "did you mean 'fast'" in capsys.readouterr().err
    for bad in ("loss=", "grad_norm_sq=abc", "a b=1"):
        assert main(["compare", str(path), "--out", str(tmp_path / "bad"), "--target",
                     bad]) == 2
        assert "--target" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_tune_only_the_named_methods_and_report_the_picks_of_each_metric(tmp_path, capsys):
    path = tmp_path / "methods.toml"
    path.write_text(METHODS)
    assert main(["tune", str(path), "--grid", "rule.lr=0.001,0.2", "--out", str(tmp_path / "t"),
                 "--quiet", "--jobs", "1", "--method", "fast", "--metric",
                 "grad_norm_sq,loss"]) == 0
    out = capsys.readouterr().out
    assert "fast rule.lr=0.2: completed, final grad_norm_sq" in out and ", loss " in out
    assert "sync rule.lr" not in out  # not tuned
    assert "rule.lr by grad_norm_sq" in out and "rule.lr by loss" in out
    text = (tmp_path / "t" / "tuned.toml").read_text()
    assert text.startswith("# tuned by: asyncopt tune ") and "--method 'fast'" in text
    by_label = {m["label"]: m for m in tomllib.loads(text)["methods"]}
    assert by_label["fast"]["rule"]["lr"] == 0.2
    assert "rule" not in by_label["sync"]  # copied unchanged
    assert main(["tune", str(path), "--grid", "rule.lr=0.1", "--out", str(tmp_path / "u"),
                 "--method", "fsat"]) == 2
    assert "did you mean 'fast'" in capsys.readouterr().err
    assert main(["tune", str(path), "--grid", "rule.lr=0.1", "--out", str(tmp_path / "u"),
                 "--metric", "loss,"]) == 2
    assert "--metric" in capsys.readouterr().err
    assert not (tmp_path / "u").exists()
