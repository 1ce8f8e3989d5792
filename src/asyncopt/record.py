"""The one history format: an arrivals table, an evaluations table, a summary.

A run directory holds

* ``config.toml``      the resolved configuration (every default filled in);
* ``arrivals.csv``     one row per arrival: ``now, worker, version, delay, loss, action, stepped,
  compute_time, latency, server_time`` (``version`` is the server's version *after* handling the
  arrival; ``action`` is one of step, buffer, drop, reject, cancel, lost, restart; cancelled
  work, lost and restarted workers have an empty loss). The three times are what the
  simulator needs to replay a run's cost (:mod:`asyncopt.runtimes.sim.trace`):
  ``compute_time`` the worker's own seconds for the gradient (its clock), ``latency`` the rest of
  the time from the job's start to the start of its handling (the driver's clock: sending the
  job, sending the gradient back, waiting while the server handles others), and
  ``server_time`` the server's seconds on the arrival (reading the gradient, the protocol and
  the rule's step; not evaluations). Rows that are no gradient the server handled (cancel, lost,
  restart; steps applied by lock-free workers) leave the last two empty. Files written before
  these two columns existed are read all the same, without them;
* ``evaluations.csv``  periodic rows: ``now, version, arrivals`` and the problem's metrics
  (``loss``, ``grad_norm_sq``, ``accuracy``, ...);
* ``summary.json``     written last, atomically: status (completed, interrupted, diverged, failed),
  reason, counts, ``final`` (the metrics of the last evaluation made), ``final_at`` (its
  version, time and arrival count) and, when that evaluation is not of the model at the end of
  the run (a diverged or failed run's last model is not evaluated), ``final_note`` saying so.

Rows are streamed to disk and flushed regularly, so a run stopped by Ctrl-C, or even killed, leaves
tables that :func:`load` reads. Floats are written with ``repr`` so that a history read back is
bit-identical to the one recorded.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from asyncopt.errors import ConfigError, check_choice

if TYPE_CHECKING:
    import pandas as pd

ARRIVAL_COLUMNS = ("now", "worker", "version", "delay", "loss", "action", "stepped",
                   "compute_time", "latency", "server_time")
EVALUATION_HEAD = ("now", "version", "arrivals")
ACTIONS = ("step", "buffer", "drop", "reject", "cancel", "lost", "restart")


@dataclass
class History:
    """A recorded run: column arrays for both tables, plus the summary and the config."""

    arrivals: dict[str, np.ndarray]
    evaluations: dict[str, np.ndarray]
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def num_arrivals(self) -> int:
        return len(self.arrivals.get("now", ()))

    def final(self, metric: str) -> float:
        """The last evaluated, non-NaN value of ``metric`` (NaN when there is none)."""
        values = self.evaluations.get(metric)
        measured = [] if values is None else [v for v in values if not math.isnan(v)]
        return float(measured[-1]) if measured else math.nan

    def to_pandas(self, table: str = "evaluations") -> pd.DataFrame:
        """One table as a ``pandas.DataFrame``, a row per record: ``"evaluations"`` (now,
        version, arrivals and each metric) or ``"arrivals"`` (now, worker, version, delay, loss,
        action, stepped, compute_time, latency, server_time). pandas is optional
        (``pip install pandas``)."""
        columns = {"evaluations": self.evaluations, "arrivals": self.arrivals}
        check_choice("table", table, columns)
        try:
            import pandas
        except ImportError as error:
            raise ImportError("History.to_pandas needs pandas, which asyncopt does not "
                              "install: pip install pandas (or asyncopt[pandas])") from error
        return pandas.DataFrame(columns[table])


class Recorder:
    """Collects rows in memory and, when ``run_dir`` is given, streams them to CSV files."""

    def __init__(self, run_dir: str | Path | None = None, flush_every: int = 2048) -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.flush_every = flush_every
        self._arrivals: list[tuple] = []
        self._evaluations: list[tuple] = []
        self._metric_names: tuple[str, ...] | None = None
        self._flushed = 0  # rows of self._arrivals already written
        self._arrivals_file: TextIO | None = None
        self._evaluations_file: TextIO | None = None
        self.summary: dict[str, Any] = {}
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._arrivals_file = open(self.run_dir / "arrivals.csv", "w", newline="")
            self._arrivals_file.write(",".join(ARRIVAL_COLUMNS) + "\n")

    @property
    def rows(self) -> list[tuple]:
        """The arrival rows so far, in ``ARRIVAL_COLUMNS`` order (the live list: read only)."""
        return self._arrivals

    def arrival(self, now: float, worker: int, version: int, delay: int, loss: float,
                action: str, compute_time: float, latency: float = math.nan,
                server_time: float = math.nan) -> None:
        # one append is the whole record: a Ctrl-C can never leave a row half-kept
        self._arrivals.append((now, worker, version, delay, loss, action,
                               1 if action == "step" else 0, compute_time, latency, server_time))
        if self._arrivals_file is not None and (
                len(self._arrivals) - self._flushed >= self.flush_every):
            self.flush()

    def tally(self) -> tuple[int, dict[str, int], float, int]:
        """From the recorded rows: arrivals (rows that are gradients, not cancel/lost/restart),
        the count of each action, and the mean and max delay of used (step/buffer) arrivals."""
        counts = dict.fromkeys(ACTIONS, 0)
        delays = []
        for row in self._arrivals:
            counts[row[5]] += 1
            if row[5] in ("step", "buffer"):
                delays.append(row[3])
        arrivals = len(self._arrivals) - counts["cancel"] - counts["lost"] - counts["restart"]
        mean_delay = sum(delays) / len(delays) if delays else 0.0
        return arrivals, counts, mean_delay, max(delays, default=0)

    def evaluation(self, now: float, version: int, arrivals: int,
                   metrics: dict[str, float]) -> None:
        if self._metric_names is None:
            self._metric_names = tuple(metrics)
            if self.run_dir is not None:
                self._evaluations_file = open(self.run_dir / "evaluations.csv", "w", newline="")
                self._evaluations_file.write(
                    ",".join(EVALUATION_HEAD + self._metric_names) + "\n")
        row = (now, version, arrivals,
               *(float(metrics.get(m, math.nan)) for m in self._metric_names))
        self._evaluations.append(row)
        if self._evaluations_file is not None:
            self._evaluations_file.write(",".join(_text(v) for v in row) + "\n")
            self.flush()

    def flush(self) -> None:
        if self._arrivals_file is not None:
            end = len(self._arrivals)
            text = "".join(_arrival_line(row) for row in self._arrivals[self._flushed:end])
            self._arrivals_file.write(text)
            # counted as written only once written: a Ctrl-C while the lines are being formatted
            # must leave them to the final flush, not lose them
            self._flushed = end
            self._arrivals_file.flush()
        if self._evaluations_file is not None:
            self._evaluations_file.flush()

    def finish(self, summary: dict[str, Any]) -> None:
        """Flush and close the tables, then write ``summary.json`` atomically."""
        self.summary = summary
        self.flush()
        for handle in (self._arrivals_file, self._evaluations_file):
            if handle is not None:
                handle.close()
        self._arrivals_file = self._evaluations_file = None
        if self.run_dir is not None:
            write_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=2,
                                                                   default=_json_default))

    def history(self) -> History:
        arrivals = _columns(self._arrivals, ARRIVAL_COLUMNS)
        names = EVALUATION_HEAD + (self._metric_names or ())
        return History(arrivals, _columns(self._evaluations, names), dict(self.summary))


def load(run_dir: str | Path) -> History:
    """Read a run directory back. A missing summary (killed run) or a cut last line is tolerated."""
    run_dir = Path(run_dir)
    if not (run_dir / "arrivals.csv").exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory: it has no arrivals.csv")
    arrivals = _read_csv(run_dir / "arrivals.csv")
    evaluations = _read_csv(run_dir / "evaluations.csv")
    summary_path = run_dir / "summary.json"
    summary = {"status": "unknown", "reason": "summary.json missing: the run did not finish "
               "cleanly"}
    if summary_path.exists():
        try:
            summary = json.loads(summary_path.read_text())
        except (ValueError, UnicodeDecodeError) as error:  # as good as missing: say so
            summary = {"status": "unknown", "reason": f"summary.json unreadable ({error})"}
    config: dict[str, Any] = {}
    if (run_dir / "config.toml").exists():
        import tomllib

        try:
            config = tomllib.loads((run_dir / "config.toml").read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise ConfigError("run directory", str(run_dir), f"a readable config.toml "
                              f"({error})") from error
    return History(arrivals, evaluations, summary, config)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: never half-written."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _arrival_line(row: tuple) -> str:
    now, worker, version, delay, loss, action, stepped, compute_time, latency, server = row
    return (f"{now!r},{worker},{version},{delay},{_text(loss)},{action},{stepped},"
            f"{compute_time!r},{_text(latency)},{_text(server)}\n")


def _columns(rows: list[tuple], names: tuple[str, ...]) -> dict[str, np.ndarray]:
    if not rows:
        return {name: np.array([]) for name in names}
    return {name: np.array(values) for name, values in zip(names, zip(*rows, strict=True),
                                                           strict=True)}


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        return {}
    try:
        text = path.read_text()
    except UnicodeDecodeError as error:
        raise ConfigError("run directory", str(path.parent), f"a readable {path.name} "
                          f"({error})") from error
    if text and not text.endswith("\n"):  # a killed run may leave a cut last line
        text = text[: text.rfind("\n") + 1]
    head, _, body = text.partition("\n")
    if not head:
        return {}
    columns = _split_columns(head, body) if '"' not in text and "\r" not in text else None
    if columns is None:  # quoted fields or rows of another length: the csv module's way
        reader = csv.reader(io.StringIO(text))
        header = next(reader)
        rows = [row for row in reader if len(row) == len(header)]
        columns = dict(zip(header, zip(*rows, strict=True) if rows else [()] * len(header),
                           strict=True))
    return {name: _parse_column(values) for name, values in columns.items()}


def _split_columns(head: str, body: str) -> dict[str, list[str]] | None:
    """The columns of an unquoted table whose every row has the header's length, split in
    one pass (the recorder's own files: millions of rows in seconds); None otherwise."""
    names = head.split(",")
    lines = body.count("\n")
    fields = body.replace("\n", ",").split(",")[:-1] if lines else []
    if len(fields) != lines * len(names):
        return None
    return {name: fields[k::len(names)] for k, name in enumerate(names)}


def _parse_column(values: Sequence[str]) -> np.ndarray:
    """A column as int64 (every value an integer), float64 (numbers, "" as NaN) or objects;
    ``int`` and ``float`` mapped in C over the column, so a history reads back bit-identical
    and fast."""
    for kind, dtype in ((int, np.int64), (float, np.float64)):
        try:
            return np.array(list(map(kind, values)), dtype=dtype)
        except ValueError:
            pass  # not every value is of this kind ("" included): try the next
    try:
        return np.array([float(v) if v != "" else math.nan for v in values], dtype=np.float64)
    except ValueError:
        return np.array(values, dtype=object)


def _text(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
