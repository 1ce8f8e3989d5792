"""Problems by name: ``make_problem({"name": "mlp", "dataset": "digits"}, num_workers, seed)``.

A spec is the ``[problem]`` table of an experiment file: ``name`` plus that problem's keys
(:data:`asyncopt.problems.builtin.DEFAULTS`, and the chosen dataset's options). This module is the
boundary: :func:`resolve_problem_spec` refuses unknown names and keys and checks every value,
and errors raised while building (a missing file, more workers than samples) are reported with
their ``problem.`` field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from asyncopt.errors import (
    ConfigError,
    check,
    check_choice,
    check_float,
    check_int,
    check_keys,
    check_seed,
)
from asyncopt.problems.base import Problem
from asyncopt.problems.builtin import BUILDERS, DEFAULTS, GRADIENTS, build_bytes
from asyncopt.problems.datasets import DATASETS, OPTIONS, DataFileError
from asyncopt.problems.partition import SCHEMES
from asyncopt.problems.pca import check_covariance, check_eigenvalues
from asyncopt.problems.vision import check_model


def _optional_int(minimum: int) -> Callable[[str, Any], int | None]:
    return lambda field, value: None if value is None else check_int(field, value, minimum)


def _path(field: str, value: Any) -> str:
    check(isinstance(value, str) and bool(value), field, value,
          "the path of a LIBSVM file, or of a directory of MNIST IDX or CIFAR files")
    return str(value)


def _bool(field: str, value: Any) -> bool:
    check(isinstance(value, bool), field, value, "true or false")
    return value


def _fraction(field: str, value: Any) -> float:
    value = check_float(field, value, 0.0, 1.0)
    check(value < 1.0, field, value, "a number in [0, 1)")
    return value


# the problems compute in float32: a parameter beyond its range cannot even be converted
FLOAT32_MAX = 3.4028234663852886e38

CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "dim": lambda f, v: check_int(f, v, 1),
    "condition": lambda f, v: check_float(f, v, 1.0, FLOAT32_MAX),
    "heterogeneity": lambda f, v: check_float(f, v, 0.0, FLOAT32_MAX),
    "noise": lambda f, v: check_float(f, v, 0.0, FLOAT32_MAX),
    "dataset": lambda f, v: check_choice(f, v, DATASETS),
    "batch_size": lambda f, v: check_int(f, v, 1),
    "partition": lambda f, v: check_choice(f, v, [s for s in SCHEMES if s != "given"]),
    "partition_seed": lambda f, v: None if v is None else check_seed(f, v),
    "replacement": _bool,
    "alpha": lambda f, v: check_float(f, v, 0.0, FLOAT32_MAX, strict_minimum=True),
    "test_fraction": _fraction,
    "l2": lambda f, v: check_float(f, v, 0.0, FLOAT32_MAX),
    "hidden": lambda f, v: check_int(f, v, 1),
    "model": check_model,
    "gradient": lambda f, v: check_choice(f, v, GRADIENTS),
    "num_samples": lambda f, v: check_int(f, v, 2),
    "num_features": _optional_int(1),
    "num_classes": lambda f, v: check_int(f, v, 2),
    "label_noise": lambda f, v: check_float(f, v, 0.0, 1.0),
    "path": _path,
    "standardize": _bool,
    "eigenvalues": check_eigenvalues,
    "covariance": check_covariance,
}


def problem_names() -> list[str]:
    return sorted(BUILDERS)


def resolve_problem_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """``spec`` validated, with every default filled in (``name`` first, then the keys in
    their documented order). A LIBSVM ``path`` has no default and must be given."""
    check(isinstance(spec, Mapping), "problem", spec, "a table with a name, e.g. {name = 'mlp'}")
    name = check_choice("problem.name", spec.get("name"), BUILDERS)
    defaults = dict(DEFAULTS[name])
    if "dataset" in defaults:
        dataset = CHECKS["dataset"]("problem.dataset", spec.get("dataset", defaults["dataset"]))
        defaults.update(OPTIONS.get(dataset, {}))
    check_keys("problem", spec, ["name", *defaults])
    resolved: dict[str, Any] = {"name": name}
    for key, default in defaults.items():
        value = spec.get(key, default)
        if key == "path" and value is None:
            raise ConfigError("problem.path", None, f"the path of the {resolved.get('dataset')} "
                              "data (a LIBSVM file, or a directory of MNIST IDX or CIFAR files)")
        resolved[key] = CHECKS[key](f"problem.{key}", value)
    return resolved


def make_problem(spec: Mapping[str, Any], num_workers: int, seed: int) -> Problem:
    """Build the problem ``spec`` names, split across ``num_workers`` workers, seeded."""
    resolved = resolve_problem_spec(spec)
    num_workers = check_int("workers", num_workers, 1)
    seed = check_seed("seed", seed)
    _check_fits(resolved, num_workers)
    with _as_problem_fields(resolved):
        return BUILDERS[resolved["name"]](resolved, num_workers, seed)


def _check_fits(resolved: Mapping[str, Any], num_workers: int) -> None:
    """Refuse a generated problem that would not fit in the memory available now."""
    from asyncopt.runtimes.common.resources import available_memory, size

    need, key = build_bytes(resolved, num_workers)
    available = available_memory()
    if available is not None and need > available:
        field, value = ("workers", num_workers) if key == "workers" else (
            f"problem.{key}", resolved[key])
        raise ConfigError(field, value, f"a problem that fits in memory: building it would "
                          f"take about {size(need)}, more than the {size(available)} "
                          f"available (MemAvailable in /proc/meminfo); lower {field}")


@contextmanager
def _as_problem_fields(resolved: Mapping[str, Any]) -> Iterator[None]:
    """Re-raise a builder's ConfigError on a spec key (``path``) as ``problem.<key>``, and one
    on the worker count as ``workers``, the names the user wrote."""
    try:
        yield
    except DataFileError:
        raise
    except ConfigError as error:
        if error.field in resolved:
            raise ConfigError(f"problem.{error.field}", error.value, error.allowed) from error
        if error.field == "num_workers":
            raise ConfigError("workers", error.value, error.allowed) from error
        raise
