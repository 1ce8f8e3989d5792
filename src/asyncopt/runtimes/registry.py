"""Runtimes by name: where gradients come from, and on what clock.

A runtime is built by ``make_runtime(name, problem, speed, seed, options)``: an event source
(:class:`~asyncopt.runtimes.source.EventSource`) whose ``run(coordinator)`` hands it to the one
driver (:mod:`asyncopt.runtimes.driver`). Everything else (protocol, history, evaluation,
budget) is the coordinator's, so a method written once runs in every runtime. A runtime module
is named here with its option defaults; only the registry imports runtime modules, and only when
asked for one.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from asyncopt.errors import check, check_choice, check_keys
from asyncopt.problems.base import Problem
from asyncopt.runtimes.source import EventSource

RUNTIMES: dict[str, tuple[str, dict[str, Any]]] = {
    "sim": ("asyncopt.runtimes.sim.runtime", {"threads": 1, "batch": 1, "ahead": 0,
                                           "checkpoint_every": 0}),
    "processes": ("asyncopt.runtimes.processes.runtime",
                  {"start_method": "spawn", "time_scale": 0.0, "startup_timeout": 120.0,
                   "mode": "server", "blocks": "whole", "block_fraction": 0.5,
                   "warmup_steps": 0, "backprop": "block", "momentum": "shared",
                   "servers": 1, "layout": "tensors",
                   "device": "cpu", "checkpoint_every": 0, "oversubscribe": False}),
    "ray": ("asyncopt.runtimes.ray.runtime",
            {"address": "", "time_scale": 0.0, "max_restarts": 3, "checkpoint_every": 0,
             "worker_cpus": 1.0, "placement": "default", "startup_timeout": 120.0,
             "servers": 1, "layout": "tensors", "transport": "auto", "oversubscribe": False,
             "runtime_env": {}}),
}
"""name -> (module that defines ``build(problem, speed, seed, **options)``, option defaults)."""


def runtime_names() -> list[str]:
    return sorted(RUNTIMES)


def resolve_runtime_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    name = check_choice("runtime", name, RUNTIMES)
    check(isinstance(options, Mapping), "runtime_options", options,
          "a table of the runtime's options, e.g. {mode = 'lockfree'}")
    defaults = RUNTIMES[name][1]
    check_keys(f"runtime_options ({name})", options, defaults)
    return {**defaults, **options}


def make_runtime(name: str, problem: Problem, speed: Any, seed: int,
                 options: Mapping[str, Any] | None = None) -> EventSource:
    resolved = resolve_runtime_options(name, options or {})
    module = importlib.import_module(RUNTIMES[name][0])
    return module.build(problem, speed, seed, **resolved)
