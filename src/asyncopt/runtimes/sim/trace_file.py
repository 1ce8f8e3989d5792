"""Reading a trace: each worker's measured times, from a run directory or a CSV file.

A **run directory** of a real run (processes, Ray) gives, for each gradient the server handled
(rows with action step, buffer, drop or reject of ``arrivals.csv``, :mod:`asyncopt.record`):

* ``compute_time`` c_j, the worker's own seconds for the gradient;
* the **communication latency** ℓ_j: the recorded ``latency`` L_j (from the job's start to the
  start of its handling, on the driver's clock) without the time the gradient queued while the
  server handled others: the simulator queues arrivals behind its own server
  (:mod:`asyncopt.runtimes.sim.loop`), so replaying L_j whole would count the queue twice. The
  server was busy during [now_i, now_i + s_i] for each handled row i (s_i its
  ``server_time``). A row handled more than ``IDLE`` seconds after the previous handling ended
  found the server idle: ℓ_j = L_j. A row handled right after it may have queued for any part
  of L_j; it gets ℓ_j = min(L_j, the median ℓ of its worker's rows that found the server idle),
  or, for a worker that never found it idle, L_j less the busy seconds within L_j. Evaluations
  pause the server too but are not in s_i: their wait stays in ℓ_j;
* the job's **start** on the run's clock, now_j − ℓ_j − c_j (for windows in time);
* the server's times s_j, for ``server_time = "trace"``, and the times it began them;
* from ``summary.json`` (runs of a real runtime): the mean wall seconds of the run's
  evaluations, for ``eval_time = "trace"``, and the CPUs its processes shared (``cpus``), the
  default of ``cores`` when its workers did not pad (``time_scale = 0``).

On a machine with C cores shared by the workers and the server (``[speed] cores``), every
measured time is stretched by the others that ran beside it. :meth:`Trace.alone` takes each
job [start_j, start_j + ℓ_j + c_j] (on one machine ℓ_j is mostly a woken process waiting for a
core, not communication, so it is taken to come first) and each handling [now_i, now_i + s_i]
as busy intervals, k(t) the number in progress at t, and gives each part its seconds alone on
a core, ∫ min(1, C/k(t)) dt over it: the inverse of the simulator's processor sharing
(:mod:`asyncopt.runtimes.sim.machine`). The evaluations' time is scaled as the handlings'.

Histories written before ``latency`` and ``server_time`` were recorded give ℓ = 0 and no server
times. A **CSV file** has a header with ``worker`` and ``compute_time``, and may have
``latency`` (taken as communication) and ``start`` (else a worker's jobs are taken to follow
each other: start = the sum of its earlier compute times and latencies).

Every worker 0..m−1 must have rows (m: the run's ``workers``, or the largest id + 1 in a CSV);
times must be finite, compute times > 0, latencies ≥ 0. A bad value raises
:class:`~asyncopt.problems.datasets.DataFileError` with the file, the line, the column and the
value.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from asyncopt.errors import ConfigError
from asyncopt.problems.datasets import DataFileError

IDLE = 2e-4
"""Seconds between the end of one handling and the start of the next beyond which the server
is taken to have been idle (the driver's own bookkeeping between two queued arrivals, recording
and starting workers, takes less)."""
GRADIENTS = ("step", "buffer", "drop", "reject")
"""The actions of rows that are gradients the server handled (the trace's samples)."""


@dataclass(frozen=True)
class Trace:
    """Measured times per trace worker w: ``compute[w]``, ``latency[w]`` and ``start[w]``
    (arrays of one length per worker, in the order the gradients were handled), and the
    server's times ``server`` (possibly empty)."""

    path: Path
    compute: list[np.ndarray]
    latency: list[np.ndarray]
    start: list[np.ndarray]
    server: np.ndarray
    config: dict[str, Any] = field(default_factory=dict)
    handled: np.ndarray = field(default_factory=lambda: np.array([]))
    """When the server began each of ``server`` (the run's clock)."""
    eval_time: float | None = None
    """The run's mean wall seconds per evaluation (a real run's summary), or None."""
    cpus: int | None = None
    """The cores its workers and server shared while computing on one machine (a real run's
    summary ``cpus``, when it did not pad: a padded worker sleeps), or None."""

    @property
    def num_workers(self) -> int:
        return len(self.compute)

    def fingerprint(self) -> list[float]:
        """Rows and sums per worker: a checkpoint refuses a trace that changed since."""
        return [float(len(c)) for c in self.compute] + [float(c.sum()) for c in self.compute]

    def alone(self, cores: int) -> Trace:
        """This trace with its compute times, latencies, server times and evaluation time as
        seconds alone on a core, on a machine of ``cores`` cores (see the module docstring);
        jobs that ended after some worker's last handled gradient are left out (they ran beside
        computations that the run cut off, which no row records)."""
        ends = [s + ell + c for s, ell, c in zip(self.start, self.latency, self.compute,
                                                 strict=True)]
        begins = np.concatenate([*self.start, self.handled])
        times = np.concatenate([begins, *ends, self.handled + self.server])
        steps = np.concatenate([np.ones(len(begins)), -np.ones(len(begins))])
        order = np.argsort(times, kind="stable")
        times, k = times[order], np.cumsum(steps[order])  # k on [times[i], times[i + 1])
        rate = np.minimum(1.0, cores / np.maximum(k[:-1], 1.0))
        work = np.concatenate([[0.0], np.cumsum(rate * np.diff(times))])  # ∫ rate up to times

        def alone(begin: np.ndarray, end: np.ndarray, least: float) -> np.ndarray:
            done = np.interp(end, times, work) - np.interp(begin, times, work)
            return np.maximum(done, least * (end - begin))  # a compute time stays > 0

        cut = min(float(e.max()) for e in ends)
        kept = [np.flatnonzero(e <= cut) if (e <= cut).any() else np.arange(1) for e in ends]
        server = alone(self.handled, self.handled + self.server, 0.0)
        scale = float(server.sum() / self.server.sum()) if self.server.sum() > 0 else 1.0
        return replace(
            self, start=[s[i] for s, i in zip(self.start, kept, strict=True)],
            latency=[alone(s[i], s[i] + ell[i], 0.0) for s, ell, i in zip(
                self.start, self.latency, kept, strict=True)],
            compute=[alone(e[i] - c[i], e[i], 1e-12) for e, c, i in zip(
                ends, self.compute, kept, strict=True)],
            server=server, eval_time=None if self.eval_time is None else self.eval_time * scale)


def read_trace(path: str | Path) -> Trace:
    """The trace in ``path``: a run directory or a CSV file (see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        return _read_run(path)
    if not path.is_file():
        raise ConfigError("speed.trace", str(path), "a run directory (with arrivals.csv) or a "
                          "CSV file with columns worker, compute_time[, latency]")
    columns, lines = _read_csv(path, ("worker", "compute_time"))
    workers = _workers(path, columns["worker"], lines)
    latency = _times(path, columns, "latency", lines, 0.0) if "latency" in columns else \
        np.zeros(len(lines))
    start = _times(path, columns, "start", lines, None) if "start" in columns else None
    return _split(path, workers, _times(path, columns, "compute_time", lines, 0.0), latency,
                  start, int(workers.max()) + 1 if len(workers) else 0, np.array([]), {})


def _read_run(run_dir: Path) -> Trace:
    path = run_dir / "arrivals.csv"
    if not path.is_file():
        raise ConfigError("speed.trace", str(run_dir), "a run directory with arrivals.csv "
                          "(or a CSV file with columns worker, compute_time[, latency])")
    config: dict[str, Any] = {}
    if (run_dir / "config.toml").is_file():
        config = tomllib.loads((run_dir / "config.toml").read_text())
    columns, lines = _read_csv(path, ("now", "worker", "action", "compute_time"))
    handled = np.array([a in GRADIENTS for a in columns["action"]], dtype=bool)
    columns = {name: [v for v, keep in zip(values, handled, strict=True) if keep]
               for name, values in columns.items()}
    lines = [line for line, keep in zip(lines, handled, strict=True) if keep]
    workers = _workers(path, columns["worker"], lines)
    now = _times(path, columns, "now", lines, None)
    compute = _times(path, columns, "compute_time", lines, 0.0)
    measured = "latency" in columns and any(v != "" for v in columns["latency"])
    latency = _times(path, columns, "latency", lines, 0.0) if measured else np.zeros(len(lines))
    server = np.array([])
    if measured and "server_time" in columns:
        server = _times(path, columns, "server_time", lines, 0.0)
        latency = _travel(workers, now, latency, server)
    count = int(config.get("workers", int(workers.max()) + 1 if len(workers) else 0))
    trace = _split(path, workers, compute, latency, now - latency - compute, count, server,
                   config)
    summary: dict[str, Any] = {}
    if config.get("runtime", "sim") != "sim" and (run_dir / "summary.json").is_file():
        with contextlib.suppress(ValueError, UnicodeDecodeError):  # unreadable: as missing
            summary = json.loads((run_dir / "summary.json").read_text())
    seconds, cpus = summary.get("evaluation_wall_seconds"), summary.get("cpus")
    padded = float(config.get("runtime_options", {}).get("time_scale", 0.0)) > 0.0
    return replace(trace, handled=now if len(server) else np.array([]),
                   eval_time=float(seconds) if isinstance(seconds, (int, float)) and (
                       math.isfinite(seconds) and seconds >= 0) else None,
                   cpus=cpus if isinstance(cpus, int) and cpus >= 1 and not padded else None)


def _travel(workers: np.ndarray, now: np.ndarray, latency: np.ndarray,
            server: np.ndarray) -> np.ndarray:
    """ℓ_j from L_j: see the module docstring (rows in handling order)."""
    ends = now + server
    gap = now - np.concatenate([[-np.inf], ends[:-1]])
    idle = gap > IDLE
    total = np.concatenate([[0.0], np.cumsum(server)])

    def busy(t: np.ndarray) -> np.ndarray:  # busy seconds in [0, t]
        k = np.searchsorted(now, t, side="right")  # intervals begun by t
        over = np.where(k > 0, np.maximum(0.0, ends[np.maximum(k - 1, 0)] - t), 0.0)
        return total[k] - over

    out = np.maximum(0.0, latency - (busy(now) - busy(now - latency)))
    for worker in np.unique(workers):
        mine = workers == worker
        free = latency[mine & idle]
        if len(free):
            out[mine] = np.where(idle[mine], latency[mine],
                                 np.minimum(latency[mine], np.median(free)))
    return out


def _split(path: Path, workers: np.ndarray, compute: np.ndarray, latency: np.ndarray,
           start: np.ndarray | None, count: int, server: np.ndarray,
           config: dict[str, Any]) -> Trace:
    if count == 0:
        raise DataFileError(path, 2, "no gradient rows: a trace needs each worker's times")
    rows = [np.flatnonzero(workers == w) for w in range(count)]
    empty = [w for w, r in enumerate(rows) if len(r) == 0]
    if empty:
        raise DataFileError(path, 2, f"column 'worker': no rows for worker {empty[0]} of "
                            f"0..{count - 1}; every worker needs measured times")
    if len(workers) and int(workers.max()) >= count:
        line = int(np.argmax(workers >= count))
        raise DataFileError(path, line + 2, f"column 'worker': {int(workers[line])} is not "
                            f"below the run's workers = {count}")
    if start is None:  # one job after the other
        start = np.zeros(len(workers))
        for r in rows:
            start[r] = np.concatenate([[0.0], np.cumsum(compute[r] + latency[r])[:-1]])
    return Trace(path, [compute[r] for r in rows], [latency[r] for r in rows],
                 [start[r] for r in rows], server, config)


def _read_csv(path: Path, required: tuple[str, ...]) -> tuple[dict[str, list[str]], list[int]]:
    """The columns of ``path`` as strings, and each row's line number (a cut last line, as a
    killed run leaves, is dropped)."""
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.reader(text.splitlines())
    header = [name.strip() for name in next(reader, [])]
    for name in required:
        if name not in header:
            raise DataFileError(path, 1, f"no column {name!r} (the header has "
                                f"{', '.join(header) or 'nothing'}); a trace needs "
                                f"{', '.join(required)}")
    columns: dict[str, list[str]] = {name: [] for name in header}
    lines = []
    for number, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise DataFileError(path, number, f"{len(row)} values for {len(header)} columns")
        for name, value in zip(header, row, strict=True):
            columns[name].append(value.strip())
        lines.append(number)
    return columns, lines


def _workers(path: Path, values: list[str], lines: list[int]) -> np.ndarray:
    out = np.empty(len(values), dtype=np.int64)
    for k, value in enumerate(values):
        if not value.isdigit():
            raise DataFileError(path, lines[k], f"column 'worker': {value!r} is not a worker "
                                "id (an integer >= 0)")
        out[k] = int(value)
    return out


def _times(path: Path, columns: dict[str, list[str]], name: str, lines: list[int],
           minimum: float | None) -> np.ndarray:
    """Column ``name`` as finite floats; > ``minimum`` for compute times, >= it otherwise."""
    strict = name == "compute_time"
    out = np.empty(len(lines))
    for k, value in enumerate(columns[name]):
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        ok = math.isfinite(number) and (minimum is None or (
            number > minimum if strict else number >= minimum))
        if not ok:
            allowed = "a finite number" if minimum is None else \
                f"a finite number {'>' if strict else '>='} {minimum:g}"
            raise DataFileError(path, lines[k], f"column {name!r}: {value!r} is not {allowed}")
        out[k] = number
    return out
