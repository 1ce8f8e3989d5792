"""The command line's arguments: every command and option of ``asyncopt``, with its help.

:mod:`asyncopt.cli` runs what they ask; this module imports nothing heavy, so ``--help`` and
``--version`` answer without torch. A command's ``command`` default is its name in
``cli.COMMANDS``.
"""

from __future__ import annotations

import argparse

from asyncopt import __version__

DESCRIPTION = ("Asynchronous parallel and distributed stochastic optimization with PyTorch: run "
               "experiments in the simulator, on worker processes or on Ray, compare and plot "
               "them.")
EPILOG = ("CONFIG is a TOML experiment file or the name of a ready config (asyncopt configs "
          "lists them).")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="asyncopt", description=DESCRIPTION, epilog=EPILOG)
    root.add_argument("--version", action="version", version=f"asyncopt {__version__}")
    commands = root.add_subparsers(required=True, metavar="COMMAND")
    p = commands.add_parser("run", help="run one experiment", description="Run one experiment "
                            "and print its summary; its run directory holds the history, the "
                            "resolved config and the figures.", epilog=EPILOG)
    p.add_argument("config", nargs="?", metavar="CONFIG",
                   help="a TOML experiment file or a ready config's name (e.g. quickstart)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue RUN_DIR from its checkpoint.pt (in RUN_DIR-resumed)")
    _set(p)
    p.add_argument("--out", metavar="DIR", help="parent directory of the run directory "
                   "(output.dir, default runs)")
    p.add_argument("--method", metavar="LABEL",
                   help="the [[methods]] entry to run, by label (files with several methods)")
    _quiet(p)
    _no_plot(p, "no figures (run 'asyncopt plot RUN_DIR' later)")
    p.set_defaults(command="run")
    t = commands.add_parser("tune", help="pick each method's value of one key on one seed",
                            description="Run each method of CONFIG once per grid value and "
                            "write tuned.toml with each method's best value.")
    t.add_argument("config", metavar="CONFIG", help="a TOML file or a ready config's name")
    t.add_argument("--grid", required=True, metavar="KEY=V1,V2,...",
                   help="the key and its values, e.g. rule.lr=0.001,0.01,0.1")
    _set(t)
    t.add_argument("--seed", type=int, default=0, help="the seed of every run (default 0)")
    t.add_argument("--metric", default="loss", metavar="METRIC[,METRIC...]",
                   help="minimized final metric (default: loss); with several, the first picks "
                   "the values in tuned.toml and each one's picks are printed")
    t.add_argument("--method", action="append", default=[], metavar="LABEL",
                   help="tune only this [[methods]] entry (repeatable; default: every one); "
                   "the others are copied to tuned.toml unchanged")
    t.add_argument("--out", default="runs/tune", metavar="DIR",
                   help="where tuned.toml goes (default runs/tune)")
    _quiet(t)
    _jobs(t)
    t.set_defaults(command="tune")
    c = commands.add_parser("compare", help="several configs or variations over seeds, one plot",
                            description="Run configs (or load run directories) over seeds and "
                            "compare them: median and IQR curves, a table, time to a target.")
    c.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="TOML files or ready configs to run, or run directories to load")
    c.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2",
                   help="run every value of KEY (repeatable: every combination)")
    _set(c)
    c.add_argument("--seeds", type=int, default=3, help="seeds per variation (default 3)")
    c.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    c.add_argument("--out", default="runs/compare", metavar="DIR",
                   help="output directory (default runs/compare)")
    c.add_argument("--x", choices=("now", "version"), default="now",
                   help="x axis: the runtime's clock or the server version (default now)")
    c.add_argument("--target", action="append", default=[], metavar="[METRIC=]VALUE",
                   help="time to reach VALUE of METRIC (default metric: loss), e.g. 0.5 or "
                   "grad_norm_sq=0.01; repeatable: one table per target")
    c.add_argument("--method", action="append", default=[], metavar="LABEL",
                   help="run only this [[methods]] entry of the configs (repeatable; default: "
                   "every one)")
    _quiet(c)
    _no_plot(c, "no compare.png (the table only)")
    _jobs(c)
    c.set_defaults(command="compare")
    w = commands.add_parser("sweep", help="a final metric against one key, over seeds",
                            description="A final metric against one key, over seeds: CSV, "
                            "table and figure.")
    w.add_argument("config", metavar="CONFIG", help="a TOML file or a ready config's name")
    w.add_argument("--x", required=True, metavar="KEY=V1,V2|START:STOP:STEP",
                   help="the swept key and its values (a list or an integer range)")
    w.add_argument("--series", metavar="KEY=V1,V2", help="one curve per value (and method)")
    _set(w)
    w.add_argument("--seeds", type=int, default=3, help="seeds per point (default 3)")
    w.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    w.add_argument("--metric", default="loss", help="the final metric (default loss)")
    w.add_argument("--mode", choices=("min", "max"), default="min", help="best = min or max")
    w.add_argument("--failed", type=float, default=float("nan"),
                   help="value of a run that did not complete (default NaN: left out)")
    w.add_argument("--x-axis", choices=("value", "delay"), default="value",
                   help="plot against the swept value or the mean delay measured")
    w.add_argument("--title", help="the figure's title (default: the config's name)")
    w.add_argument("--out", default="runs/sweep", metavar="DIR",
                   help="output directory (default runs/sweep)")
    _quiet(w)
    _jobs(w)
    w.set_defaults(command="sweep")
    q = commands.add_parser("plot", help="figures of a recorded run",
                            description="Draw the figures of a recorded run from its files.")
    q.add_argument("run_dir", metavar="RUN_DIR", help="a run directory")
    q.add_argument("--out", metavar="DIR", help="where the figures go (default RUN_DIR)")
    q.set_defaults(command="plot")
    k = commands.add_parser("calibrate", help="fit the simulator's speed model to a real run",
                            description="Fit the simulator's speed model (base time, noise, "
                            "stragglers, level changes, latency, server time) to each worker "
                            "of a real run; print the fit with its Kolmogorov-Smirnov distance, "
                            "write a [speed] table (speed.toml) and calibration.png.")
    k.add_argument("trace", metavar="RUN_DIR", nargs="?",
                   help="a run directory, or a CSV file with worker, compute_time[, latency]")
    k.add_argument("--probe", metavar="CONFIG",
                   help="instead: time CONFIG's server per arrival on this machine (its "
                   "protocol, rule and model) and print speed.server_time")
    _set(k)
    k.add_argument("--out", metavar="DIR",
                   help="where speed.toml and calibration.png go (default: RUN_DIR, or the "
                   "CSV file's directory)")
    _no_plot(k, "no calibration.png")
    k.set_defaults(command="calibrate")
    a = commands.add_parser("advise", help="which method reaches a loss first on your machines",
                            description="Tune each method's step size in the simulator with "
                            "your machines' speeds, predict its time to a loss target over "
                            "seeds, and rank the methods (asyncopt.advise).")
    a.add_argument("config", metavar="CONFIG", help="a TOML file or a ready config's name")
    a.add_argument("--speed", required=True, metavar="FROM",
                   help="a real run's directory (its measured times), a CSV trace, or a TOML "
                   "file with a [speed] table (asyncopt calibrate's speed.toml)")
    a.add_argument("--methods", metavar="P1,P2", help="the protocols to rank (default: those "
                   "for homogeneous or heterogeneous data, as the config's data are)")
    a.add_argument("--grid", metavar="LR1,LR2", help="step sizes to tune over (default: the "
                   "config's rule.lr times 0.1, 0.3, 1, 3, 10)")
    a.add_argument("--seeds", type=int, default=3, help="seeds per prediction (default 3)")
    a.add_argument("--target", type=float, help="the training-loss target (default: the median "
                   "of the methods' median final losses)")
    _set(a)
    a.add_argument("--run", action="store_true", help="then run the winner on the real runtime "
                   "its speeds were measured on (the run directory's), or the config's")
    a.add_argument("--out", default="runs", metavar="DIR",
                   help="where --run writes its run (default runs)")
    _quiet(a)
    _jobs(a)
    a.set_defaults(command="advise")
    f = commands.add_parser("configs", help="list the ready configs, or copy one out",
                            description="List the ready experiment files that ship with "
                            "asyncopt, or copy one out for editing (never overwriting).")
    f.add_argument("name", nargs="?", metavar="NAME", help="the config to copy out")
    f.add_argument("--out", metavar="PATH",
                   help="the file or directory to copy it to (default: ./NAME.toml)")
    f.set_defaults(command="configs")
    return root


def _set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config entry, e.g. rule.lr=0.01 (repeatable; the "
                        "value is read as TOML)")


def _quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar, and no run events (a worker lost or restarted, "
                        "a checkpoint written) on stderr")


def _jobs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=None, metavar="N",
                        help="simulated runs at once, each in its own process (default: the "
                        "cores); runs on processes or ray go one at a time")


def _no_plot(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--no-plot", action="store_true", help=what)
