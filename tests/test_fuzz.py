"""A fuzz harness: generated configurations and corrupt files give clean outcomes only.

Overrides are drawn from the real schema (the keys of every table, as the registries define
them), with values of the wrong type, boundary and non-finite numbers, unknown names and huge
sizes. Every outcome must be one of:

* ``resolve`` answers a configuration, or raises :class:`ConfigError` naming a field;
* a short simulated run (``asyncopt run``) exits 0 or 1 with a complete ``summary.json`` (a
  recorded status, and a reason for ``failed``), or exits 2 with nothing written.

Never another exception, never a run directory left by a refusal. The file readers get
generated corrupt inputs (LIBSVM, IDX, CIFAR batches, checkpoints, resume directories): each
answers data or a :class:`ConfigError`.

In CI the examples are derandomized (a fixed seed) and few; ``ASYNCOPT_FUZZ=long`` runs many
more, with random seeds, by hand: ``ASYNCOPT_FUZZ=long pytest tests/test_fuzz.py``.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import struct
import tomllib
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

if os.environ.get("CI"):  # CI installs the test extras: a missing one must fail, not skip
    import hypothesis
else:
    hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from asyncopt import config as configuration
from asyncopt.cli import main
from asyncopt.errors import ConfigError
from asyncopt.problems import builtin, datasets, images, mnist
from asyncopt.protocols.registry import PROTOCOLS
from asyncopt.rules.registry import GENERIC, RULES
from asyncopt.runtimes.registry import RUNTIMES
from asyncopt.runtimes.sim import speed_spec as speed

LONG = os.environ.get("ASYNCOPT_FUZZ") == "long"


def _profile(examples: int) -> settings:
    """Few derandomized examples in CI; many random ones with ASYNCOPT_FUZZ=long."""
    return settings(max_examples=examples * 20 if LONG else examples, derandomize=not LONG,
                    deadline=None, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


# --- the schema, from the registries -----------------------------------------------------------

KEYS: list[str] = sorted(
    {k for k in configuration.DEFAULTS if k not in configuration.TABLES}
    | {f"problem.{k}" for spec in builtin.DEFAULTS.values() for k in spec}
    | {f"problem.{k}" for options in datasets.OPTIONS.values() for k in options}
    | {f"rule.{k}" for _, keys in RULES.values() for k in keys} | {f"rule.{k}" for k in GENERIC}
    | {f"protocol.{k}" for _, keys in PROTOCOLS.values() for k in keys}
    | {f"runtime_options.{k}" for k in RUNTIMES["sim"][1]}
    | {f"speed.{k}" for k in speed.KEYS}
    | {"budget.steps", "budget.arrivals", "budget.time", "budget.target_loss", "eval.every",
       "eval.unit", "output.name"})
NAMES: list[str] = sorted({"problem.name", "rule.name", "protocol.name", "problem.dataset",
                           "problem.partition", "problem.model", "speed.profile", "speed.noise",
                           "runtime"})
CHOICES = {"problem.name": sorted(builtin.BUILDERS), "rule.name": sorted(RULES),
           "protocol.name": sorted(PROTOCOLS), "runtime": ["sim"],
           "problem.dataset": ["digits", "iris", "synthetic", "libsvm", "mnist_idx"],
           "problem.partition": ["iid", "dirichlet", "sorted", "dirichlet_equal"],
           "speed.profile": list(speed.PROFILES), "speed.noise": list(speed.NOISES)}

NUMBERS = st.one_of(
    st.sampled_from([0, 1, 2, -1, 3, 7, 2**31, 2**63, 2**64, 10**12, 10**30]),
    st.sampled_from(["inf", "-inf", "nan", "1e308", "-1e308", "1e-320", "0.0", "-0.0", "0.5",
                     "1e300", "-3.5"]),
    st.integers(-5, 50).map(str))
VALUES = st.one_of(
    NUMBERS.map(str),
    st.sampled_from(['"x"', '""', "true", "false", "[]", "[1, 2]", '["a"]', "{}",
                     '{a = 1}', '"sgdd"', '"cosine"', '"time"', '"steps"', "[0.5, 1e309]",
                     '"../../etc"', "[[1, 0], [0, 1]]"]),
    st.text(alphabet="ab=.[]{}\"' 0123456789-e", max_size=8))


BASES = {
    "quadratic": {"workers": 4, "problem": {"name": "quadratic"},
                  "rule": {"name": "sgd", "lr": 0.05}, "budget": {"steps": 30}},
    "mlp": {"workers": 3, "problem": {"name": "mlp", "dataset": "digits", "batch_size": 8},
            "rule": {"name": "adam", "lr": 0.01}, "protocol": {"name": "minibatch"},
            "budget": {"steps": 10}, "eval": {"every": 5}},
}




def _leaves(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in table.items():
        if isinstance(value, dict) and key in configuration.TABLES:
            out.update(_leaves(value, f"{key}."))
        elif prefix or key not in configuration.TABLES:
            out[prefix + key] = value
    return out


# each base's own keys with their resolved defaults: what a plausible override changes
OWN = {name: _leaves(configuration.resolve(base)) for name, base in BASES.items()}
FLOATS = st.one_of(st.sampled_from([0.0, -0.0, 1e-320, 1e-8, 0.5, 1.0, 2.0, 1e300, -1.0]),
                   st.floats(-10, 10, allow_nan=False, allow_infinity=False))


def _plausible(default: Any) -> Any:
    """A value of the default's own type, near its range's edges."""
    if isinstance(default, bool):
        return st.booleans().map(lambda v: str(v).lower())
    if isinstance(default, int):
        return st.one_of(st.integers(-2, 12), st.sampled_from([2**31, 2**63, 10**12])).map(str)
    if isinstance(default, float):
        return st.one_of(FLOATS.map(repr), st.sampled_from(["inf", "nan", "-inf"]))
    return VALUES


@st.composite
def overrides(draw: Any, base: str) -> list[str]:
    """Up to three ``KEY=VALUE`` overrides: mostly the base's own keys with values of their
    type, then any key of the schema with any value, names, and unknown keys."""
    own = OWN[base]
    out = []
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.integers(0, 9))
        if kind < 7:
            key = draw(st.sampled_from(sorted(own)))
            value = draw(_plausible(own[key]))
        elif kind < 8:
            key = draw(st.sampled_from(NAMES))
            value = draw(st.one_of(st.sampled_from(CHOICES.get(key, ["x"])).map(
                lambda v: f'"{v}"'), VALUES))
        elif kind < 9:
            key, value = draw(st.sampled_from(KEYS)), draw(VALUES)
        else:
            key = draw(st.sampled_from(["rule.lrr", "problem.bogus", "budgett.steps", "x",
                                        "eval.every.deep", "seed.x", ".", "a..b"]))
            value = draw(VALUES)
        out.append(f"{key}={value}")
    return out


CASES = st.sampled_from(sorted(BASES)).flatmap(
    lambda base: st.tuples(st.just(base), overrides(base)))


@contextmanager
def _time_limit(seconds: int):
    """A generated case that runs longer than this is a hang to report, not to wait out."""
    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"no outcome within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --- configurations ------------------------------------------------------------------------------

@_profile(300)
@given(case=CASES)
def test_resolve_answers_a_config_or_a_config_error_naming_a_field(case):
    base, items = case
    try:
        resolved = configuration.resolve(configuration.apply_overrides(BASES[base], items))
    except ConfigError as error:
        assert isinstance(error.field, str) and error.field
        assert str(error).startswith(f"{error.field} = ")
        return
    # what a run directory stores is a configuration that loads again (resume reads it)
    configuration.resolve(tomllib.loads(configuration.dumps(resolved)))


@_profile(100)
@given(case=CASES)
def test_a_short_run_completes_records_its_status_or_refuses_writing_nothing(
        tmp_path_factory, case):
    base, items = case
    assume(not any(item.endswith('"cnn"') for item in items))  # a ResNet: minutes, not ms
    out = tmp_path_factory.mktemp("fuzz")
    path = out / "c.toml"
    import tomli_w

    path.write_text(tomli_w.dumps(BASES[base]))
    args = ["run", str(path), "--quiet", "--no-plot", "--out", str(out / "runs")]
    for item in [*items, "budget.arrivals=300"]:  # bounded, whatever the overrides say
        args += ["--set", item]
    with _time_limit(60):
        code = main(args)
    runs = out / "runs"
    if code == 2:
        assert not runs.exists() or not any(runs.iterdir()), "a refusal left a run directory"
        return
    assert code in (0, 1)
    (run_dir,) = runs.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] in ("completed", "diverged", "failed")
    assert (summary["status"] == "completed") == (code == 0)
    assert summary["reason"] and "final" in summary and "final_at" in summary
    assert (run_dir / "config.toml").is_file() and (run_dir / "arrivals.csv").is_file()


@_profile(100)
@given(arguments=st.fixed_dictionaries({}, optional={
    "rule": st.sampled_from(["adam", "adamm", 5, None, {"name": "sgd", "lr": -1},
                             {"name": "sgd", "lrr": 1}, {"lr": 0.1}, [], "sgd"]),
    "protocol": st.sampled_from(["asgd", "minibatch", "nope", 5, {"name": "rennala"},
                                 {"nam": "asgd"}, None]),
    "budget": st.sampled_from([50, None, {"steps": 5}, {"step": 5}, {"steps": 1.5},
                               {"time": float("inf")}, {}, {"arrivals": 7}, "steps"]),
    "evaluation": st.sampled_from([None, 3, {"every": 0}, {"evry": 1}, {"unit": "time"},
                                   {"every": 2, "unit": "steps"}]),
    "seed": st.sampled_from([0, -1, 2**64, "a", 1.5, True, 2**63 - 1]),
    "speed": st.sampled_from([None, 5, {}, {"profile": "sqrt"}, {"profil": "x"}, "fast"]),
    "runtime": st.sampled_from(["sim", "simulator", 3]),
    "runtime_options": st.sampled_from([None, {}, 5, {"threads": 0}, {"batch": 2},
                                        {"threadz": 1}]),
    "run_dir": st.sampled_from([None, 5]),
}))
def test_the_api_answers_a_result_or_a_config_error(arguments):
    import warnings

    from asyncopt.api import train
    from asyncopt.problems.registry import make_problem

    arguments = {"rule": "sgd", "budget": {"steps": 5}, **arguments}
    problem = make_problem({"name": "quadratic"}, 2, 0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a diverged run warns
            result = train(problem, **arguments)
    except ConfigError as error:
        assert error.field
        return
    assert result.summary["status"] in ("completed", "diverged")


# --- corrupt files -------------------------------------------------------------------------------

def _outcome_of(read: Any) -> None:
    """Reading a corrupt file answers data or a ConfigError, nothing else."""
    try:
        read()
    except ConfigError as error:
        assert error.field


LIBSVM_LINES = st.lists(st.one_of(
    st.sampled_from(["1 1:0.5 2:1", "0 3:2", "-1 1:1e39", "1 2:nan", "2 1:1 1:2", "x 1:1",
                     "1 0:3", "1 1:", "# comment", "", "1.5 1:1", "1 99999999999:1",
                     "1 1:1 # tail", "\x00", "1 1:inf", "3.0 2:-0"]),
    st.text(alphabet="0123456789:.- e#\t", max_size=20)), min_size=0, max_size=8)


@_profile(100)
@given(lines=LIBSVM_LINES, width=st.one_of(st.none(), st.integers(1, 4)))
def test_corrupt_libsvm_files(tmp_path_factory, lines, width):
    path = tmp_path_factory.mktemp("svm") / "data.svm"
    path.write_text("\n".join(lines))
    _outcome_of(lambda: datasets.read_libsvm(path, width))


def _idx(code: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + payload


@_profile(100)
@given(head=st.binary(max_size=6), code=st.sampled_from([0x08, 0x09, 0x0D, 0x0E, 0x07, 0x00]),
       shape=st.lists(st.integers(0, 30), min_size=0, max_size=3), payload=st.binary(max_size=64),
       mode=st.integers(0, 2))
def test_corrupt_idx_files(tmp_path_factory, head, code, shape, payload, mode):
    path = tmp_path_factory.mktemp("idx") / "file.idx"
    data = (head, _idx(code, tuple(shape), payload), _idx(code, tuple(shape), payload)[:7])[mode]
    path.write_bytes(data)
    _outcome_of(lambda: mnist.read_idx(path))


@_profile(60)
@given(kind=st.integers(0, 5), junk=st.binary(max_size=40), count=st.integers(0, 4),
       width=st.sampled_from([3072, 3071, 0]))
def test_corrupt_cifar_batches(tmp_path_factory, kind, junk, count, width):
    import numpy as np

    path = tmp_path_factory.mktemp("cifar") / "data_batch_1"
    data = np.zeros((count, width), dtype=np.uint8)
    content = [junk, pickle.dumps({b"data": data, b"labels": list(range(count))}),
               pickle.dumps({b"data": data}), pickle.dumps([1, 2, 3]),
               pickle.dumps({b"data": data.astype(np.float32), b"labels": [99] * count}),
               pickle.dumps({b"data": "text", b"labels": None})][kind]
    path.write_bytes(content)
    _outcome_of(lambda: images.read_batch(path, b"labels", 10))


class _Unsafe:
    def __reduce__(self) -> tuple[Any, ...]:
        return os.getpid, ()


CHECKPOINTS = st.one_of(
    st.binary(max_size=64),
    st.sampled_from(["list", "unsafe", "format", "keys", "rows", "truncated", "empty",
                     "intact"]))


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory) -> Path:
    """One real run with a checkpoint, to corrupt copies of."""
    out = tmp_path_factory.mktemp("ckpt")
    path = out / "c.toml"
    import tomli_w

    path.write_text(tomli_w.dumps({**BASES["quadratic"],
                                   "runtime_options": {"checkpoint_every": 10}}))
    assert main(["run", str(path), "--quiet", "--no-plot", "--out", str(out / "runs")]) == 0
    (run_dir,) = (out / "runs").iterdir()
    return run_dir


@_profile(40)
@given(corrupt=CHECKPOINTS, files=st.sets(st.sampled_from(["arrivals.csv", "config.toml",
                                                           "summary.json"]), max_size=2),
       garbage=st.sampled_from([b"\x00garbage,\n1,2\n", b"\xff\xfe\x00", b"", b"{"]))
def test_corrupt_checkpoints_and_resume_directories(tmp_path_factory, checkpointed, corrupt,
                                                    files, garbage):
    import shutil

    import torch

    run_dir = tmp_path_factory.mktemp("resume") / "run"
    shutil.copytree(checkpointed, run_dir)
    checkpoint = run_dir / "checkpoint.pt"
    state = torch.load(checkpoint, weights_only=True)
    if isinstance(corrupt, bytes):
        checkpoint.write_bytes(corrupt)
    elif corrupt == "list":
        torch.save([1, 2], checkpoint)
    elif corrupt == "unsafe":
        torch.save({"x": _Unsafe()}, checkpoint)
    elif corrupt == "format":
        torch.save({**state, "format": 999}, checkpoint)
    elif corrupt == "keys":
        torch.save({"format": state["format"]}, checkpoint)
    elif corrupt == "rows":
        torch.save({**state, "arrival_rows": 10**9}, checkpoint)
    elif corrupt == "truncated":
        checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    elif corrupt == "empty":
        checkpoint.write_bytes(b"")
    for name in files:
        (run_dir / name).write_bytes(garbage)
    before = sorted(p.name for p in run_dir.parent.iterdir())
    buffer = io.StringIO()
    with _time_limit(60):
        from contextlib import redirect_stderr, redirect_stdout

        with redirect_stdout(buffer), redirect_stderr(buffer):
            code = main(["run", "--resume", str(run_dir), "--quiet", "--no-plot"])
    after = sorted(p.name for p in run_dir.parent.iterdir())
    if code == 0:  # an intact checkpoint and history: the run goes on, beside the old one
        assert corrupt == "intact" and after == sorted([*before, "run-resumed"])
        return
    assert code == 2, buffer.getvalue()
    assert after == before  # nothing written
