"""The Python API: ``run`` a configuration, or ``train`` with objects you built yourself.

    import asyncopt
    result = asyncopt.run("configs/quickstart.toml", overrides=["rule.lr=0.01"])
    print(result.summary["final"])

``run`` resolves a configuration (a TOML path or a dict) into a problem, a rule, a protocol and a
speed model, then calls ``train``; ``train`` is the one place where a run is assembled, executed
and recorded, whatever built its parts.
"""

from __future__ import annotations

import math
import signal
import sys
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from asyncopt import config as configuration
from asyncopt import tree
from asyncopt.callbacks import Begin, Callbacks
from asyncopt.checkpoint import save_model
from asyncopt.config import Budget, Evaluation
from asyncopt.errors import ConfigError, check, check_seed
from asyncopt.problems.base import Problem
from asyncopt.problems.registry import make_problem
from asyncopt.problems.supervised import LossFn, Metric
from asyncopt.problems.user import Model, PartitionSpec, as_problem
from asyncopt.protocols.base import Protocol, Server
from asyncopt.protocols.registry import make_protocol
from asyncopt.record import History, Recorder, write_atomic
from asyncopt.rules.base import Rule, as_rule
from asyncopt.rules.registry import make_rule
from asyncopt.runtimes import signals
from asyncopt.runtimes.coordinator import Coordinator
from asyncopt.runtimes.preflight import preflight
from asyncopt.runtimes.registry import make_runtime
from asyncopt.runtimes.sim.speed import make_speed_model
from asyncopt.tree import Params


@dataclass
class Result:
    """What a run gives back: its history, the trained parameters (and module), the summary,
    where it lies."""

    history: History
    params: Params
    summary: dict[str, Any]
    run_dir: Path | None
    model: nn.Module | None = None  # the trained module (evaluation mode), when there is one


def run(config: str | Path | Mapping[str, Any], *, overrides: Iterable[str] = (),
        save: bool = True, run_dir: str | Path | None = None, progress: bool = False,
        resume: tuple[dict[str, Any], History] | None = None,
        callbacks: Iterable[Any] = ()) -> Result:
    """Run one experiment from a TOML file or a dict (validated and resolved first);
    ``resume`` (see :func:`resume_run`) continues from a checkpoint; ``callbacks`` as for
    :func:`train` (``[output] tensorboard = true`` adds :class:`asyncopt.TensorBoard`)."""
    if isinstance(config, Mapping):
        resolved = configuration.resolve(configuration.apply_overrides(config, overrides))
    else:
        resolved = configuration.load(config, overrides)
    seed, workers = resolved["seed"], resolved["workers"]
    problem = make_problem(resolved["problem"], workers, seed)
    rule = make_rule(resolved["rule"], workers)
    speed = make_speed_model(resolved["speed"], workers, seed, problem=resolved["problem"])
    callbacks = [*callbacks, *_configured_callbacks(resolved, save)]
    # the run directory is made by train once every check passed: a refusal leaves no trace
    return train(problem, rule, resolved["protocol"], speed=speed,
                 runtime=resolved["runtime"], runtime_options=resolved["runtime_options"],
                 budget=configuration.budget_of(resolved),
                 evaluation=configuration.evaluation_of(resolved), seed=seed,
                 run_dir=run_dir if save else None, progress=progress, config=resolved,
                 resume=resume, callbacks=callbacks, _new_run_dir=save and run_dir is None)


def resume_run(run_dir: str | Path, *, overrides: Iterable[str] = (),
               progress: bool = False) -> Result:
    """Continue the run in ``run_dir`` from its checkpoint (``config.toml`` with ``overrides``,
    e.g. a larger ``budget.steps``), in a new directory beside it: ``run_dir`` is only read."""
    from asyncopt import resume

    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: it has no config.toml")
    state, history = resume.read(run_dir)
    return run(configuration.load(run_dir / "config.toml", overrides),
               run_dir=resume.resumed_dir(run_dir), progress=progress, resume=(state, history))


def train(problem: Problem | Model, rule: Rule | Mapping[str, Any],
          protocol: str | Mapping[str, Any] = "asgd", *, speed: Any = None,
          budget: Budget | Mapping[str, Any], evaluation: Evaluation | Mapping[str, Any] | None
          = None, seed: int = 0, run_dir: str | Path | None = None, progress: bool | None = None,
          config: Mapping[str, Any] | None = None, runtime: str = "sim",
          runtime_options: Mapping[str, Any] | None = None, loss: LossFn | None = None,
          data: Any = None, eval_data: Any = None, metrics: Mapping[str, Metric] | None = None,
          workers: int | None = None, batch_size: int | None = None,
          partition: PartitionSpec | None = None,
          resume: str | Path | tuple[dict[str, Any], History] | None = None,
          callbacks: Iterable[Any] = (), _new_run_dir: bool = False) -> Result:
    """Train ``problem`` with ``rule`` under ``protocol`` in ``runtime`` (default: simulator).

    ``problem`` is a :class:`Problem`, or a model (an ``nn.Module`` or a factory of one) trained
    on ``loss``, ``data``, ``workers`` and the other problem keywords of
    :func:`asyncopt.problems.user_problem`. ``rule`` is a :class:`Rule` or a spec such as
    ``{"name": "adam", "lr": 1e-3}``. ``speed`` is a speed model or a ``[speed]`` spec (default:
    every worker takes 1 s); ``budget`` a :class:`Budget` or its fields; ``evaluation`` an
    :class:`Evaluation` or its fields. ``progress`` shows a bar (default: when stderr is a
    terminal). A Ctrl-C, SIGTERM or SIGHUP stops the run cleanly (:mod:`asyncopt.runtimes.signals`):
    the history up to that point is written and returned, with ``summary["status"] ==
    "interrupted"`` and ``summary["signal"]`` its name. The trained model comes back as
    ``result.model`` and, with a ``run_dir``, as ``run_dir/model.pt``.

    ``resume`` continues a checkpointed run (``runtime_options.checkpoint_every``): the directory
    of a run made by this same call, whose checkpoint and history are read (the directory is
    never written; give a new ``run_dir``), or a checkpoint and its history as
    :func:`asyncopt.resume.read` returns them. A run from a configuration resumes with
    :func:`resume_run` instead, which rebuilds the objects from its ``config.toml``.

    ``callbacks`` (:mod:`asyncopt.callbacks`) hear of the run's start, each evaluation, each
    batch of arrivals and its end, in this process: e.g. ``[asyncopt.TensorBoard()]``.
    ``_new_run_dir`` (for :func:`run`): make a fresh directory under ``config``'s
    ``output.dir`` once every check has passed.
    """
    seed = check_seed("seed", seed)
    if isinstance(resume, str | Path):
        resume = _resumable(Path(resume), run_dir)
    hooks = Callbacks(callbacks)
    problem = as_problem(problem, seed=seed, loss=loss, data=data, eval_data=eval_data,
                         metrics=metrics, workers=workers, batch_size=batch_size,
                         partition=partition)
    if isinstance(rule, str):  # a name, as a protocol may be
        rule = {"name": rule}
    rule = make_rule(rule, problem.num_workers) if isinstance(rule, Mapping) else as_rule(rule)
    evaluation = configuration.evaluation_from(evaluation)
    if progress is None:
        progress = sys.stderr.isatty()
    num_workers = problem.num_workers
    budget = configuration.budget_from(budget)
    if speed is None or isinstance(speed, Mapping):
        speed = make_speed_model(speed or {}, num_workers, seed)
    check(callable(getattr(speed, "compute_time", None)), "speed", speed,
          "a speed model or a [speed] table as a dict, e.g. {'profile': 'sqrt'}")
    check(run_dir is None or isinstance(run_dir, str | Path), "run_dir", run_dir,
          "a directory path (a str or a pathlib.Path), or None")
    generator = torch.Generator().manual_seed(seed)
    server = Server(problem.init_params(generator), rule)
    spec = {"name": protocol} if isinstance(protocol, str) else protocol
    check(isinstance(spec, Mapping), "protocol", protocol, "a protocol's name or a dict with "
          "its name and options, e.g. {'name': 'minibatch', 'wait_for': 4}")
    driver: Protocol = make_protocol(spec, server, num_workers)
    engine = make_runtime(runtime, problem, speed, seed, runtime_options)
    if driver.needs_model_for and not engine.asks_model_for:
        raise ConfigError("runtime", runtime, f"a runtime that starts each worker at the model "
                          f"the protocol hands out (protocol {spec['name']!r} with these "
                          f"options needs it): 'sim', or 'ray' with one server")
    preflight(engine, driver, problem)  # the mode, the machine's CPUs and memory
    if resume is not None:
        from asyncopt import resume as resuming

        # before anything is written; block servers: the same number as the checkpoint's
        resuming.check(resume[0], driver, getattr(engine, "num_servers", 1),
                       getattr(engine, "cut", "tensors"))
    if _new_run_dir and config is not None:
        run_dir = new_run_dir(config)
    run_path = Path(run_dir) if run_dir is not None else None
    bar = _Progress(budget) if progress else None
    recorder = Recorder(run_path)
    coordinator = Coordinator(problem, driver, recorder, budget, evaluation, progress=bar,
                              callbacks=hooks)
    if resume is not None:
        resuming.restore(coordinator, *resume)
    # from here on, whatever happens, the run directory ends with a summary; a signal (Ctrl-C,
    # SIGTERM, SIGHUP) ends the run as its budget would
    with signals.handled(lambda signum: coordinator.interrupt(signal.Signals(signum).name)):
        try:
            if run_path is not None and config is not None:
                write_atomic(run_path / "config.toml", configuration.dumps(config))
            hooks.begin(Begin(run_path, num_workers, dict(config) if config else None))
            engine.run(coordinator)
            summary = coordinator.finish()
        except KeyboardInterrupt as error:  # a signal where the run could not stop by itself
            coordinator.interrupt(getattr(error, "name", "SIGINT"))
            summary = coordinator.finish()
        except BaseException as error:
            coordinator.finish(status="failed", reason=f"{type(error).__name__}: {error}")
            raise
        finally:
            if bar is not None:
                bar.close()
    if summary["status"] == "diverged":
        warnings.warn(f"run diverged: {summary['reason']}", RuntimeWarning, stacklevel=2)
    history = recorder.history()
    history.config = dict(config or {})
    model = problem.to_module(server.params) if tree.all_finite(server.params) else None
    if model is not None and run_path is not None:
        save_model(model, run_path / "model.pt")
    return Result(history, server.params, summary, run_path, model)


def _configured_callbacks(resolved: Mapping[str, Any], save: bool) -> list[Any]:
    """The callbacks a configuration asks for: ``[output] tensorboard = true``."""
    if not resolved["output"]["tensorboard"]:
        return []
    if not save:
        raise ConfigError("output.tensorboard", True, "false in a run that is not saved (its "
                          "events go to RUN_DIR/tensorboard)")
    from asyncopt.tensorboard import TensorBoard

    try:
        return [TensorBoard()]
    except ImportError as error:
        raise ConfigError("output.tensorboard", True, f"false, or {error}") from error


def _resumable(path: Path, run_dir: str | Path | None) -> tuple[dict[str, Any], History]:
    """The checkpoint and history of ``path`` for ``train(..., resume=path)``; the run goes on
    elsewhere."""
    from asyncopt import resume

    if run_dir is not None and Path(run_dir).resolve() == path.resolve():
        raise ConfigError("run_dir", str(run_dir), f"a directory other than resume={str(path)!r}: "
                          f"a resumed run never writes into the run it continues")
    return resume.read(path)


def new_run_dir(resolved: Mapping[str, Any]) -> Path:
    """A fresh directory under ``output.dir``; an existing one is never reused or overwritten."""
    output = resolved["output"]
    name = output["name"] or (f"{resolved['problem']['name']}-{resolved['protocol']['name']}-"
                              f"{resolved['rule']['name']}-seed{resolved['seed']}-"
                              f"{datetime.now():%Y%m%d-%H%M%S}")
    base = Path(output["dir"]) / name
    path, suffix = base, 1
    while path.exists():
        path = base.with_name(f"{base.name}-{suffix}")
        suffix += 1
    try:
        path.mkdir(parents=True)
    except OSError as error:  # a file where a directory should be, no permission, ...
        raise ConfigError("output.dir", output["dir"], f"a directory where runs can be "
                          f"created ({path}: {error.strerror})") from error
    return path


class _Progress:
    """A tqdm bar over the budget's first limit, refreshed every 64 arrivals, with the version,
    the last evaluated loss and the mean delay of the gradients used so far."""

    def __init__(self, budget: Budget) -> None:
        from tqdm import tqdm

        if budget.steps is not None:
            self.unit, total = "steps", budget.steps
        elif budget.arrivals is not None:
            self.unit, total = "arrivals", budget.arrivals
        else:
            self.unit, total = "time", budget.time
        self.bar = tqdm(total=total, unit=self.unit if self.unit != "time" else "s",
                        dynamic_ncols=True, leave=False,
                        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} {unit} "
                                   "[{elapsed}<{remaining}{postfix}]")
        self._seen, self._delays, self._used = 0, 0, 0  # rows read, their used delays

    def update(self, coordinator: Coordinator) -> None:
        value = {"steps": coordinator.version, "arrivals": coordinator.arrivals,
                 "time": coordinator.now}[self.unit]
        self.bar.n = min(value, self.bar.total)
        rows = coordinator.recorder.rows
        for row in rows[self._seen:]:
            if row[5] in ("step", "buffer"):  # as the summary's mean_delay counts them
                self._delays += row[3]
                self._used += 1
        self._seen = len(rows)
        postfix = {"version": coordinator.version,
                   "loss": f"{coordinator.metrics.get('loss', math.nan):.4g}"}
        if self._used:
            postfix["delay"] = f"{self._delays / self._used:.2f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()
