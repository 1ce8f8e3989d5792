"""The experiment configuration: TOML in, validated once, resolved TOML out.

An experiment file names one problem, one rule, one protocol and one runtime::

    seed = 0
    workers = 4
    runtime = "sim"

    [problem]                 # asyncopt.problems: quadratic, logistic, mlp, ...
    name = "mlp"
    [rule]                    # asyncopt.rules: sgd, momentum, adam, amsgrad, ...
    name = "amsgrad"
    lr = 0.001
    [protocol]                # asyncopt.protocols: asgd, minibatch, ...
    name = "asgd"
    [speed]                   # simulator speed model (runtimes/sim/speed.py)
    profile = "sqrt"
    [budget]                  # stop at whichever comes first
    steps = 2000
    [eval]
    every = 100
    unit = "steps"            # or "time"
    [output]
    dir = "runs"
    tensorboard = false       # true: TensorBoard event files under RUN_DIR/tensorboard
    [runtime_options]         # options of the chosen runtime (none for "sim")

``--set key=value`` overrides any entry (``--set rule.lr=0.01 --set protocol.name=minibatch``);
the value is read as TOML, falling back to a plain string. :func:`resolve` fills in every default,
and the resolved configuration is what a run directory stores.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from asyncopt import shipped
from asyncopt.errors import (
    ConfigError,
    check,
    check_choice,
    check_float,
    check_int,
    check_keys,
    check_seed,
)
from asyncopt.problems.registry import resolve_problem_spec
from asyncopt.protocols.registry import resolve_protocol_spec
from asyncopt.rules.registry import resolve_rule_spec
from asyncopt.runtimes.registry import resolve_runtime_options, runtime_names
from asyncopt.runtimes.sim.speed_spec import resolve_speed_spec


@dataclass(frozen=True)
class Budget:
    """When a run stops: whichever limit comes first. At least one of steps/arrivals/time."""

    steps: int | None = None
    arrivals: int | None = None
    time: float | None = None
    target_loss: float | None = None

    def __post_init__(self) -> None:
        check(any(v is not None for v in (self.steps, self.arrivals, self.time)), "budget",
              "{}", "at least one of budget.steps, budget.arrivals, budget.time")
        if self.steps is not None:
            check_int("budget.steps", self.steps, 1)
        if self.arrivals is not None:
            check_int("budget.arrivals", self.arrivals, 1)
        if self.time is not None:
            check_float("budget.time", self.time, 0.0, strict_minimum=True)
        if self.target_loss is not None:
            check_float("budget.target_loss", self.target_loss)


@dataclass(frozen=True)
class Evaluation:
    """Evaluate the server's model every ``every`` server steps (``unit = "steps"``) or every
    ``every`` seconds of the runtime's clock (``unit = "time"``), and once at the start and end."""

    every: float = 100
    unit: str = "steps"

    def __post_init__(self) -> None:
        check_choice("eval.unit", self.unit, ("steps", "time"))
        check_float("eval.every", self.every, 0.0, strict_minimum=True)



DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "workers": 4,
    "runtime": "sim",
    "runtime_options": {},
    "problem": {"name": "mlp"},
    "rule": {"name": "sgd", "lr": 0.05},
    "protocol": {"name": "asgd"},
    "speed": {},
    "budget": {"steps": 1000},
    "eval": {"every": 100, "unit": "steps"},
    "output": {"dir": "runs", "name": "", "tensorboard": False},
}
TABLES = ("problem", "rule", "protocol", "speed", "budget", "eval", "output", "runtime_options")


def read(path: str | Path) -> dict[str, Any]:
    """The raw contents of a TOML experiment file (not yet validated), or of a ready config
    by name (``quickstart``: :mod:`asyncopt.shipped`) when no such file exists."""
    given, path = str(path), Path(path)
    if not path.is_file():
        path = shipped.find(given) or path
    if not path.is_file():
        raise ConfigError("config", given, "an existing TOML file, or " + shipped.unknown(given))
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError("config", str(path), f"valid TOML ({error})") from error
    # an empty file is more likely a mistake (a file not yet written, the wrong path) than a
    # wish for every default, which `asyncopt configs quickstart --out FILE` spells out
    check(bool(raw), "config", str(path), "a file with at least one setting (this one is empty"
          "; start from a ready config: asyncopt configs quickstart --out my.toml)")
    return raw


def load(path: str | Path, overrides: Iterable[str] = (), method: str | None = None
         ) -> dict[str, Any]:
    """Read a TOML experiment file, apply ``key=value`` overrides, and resolve it.

    A file with ``[[methods]]`` needs ``method`` = one of their labels."""
    variants = dict(methods(read(path)))
    if method is None:
        check(len(variants) == 1, "--method", None,
              f"one of {', '.join(variants)} (this file defines several methods; "
              "`asyncopt compare` runs them all)")
        method = next(iter(variants))
    check_choice("--method", method, variants)
    return resolve(apply_overrides(variants[method], overrides))


def methods(raw: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(label, raw config)`` for each ``[[methods]]`` entry of a file, or ``("", file)``.

    Each entry has a ``label`` and any top-level keys or tables of a config; they replace the
    base file's (a method's ``[methods.rule]`` is its whole rule)::

        [[methods]]
        label = "Ringleader"
        protocol = { name = "ringleader" }
        rule = { name = "sgd", lr = 0.005 }
    """
    base = {k: v for k, v in raw.items() if k != "methods"}
    entries = raw.get("methods")
    if entries is None:
        return [("", base)]  # no label of its own: callers name it after its resolved config
    check(isinstance(entries, list) and bool(entries), "methods", entries,
          "a non-empty array of tables ([[methods]])")
    out: list[tuple[str, dict[str, Any]]] = []
    for index, entry in enumerate(entries):
        check(isinstance(entry, Mapping) and isinstance(entry.get("label"), str),
              f"methods[{index}]", entry, "a table with a string label")
        name = entry["label"]
        check(name not in dict(out), f"methods[{index}].label", name, "a label used once")
        out.append((name, {**base, **{k: v for k, v in entry.items() if k != "label"}}))
    return out


def set_in_method(raw: dict[str, Any], label_: str, key: str, value: Any) -> None:
    """In place: set dotted ``key`` to ``value`` for the method ``label_`` of a raw file (or for
    the file itself when it has no methods), copying the base table first so that the rest of it
    is kept (a method's table replaces the base's whole)."""
    entries = raw.get("methods")
    target = raw if entries is None else next(e for e in entries if e["label"] == label_)
    *parents, leaf = key.split(".")
    if target is not raw and parents and parents[0] not in target:
        target[parents[0]] = copy.deepcopy(raw.get(parents[0], {}))
    for part in parents:
        target = target.setdefault(part, {})
    target[leaf] = value


def apply_overrides(raw: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """``["rule.lr=0.01", "workers=8"]`` applied to a copy of ``raw``."""
    out = copy.deepcopy(dict(raw))
    for item in overrides:
        key, sep, text = item.partition("=")
        check(bool(sep) and bool(key.strip()), "--set", item, "KEY=VALUE, e.g. rule.lr=0.01")
        *parents, leaf = key.strip().split(".")
        table = out
        for part in parents:
            table = table.setdefault(part, {})
            check(isinstance(table, dict), "--set", item, f"{part} to be a table")
        table[leaf] = parse_value(text.strip())
    return out


def parse_value(text: str) -> Any:
    """A TOML value (``0.01``, ``true``, ``[1, 2]``, ``"x"``), or the text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def resolve(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Validate every field and fill in every default. Raises ConfigError on the first problem."""
    check_keys("config", raw, DEFAULTS)
    config = copy.deepcopy(DEFAULTS)
    for key, value in raw.items():
        if key in TABLES:
            check(isinstance(value, Mapping), key, value, "a table, e.g. [" + key + "]")
            config[key] = {**config[key], **value} if key in ("eval", "output") else dict(value)
        else:
            config[key] = value
    config["seed"] = check_seed("seed", config["seed"])
    config["workers"] = check_int("workers", config["workers"], 1)
    config["runtime"] = check_choice("runtime", config["runtime"], runtime_names())
    config["runtime_options"] = resolve_runtime_options(config["runtime"],
                                                        config["runtime_options"])
    config["problem"] = resolve_problem_spec(config["problem"])
    config["rule"] = resolve_rule_spec(config["rule"])
    config["protocol"] = resolve_protocol_spec(config["protocol"])
    config["speed"] = resolve_speed_spec(config["speed"])
    check_keys("budget", config["budget"], ("steps", "arrivals", "time", "target_loss"))
    Budget(**config["budget"])
    check_keys("eval", config["eval"], ("every", "unit"))
    Evaluation(**config["eval"])
    check_keys("output", config["output"], ("dir", "name", "tensorboard"))
    check(isinstance(config["output"]["tensorboard"], bool), "output.tensorboard",
          config["output"]["tensorboard"], "true or false (TensorBoard event files under "
          "RUN_DIR/tensorboard)")
    check(isinstance(config["output"]["dir"], str), "output.dir", config["output"]["dir"],
          "a directory path")
    name = config["output"]["name"]
    check(isinstance(name, str) and "/" not in name and name not in (".", ".."),
          "output.name", name, "a directory name (a string without '/'; empty: one made of "
          "the problem, protocol, rule, seed and time)")
    return config


def budget_from(value: Budget | Mapping[str, Any] | Any) -> Budget:
    """A :class:`Budget`, or one built from a dict of its fields (unknown keys refused)."""
    if isinstance(value, Budget):
        return value
    names = [f.name for f in fields(Budget)]
    check(isinstance(value, Mapping), "budget", value, "a Budget or a dict of its fields ("
          + ", ".join(names) + "), e.g. {'steps': 1000}")
    check_keys("budget", value, names)
    return Budget(**value)


def evaluation_from(value: Evaluation | Mapping[str, Any] | Any | None) -> Evaluation:
    """An :class:`Evaluation`, one built from a dict of its fields, or the default (None)."""
    if value is None:
        return Evaluation()
    if isinstance(value, Evaluation):
        return value
    names = [f.name for f in fields(Evaluation)]
    check(isinstance(value, Mapping), "evaluation", value, "an Evaluation or a dict of its "
          "fields (" + ", ".join(names) + "), e.g. {'every': 100, 'unit': 'steps'}")
    check_keys("evaluation", value, names)
    return Evaluation(**value)


def budget_of(config: Mapping[str, Any]) -> Budget:
    return Budget(**config["budget"])


def evaluation_of(config: Mapping[str, Any]) -> Evaluation:
    return Evaluation(**config["eval"])


def dumps(config: Mapping[str, Any]) -> str:
    """The resolved configuration as TOML (``None`` values, meaning "default", are left out)."""
    import tomli_w

    return tomli_w.dumps(_drop_none(config))


def label(config: Mapping[str, Any]) -> str:
    """A short name for a configuration: protocol + rule (+ lr)."""
    rule = config["rule"]
    return f"{config['protocol']['name']}+{rule['name']}(lr={rule.get('lr')})"


def _drop_none(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_drop_none(v) for v in value]
    return value
