# PYTHON_ARGCOMPLETE_OK  (argcomplete's global completion looks for this in the first 1 KiB)
"""The command line: ``asyncopt run | compare | tune | sweep | plot | configs | calibrate |
advise``.

    asyncopt run quickstart --set rule.lr=0.01          # a ready config by name, or a TOML file
    asyncopt configs                                    # the ready configs; copy one out:
    asyncopt configs quickstart --out my.toml
    asyncopt run configs/quickstart.toml --set rule.lr=0.01
    asyncopt run --resume runs/<run> --set budget.steps=2000
    asyncopt compare configs/quickstart.toml --vary protocol.name=asgd,minibatch --seeds 3
    asyncopt tune configs/ringleader.toml --grid rule.lr=0.001,0.01,0.1
    asyncopt sweep configs/pca_delay.toml --x workers=1:202:10 --seeds 5 --x-axis delay
    asyncopt plot runs/<run>
    asyncopt calibrate runs/<real run>                  # its speeds as a [speed] table
    asyncopt advise configs/quickstart.toml --speed runs/<real run>   # which method wins there

``compare``, ``tune`` and ``sweep`` (:mod:`asyncopt.studies`) run their simulated runs
``--jobs`` at a time in worker processes (default: the cores; :mod:`asyncopt.jobs`), with the
results and the printed lines in the same order as one run after the other.

Exit codes: 0 the run completed; 1 it diverged, stalled or failed; 2 bad input; 128 + N when
a signal N stopped it (130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP), in a run or outside one.

torch (and Ray) are imported by the commands that need them, not by the parser: ``--help``
and ``--version`` answer at once.

Shell completion (commands, options, file names) comes from argcomplete where it is installed
(``pip install "asyncopt[completion]"``, then ``eval "$(register-python-argcomplete
asyncopt)"``): the shell runs ``asyncopt`` with argcomplete's environment variables, and
:func:`main` hands the parser to ``argcomplete.autocomplete``, which prints the completions and
exits before anything runs. argcomplete is imported only then, so other commands do not pay for
it.

Run events (a worker lost or restarted, a checkpoint written: the ``asyncopt`` logger) are
printed on stderr from INFO up, above the progress bar; ``--quiet`` silences them too.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asyncopt import shipped
from asyncopt.arguments import parser
from asyncopt.errors import ConfigError, check
from asyncopt.studies import cmd_compare, cmd_sweep, cmd_tune, jobs_of

if TYPE_CHECKING:
    from asyncopt.api import Result


def main(argv: Sequence[str] | None = None) -> int:
    root = parser()
    if "_ARGCOMPLETE" in os.environ:  # the shell asks for completions (argcomplete's protocol)
        _complete(root)
    args = root.parse_args(argv)
    try:
        with run_events(quiet=getattr(args, "quiet", False)):
            return COMMANDS[args.command](args)
    except (ConfigError, FileNotFoundError) as error:
        print(f"asyncopt: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:  # outside a run (a run records its own interruption)
        print("asyncopt: interrupted", file=sys.stderr)
        return 128 + getattr(error, "signum", signal.SIGINT)


def _complete(root: argparse.ArgumentParser) -> None:
    """Answer the shell's completion request and exit, if argcomplete is installed (without
    it, the request is ignored and the command line parsed as usual)."""
    try:
        import argcomplete
    except ImportError:
        return
    argcomplete.autocomplete(root)


class _Stderr(logging.Handler):
    """Log lines on stderr through tqdm, so that they never cut through a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


@contextmanager
def run_events(quiet: bool) -> Iterator[None]:
    """While a command runs: the ``asyncopt`` logger's INFO and above on stderr, or, quiet,
    nowhere (not even Python's last-resort output of warnings)."""
    logger = logging.getLogger("asyncopt")
    handler: logging.Handler = logging.NullHandler() if quiet else _Stderr()
    handler.setFormatter(logging.Formatter("asyncopt: %(levelname)s: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def cmd_run(args: argparse.Namespace) -> int:
    from asyncopt import config as configuration
    from asyncopt.api import resume_run, run

    overrides = list(args.set)
    if args.resume:
        check(args.config is None and not args.out and not args.method, "--resume",
              args.resume, "a run directory alone (with --set overrides, e.g. a larger "
              "budget.steps); the config is the run's own config.toml")
        result = resume_run(args.resume, overrides=overrides, progress=not args.quiet)
    else:
        check(args.config is not None, "config", None, "a TOML file (or --resume RUN_DIR)")
        if args.out:
            overrides.append(f'output.dir="{args.out}"')
        resolved = configuration.load(args.config, overrides, method=args.method)
        result = run(resolved, progress=not args.quiet)
    print(format_summary(result))
    if result.run_dir is not None and not args.no_plot:
        from asyncopt.plots import plot_run

        figures = plot_run(result.history, result.run_dir)
        print("figures:  " + ", ".join(str(f) for f in figures))
    return exit_code(result.summary)


def exit_code(summary: dict[str, Any]) -> int:
    """0 for a completed run, 128 + the signal's number for one a signal stopped, else 1."""
    if summary["status"] == "completed":
        return 0
    if summary["status"] == "interrupted":
        return 128 + signal.Signals[summary.get("signal", "SIGINT")]
    return 1


def cmd_plot(args: argparse.Namespace) -> int:
    from asyncopt.plots import plot_run
    from asyncopt.record import load

    history = load(args.run_dir)
    figures = plot_run(history, Path(args.out or args.run_dir))
    print("figures:  " + ", ".join(str(f) for f in figures))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Fit the speed model to a run (:mod:`asyncopt.calibrate`); write speed.toml."""
    from asyncopt.calibrate import calibrate, dumps_speed, format_fits
    from asyncopt.runtimes.sim.speed_spec import resolve_speed_spec

    check((args.trace is None) != (args.probe is None), "calibrate", args.trace,
          "a run directory (or CSV trace), or --probe CONFIG, one of the two")
    if args.probe is not None:
        from asyncopt.probe import probe_server

        seconds = probe_server(args.probe, args.set)
        print(f"server:   {seconds['mean']:.4g} s per arrival (median {seconds['median']:.4g}; "
              f"arrivals that step {seconds['step']:.4g}, others {seconds['no_step']:.4g}; "
              f"{seconds['arrivals']:.0f} arrivals)")
        print(f"[speed]\nserver_time = {seconds['mean']!r}")
        return 0
    source = Path(args.trace)
    out = Path(args.out) if args.out else source if source.is_dir() else source.parent
    target = out / "speed.toml"
    check(not target.exists(), "--out", str(out), "a directory without speed.toml (never "
          "overwritten)")
    calibration = calibrate(source)
    resolve_speed_spec(calibration.speed)  # a table the simulator takes, or a bug here
    print(format_fits(calibration))
    out.mkdir(parents=True, exist_ok=True)
    target.write_text(dumps_speed(calibration, f"asyncopt calibrate {args.trace}"))
    print(f"speed:    {target}  (its [speed] table goes into a config; with it, asyncopt run "
          f"predicts this machine)")
    if not args.no_plot:
        from asyncopt.calibrate_plot import plot_calibration

        print(f"figure:   {plot_calibration(calibration, out / 'calibration.png')}")
    return 0


def cmd_configs(args: argparse.Namespace) -> int:
    """List the ready configs, or copy one out for editing."""
    if args.name is None:
        names = shipped.names()
        width = max(map(len, names))
        for name in names:
            print(f"{name:{width}s}  {shipped.summary(name)}")
        print(f"\n{len(names)} ready configs in {shipped.directory()}; run one by name "
              f"(asyncopt run quickstart), or copy one out: asyncopt configs NAME --out FILE")
        return 0
    target = shipped.copy_out(args.name, Path(args.out or "."))
    print(f"copied:   {target}  (asyncopt run {target})")
    return 0


def cmd_advise(args: argparse.Namespace) -> int:
    """Rank methods by predicted time to a loss target (:mod:`asyncopt.advise`); ``--run``."""
    from asyncopt import advise
    from asyncopt.config import parse_value

    methods = args.methods.split(",") if args.methods else ()
    grid = [float(parse_value(v)) for v in args.grid.split(",")] if args.grid else ()
    predictions, target = advise.advise(
        args.config, advise.speed_from(args.speed), methods=methods, grid=grid,
        seeds=args.seeds, target=args.target, overrides=args.set, jobs=jobs_of(args),
        progress=not args.quiet)
    print(advise.format_advice(predictions, target))
    if not args.run:
        return 0
    from asyncopt.api import run

    resolved = advise.winner_config(args.config, args.speed, predictions[0], args.set)
    resolved["output"] = {**resolved["output"], "dir": args.out}
    print(f"running {predictions[0].method} (rule.lr = {predictions[0].lr:.4g}) on "
          f"{resolved['runtime']}")
    result = run(resolved, progress=not args.quiet)
    print(format_summary(result))
    return exit_code(result.summary)


def format_summary(result: Result) -> str:
    """The printed summary of one run."""
    s = result.summary
    final = s.get("final", {})
    lines = [
        f"status:   {s['status']} ({s['reason']})",
        f"steps:    {s['version']} server steps from {s['arrivals']} arrivals "
        f"({', '.join(f'{k} {v}' for k, v in s['actions'].items() if v)})",
        f"time:     {s['now']:.6g} s on the runtime's clock, {s['wall_seconds']:.2f} s wall "
        f"({s['arrivals_per_second']:.0f} arrivals/s)",
        f"delay:    mean {s['mean_delay']:.2f}, max {s['max_delay']}",
        "final:    " + ", ".join(f"{k} {v:.5g}" for k, v in final.items()),
    ]
    if s.get("final_note"):
        lines.append(f"          ({s['final_note']})")
    if result.run_dir is not None:
        lines.append(f"run dir:  {result.run_dir}")
    return "\n".join(lines)


COMMANDS = {"run": cmd_run, "tune": cmd_tune, "compare": cmd_compare, "sweep": cmd_sweep,
            "plot": cmd_plot, "configs": cmd_configs, "calibrate": cmd_calibrate,
            "advise": cmd_advise}
"""The command names of :func:`asyncopt.arguments.parser` -> what runs them."""


if __name__ == "__main__":
    sys.exit(main())
