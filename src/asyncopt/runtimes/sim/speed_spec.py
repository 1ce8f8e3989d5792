"""The ``[speed]`` table of a configuration: every key, its default, what is allowed.

The model that the table describes is in :mod:`asyncopt.runtimes.sim.speed`'s docstring;
``trace = "RUN_DIR"`` hands the table to :mod:`~asyncopt.runtimes.sim.trace`, and ``cores``,
``cancel`` and ``eval_time`` are :mod:`~asyncopt.runtimes.sim.machine`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from asyncopt.errors import check, check_choice, check_float, check_keys
from asyncopt.runtimes.sim.machine import KEYS as MACHINE_KEYS
from asyncopt.runtimes.sim.machine import resolve_machine
from asyncopt.runtimes.sim.slowdown import resolve_periodic, resolve_slowdowns

PROFILES = ("constant", "linear", "sqrt")
NOISES = ("none", "half_normal", "exponential", "lognormal")
NOISE_INDICES = ("profile", "worker")
SEEDINGS = ("spawn", "offset")
DEFAULTS: dict[str, Any] = {
    "profile": "constant", "scale": 1.0, "permute": False, "noise": "none", "noise_scale": 1.0,
    "noise_grows": False, "noise_index": "profile", "seeding": "spawn",
    "straggler_probability": 0.0, "straggler_factor": 10.0, "slowdowns": [], "periodic": [],
}
"""Every key with its default; ``times`` and ``factors`` (one value per worker) have none."""
KEYS = (*DEFAULTS, "times", "factors", "latency", "server_time", "trace", *MACHINE_KEYS)


def resolve_speed_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The ``[speed]`` spec validated, with every default filled in (idempotent).

    Lengths of ``times`` and ``factors`` are checked against the worker count by
    :func:`make_speed_model`, which knows it.
    """
    check(isinstance(spec, Mapping), "speed", spec, "a table, e.g. [speed]")
    if "trace" in spec:
        from asyncopt.runtimes.sim.trace import resolve_trace_spec

        return resolve_trace_spec(spec)
    check_keys("speed", spec, KEYS)
    out: dict[str, Any] = {}
    if "times" in spec:
        for key in ("profile", "scale"):
            check(key not in spec, f"speed.{key}", spec.get(key),
                  "left out when speed.times is given (times are the base times)")
        out["times"] = positive_list("speed.times", spec["times"])
    else:
        out["profile"] = check_choice("speed.profile", spec.get("profile", "constant"), PROFILES)
        out["scale"] = check_float("speed.scale", spec.get("scale", 1.0), 0.0,
                                   strict_minimum=True)
    out["permute"] = _bool("speed.permute", spec.get("permute", False))
    out["noise"] = check_choice("speed.noise", spec.get("noise", "none"), NOISES)
    out["noise_scale"] = check_float("speed.noise_scale", spec.get("noise_scale", 1.0), 0.0)
    out["noise_grows"] = _bool("speed.noise_grows", spec.get("noise_grows", False))
    out["noise_index"] = check_choice("speed.noise_index", spec.get("noise_index", "profile"),
                                      NOISE_INDICES)
    out["seeding"] = check_choice("speed.seeding", spec.get("seeding", "spawn"), SEEDINGS)
    if "factors" in spec:
        out["factors"] = positive_list("speed.factors", spec["factors"])
    out["straggler_probability"] = check_float(
        "speed.straggler_probability", spec.get("straggler_probability", 0.0), 0.0, 1.0)
    out["straggler_factor"] = check_float("speed.straggler_factor",
                                          spec.get("straggler_factor", 10.0), 1.0)
    out["slowdowns"] = resolve_slowdowns(spec.get("slowdowns", []))
    out["periodic"] = resolve_periodic(spec.get("periodic", []))
    if "latency" in spec:
        value = spec["latency"]
        out["latency"] = [check_float(f"speed.latency[{k}]", v, 0.0) for k, v in enumerate(
            value)] if isinstance(value, (list, tuple)) else check_float("speed.latency", value,
                                                                         0.0)
    if "server_time" in spec:
        from asyncopt.runtimes.sim.trace import resolve_server_time

        out["server_time"] = resolve_server_time(spec["server_time"], trace=False)
    out.update(resolve_machine(spec, trace=False))
    return out


def positive_list(field: str, value: Any) -> list[float]:
    check(isinstance(value, (list, tuple)) and len(value) > 0, field, value,
          "a non-empty list of numbers > 0, one per worker")
    return [check_float(f"{field}[{k}]", v, 0.0, strict_minimum=True) for k, v in enumerate(value)]


def _bool(field: str, value: Any) -> bool:
    check(isinstance(value, bool), field, value, "true or false")
    return value
