"""The built-in TensorBoard writer: a callback (:mod:`asyncopt.callbacks`).

    asyncopt.train(..., run_dir="runs/a", callbacks=[asyncopt.TensorBoard()])
    # or in a config: [output] tensorboard = true
    tensorboard --logdir runs

At each evaluation, with the server's version as the step (the ``version`` of
``evaluations.csv``), it writes

* ``metrics/<name>``: each metric of the evaluation (``loss``, ``grad_norm_sq`` = ‖∇f‖²,
  ``test_loss``, ``accuracy``, ...);
* ``delay/mean``, ``delay/max`` and the histogram ``delay``: the delays of the gradients used
  (``step`` and ``buffer`` rows, as the summary counts them) since the previous evaluation;
* ``throughput/steps_per_second``, ``throughput/arrivals_per_second``: since the previous
  evaluation, on the runtime's clock (virtual seconds in the simulator, so that it describes the
  simulated system, not the simulator; wall seconds in the real runtimes);
* ``time/clock`` (the runtime's clock) and ``time/wall`` (wall seconds since the start);
* ``arrivals/per_worker``: each worker's gradients so far (every row but cancel, lost,
  restart) as a histogram with one bucket per worker, and with up to ``WORKER_SCALARS`` workers
  also as scalars ``arrivals/worker_<i>`` (a scalar costs about as much as a histogram, so a
  thousand of them would cost more than the simulated run's own evaluation);

and the resolved config (as TOML) at the start and ``summary.json`` at the end, as text. The
event files go to ``RUN_DIR/tensorboard/`` (or ``log_dir``), through
``torch.utils.tensorboard``, which needs the ``tensorboard`` package (``pip install
asyncopt[tensorboard]``). They are flushed at each evaluation, so a live ``tensorboard`` shows
a run as it goes and a killed run keeps all but its last evaluation's points.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from asyncopt.callbacks import Arrivals, Begin, Callback, Evaluated
from asyncopt.errors import ConfigError

USED = ("step", "buffer")
"""Rows whose delay the delay statistics count: the gradients the server used."""
NOT_GRADIENTS = ("cancel", "lost", "restart")
WORKER_SCALARS = 32
"""Up to this many workers, each one's arrival count is also a scalar of its own."""


class TensorBoard(Callback):
    """Writes a run's metrics, delays, throughput and per-worker arrivals for TensorBoard."""

    def __init__(self, log_dir: str | Path | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise ImportError("the TensorBoard callback needs the tensorboard package: pip "
                              "install tensorboard (or asyncopt[tensorboard])") from error
        self._writer_class = SummaryWriter
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.writer: Any = None

    def on_begin(self, event: Begin) -> None:
        if self.log_dir is None and event.run_dir is None:
            raise ConfigError("TensorBoard.log_dir", None, "a directory, or a run with a "
                              "run_dir (the events then go to RUN_DIR/tensorboard)")
        log_dir = self.log_dir if self.log_dir is not None else event.run_dir / "tensorboard"
        self.writer = self._writer_class(log_dir=str(log_dir))
        self.counts = np.zeros(event.num_workers, dtype=np.int64)
        self._delays: list[int] = []
        self._last: Evaluated | None = None
        if event.config is not None:
            from asyncopt.config import dumps

            self.writer.add_text("config", _code(dumps(event.config)), 0)

    def on_arrivals(self, event: Arrivals) -> None:
        counts, delays = self.counts, self._delays
        for row in event.rows:
            if row.action not in NOT_GRADIENTS:
                counts[row.worker] += 1
                if row.action in USED:
                    delays.append(row.delay)

    def on_evaluation(self, event: Evaluated) -> None:
        write, step = self.writer.add_scalar, event.version
        for name, value in event.metrics.items():
            write(f"metrics/{name}", value, step)
        if self._delays:
            delays = np.asarray(self._delays)
            write("delay/mean", float(delays.mean()), step)
            write("delay/max", int(delays.max()), step)
            self.writer.add_histogram("delay", delays, step)
            self._delays = []
        last = self._last
        if last is not None and event.now > last.now:
            span = event.now - last.now
            write("throughput/steps_per_second", (event.version - last.version) / span, step)
            write("throughput/arrivals_per_second", (event.arrivals - last.arrivals) / span,
                  step)
        write("time/clock", event.now, step)
        write("time/wall", event.wall, step)
        self._per_worker(step)
        self._last = event
        self.writer.flush()

    def _per_worker(self, step: int) -> None:
        counts = self.counts
        edges = np.arange(len(counts), dtype=np.float64) + 0.5  # bucket i: (i - 0.5, i + 0.5]
        self.writer.add_histogram_raw(
            "arrivals/per_worker", min=0, max=len(counts) - 1, num=int(counts.sum()),
            sum=float(counts @ np.arange(len(counts))),
            sum_squares=float(counts @ np.arange(len(counts)) ** 2),
            bucket_limits=edges.tolist(), bucket_counts=counts.tolist(), global_step=step)
        if len(counts) <= WORKER_SCALARS:
            for worker, count in enumerate(counts.tolist()):
                self.writer.add_scalar(f"arrivals/worker_{worker}", count, step)

    def on_end(self, summary: dict[str, Any]) -> None:
        if self.writer is None:
            return
        self.writer.add_text("summary", _code(json.dumps(summary, indent=2, default=str)),
                             self._last.version if self._last is not None else 0)
        self.writer.close()
        self.writer = None


def _code(text: str) -> str:
    """``text`` as a Markdown code block (TensorBoard renders text summaries as Markdown)."""
    return "\n".join("    " + line for line in text.splitlines())
