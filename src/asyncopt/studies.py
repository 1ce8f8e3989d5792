"""The commands that run many simulated runs: ``asyncopt compare``, ``tune`` and ``sweep``.

Each builds its runs' configs first (every one checked before any starts), runs them
``--jobs`` at a time (:mod:`asyncopt.jobs`), and writes one table (and a figure): ``compare``
median curves and times to targets over seeds, ``tune`` each method's best value of one key,
``sweep`` a final metric against one key (:mod:`asyncopt.sweep`). :mod:`asyncopt.cli` parses
the command line and dispatches here.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asyncopt.errors import check, check_choice

if TYPE_CHECKING:
    from asyncopt.record import History


def cmd_compare(args: argparse.Namespace) -> int:
    from asyncopt import config as configuration
    from asyncopt.aggregate import compare_table, format_table
    from asyncopt.jobs import Task, run_all
    from asyncopt.record import load

    out = Path(args.out)
    jobs = jobs_of(args)
    targets = [_target(text) for text in args.target] or [("loss", None)]
    groups: dict[str, list[History]] = {}
    planned: list[tuple[str, int, Task]] = []  # every run is checked before any starts
    for source in args.inputs:
        if Path(source).is_dir():
            history = load(source)
            groups.setdefault(_label(history.config, source), []).append(history)
            continue
        methods = configuration.methods(configuration.read(source))
        for label in args.method:
            check_choice("--method", label, [m for m, _ in methods])
        for method, raw in methods:
            if args.method and method not in args.method:
                continue
            for variation, seed in itertools.product(_variations(args.vary), range(args.seeds)):
                overrides = [*args.set, *variation, f"seed={args.seed + seed}"]
                resolved = configuration.resolve(configuration.apply_overrides(raw, overrides))
                name = " ".join([method, *variation]).strip() or _label(resolved, source)
                resolved["output"]["name"] = resolved["output"]["name"] or name.replace("/", "_")
                run_dir = out / _slug(Path(source).stem + "-" + name) / f"seed{args.seed + seed}"
                check(not run_dir.exists() and all(run_dir != t.run_dir for *_, t in planned),
                      "--out", str(out),
                      f"a directory without {run_dir.relative_to(out)} (never overwritten)")
                planned.append((name, args.seed + seed, Task(resolved, run_dir)))
    outcomes = run_all([task for *_, task in planned], jobs, progress=not args.quiet)
    for (name, seed, _), outcome in zip(planned, outcomes, strict=True):
        print(f"{name:40s} seed {seed}: {outcome.summary['status']}, "
              f"final loss {outcome.summary['final'].get('loss', float('nan')):.4g}")
        assert outcome.history is not None
        groups.setdefault(name, []).append(outcome.history)
    out.mkdir(parents=True, exist_ok=True)
    tables = [format_table(compare_table(groups, metric=metric, target=target, x=args.x,
                                         mode="max" if metric == "accuracy" else "min"))
              for metric, target in targets]
    (out / "compare.md").write_text("\n\n".join(tables) + "\n")
    print("\n\n".join(tables))
    if not args.no_plot:
        from asyncopt.plots import plot_compare

        print(f"figure:   {plot_compare(groups, out / 'compare.png', x=args.x)}")
    print(f"table:    {out / 'compare.md'}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """Each method's best value of one key (e.g. the step size) on one seed, by final metric."""
    from asyncopt import config as configuration
    from asyncopt.aggregate import format_table
    from asyncopt.jobs import Task, run_all

    key, sep, values = args.grid.partition("=")
    check(bool(sep) and bool(values), "--grid", args.grid, "KEY=V1,V2,... e.g. rule.lr=0.1,0.01")
    grid = [configuration.parse_value(v) for v in values.split(",")]
    metrics = args.metric.split(",")
    check(all(metrics), "--metric", args.metric, "metric names separated by commas")
    raw = configuration.read(args.config)
    out = Path(args.out)
    check(not (out / "tuned.toml").exists(), "--out", str(out), "a directory without tuned.toml")
    jobs = jobs_of(args)
    methods = configuration.methods(raw)
    labels = [label for label, _ in methods]
    for label in args.method:
        check_choice("--method", label, labels)
    methods = [(m, r) for m, r in methods if not args.method or m in args.method]
    tasks = []
    for _, method_raw in methods:
        for value in grid:
            resolved = configuration.resolve(configuration.apply_overrides(
                method_raw, [*args.set, f"seed={args.seed}"]))
            configuration.set_in_method(resolved, "", key, value)
            tasks.append(Task(configuration.resolve(resolved)))
    outcomes = run_all(tasks, jobs, progress=not args.quiet)
    rows = []
    for method, method_raw in methods:
        scores: dict[str, dict[Any, float]] = {metric: {} for metric in metrics}
        for value in grid:
            summary, finals, _ = next(outcomes)
            for metric in metrics:
                final = finals.get(metric, float("nan"))
                scores[metric][value] = final if summary["status"] == "completed" else float("inf")
            print(f"{method or 'config'} {key}={value}: {summary['status']}, final "
                  + ", ".join(f"{m} {finals.get(m, float('nan')):.4g}" for m in metrics))
        picks = {m: min(grid, key=lambda v, m=m: scores[m][v]) for m in metrics}
        best = picks[metrics[0]]
        configuration.set_in_method(raw, method, key, best)
        rows.append({"method": method or _label(configuration.resolve(method_raw), args.config),
                     **{f"{key} by {m}": picks[m] for m in metrics},
                     f"final {metrics[0]}": scores[metrics[0]][best],
                     **{f"{value}": scores[metrics[0]][value] for value in grid}})
    out.mkdir(parents=True, exist_ok=True)
    import tomli_w

    command = " ".join(["asyncopt tune", args.config, "--grid", args.grid, "--seed",
                        str(args.seed), "--metric", args.metric,
                        *(f"--method '{m}'" for m in args.method),
                        *(f"--set {s}" for s in args.set)])
    (out / "tuned.toml").write_text(f"# tuned by: {command}\n" + tomli_w.dumps(raw))
    print(format_table(rows))
    print(f"tuned config: {out / 'tuned.toml'}  (run them all: asyncopt compare "
          f"{out / 'tuned.toml'})")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """A final metric against one key (``asyncopt.sweep``): CSV, table and figure."""
    from asyncopt import config as configuration
    from asyncopt import sweep

    out = Path(args.out)
    check(not (out / "sweep.csv").exists(), "--out", str(out), "a directory without sweep.csv")
    x = sweep.parse_axis(args.x)
    series = sweep.parse_axis(args.series) if args.series else None

    def report(p: sweep.Point) -> None:
        if not args.quiet:
            print(f"{p.label:30s} {x[0]}={p.x} seed {p.seed}: {p.status}, final {args.metric} "
                  f"{p.final.get(args.metric, float('nan')):.4g}, max delay {p.max_delay:g}")

    points = sweep.run_sweep(configuration.read(args.config), x, series, seeds=args.seeds,
                             first_seed=args.seed, overrides=args.set, report=report,
                             jobs=jobs_of(args))
    *paths, text = sweep.write_outputs(points, out, args.metric, mode=args.mode,
                                       failed=args.failed, x_label=x[0], x_axis=args.x_axis,
                                       title=args.title or Path(args.config).stem)
    print(text)
    print("written:  " + ", ".join(str(p) for p in paths))
    return 0


def jobs_of(args: argparse.Namespace) -> int:
    """``--jobs``, checked (default: the cores this process may use)."""
    from asyncopt.jobs import check_jobs, default_jobs

    return check_jobs(default_jobs() if args.jobs is None else args.jobs)


def _variations(vary: Sequence[str]) -> list[list[str]]:
    """``["rule.lr=0.1,0.01", "workers=2,4"]`` -> every combination as override lists."""
    axes = []
    for item in vary:
        key, sep, values = item.partition("=")
        check(bool(sep) and bool(values), "--vary", item, "KEY=V1,V2,... e.g. rule.lr=0.1,0.01")
        axes.append([f"{key}={value}" for value in values.split(",")])
    return [list(combo) for combo in itertools.product(*axes)] if axes else [[]]


def _label(resolved: dict[str, Any], source: str) -> str:
    """A run's name in a comparison: the name it was recorded under (``output.name``, which
    ``compare`` sets to the method's label), else protocol + rule."""
    from asyncopt import config as configuration

    if not resolved:
        return Path(source).name
    return resolved.get("output", {}).get("name") or configuration.label(resolved)


def _target(text: str) -> tuple[str, float]:
    """``--target``: ``0.5`` (the loss) or ``grad_norm_sq=0.01`` (accuracy: reached from
    below)."""
    from asyncopt import config as configuration

    metric, sep, value = text.rpartition("=")
    number = configuration.parse_value(value)
    check(isinstance(number, int | float) and not isinstance(number, bool)
          and (metric.isidentifier() or not sep), "--target", text,
          "a number (a loss) or METRIC=NUMBER, e.g. grad_norm_sq=0.01")
    return (metric or "loss"), float(number)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in text)
