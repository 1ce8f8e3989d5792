"""Shared builders for the simulator-level tests (real components, small sizes)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any

import pytest

from asyncopt.api import Result, train
from asyncopt.problems.registry import make_problem
from asyncopt.rules.registry import make_rule

_RAY_TMP = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """The Rays the tests start (in this process and in the CLI's subprocesses) keep their
    session files (logs, sockets) in a directory of the test session's own, removed at its
    end, not in /tmp/ray, where Ray leaves them for good. A hook, not module code: some test
    modules import this file again. A short path: Ray's socket paths must stay under 108
    characters."""
    config.stash[_RAY_TMP] = tempfile.mkdtemp(prefix="aotest-")
    os.environ["RAY_TMPDIR"] = config.stash[_RAY_TMP]


def pytest_unconfigure(config: pytest.Config) -> None:
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():  # a test's Ray still running in this process
        ray.shutdown()
    if _RAY_TMP in config.stash:
        shutil.rmtree(config.stash[_RAY_TMP], ignore_errors=True)


def simulate(problem: dict[str, Any], rule: dict[str, Any], protocol: Any = "asgd", *,
             workers: int = 4, speed: dict[str, Any] | None = None, seed: int = 0,
             run_dir: Any = None, **budget: Any) -> Result:
    """One simulated run from specs, the way the API assembles it."""
    built = make_problem(problem, workers, seed)
    return train(built, make_rule(rule, workers), protocol, speed=speed or {}, seed=seed,
                 budget=budget or {"steps": 50}, run_dir=run_dir)


@pytest.fixture
def quadratic() -> dict[str, Any]:
    return {"name": "quadratic", "dim": 10, "noise": 0.1, "heterogeneity": 1.0}
