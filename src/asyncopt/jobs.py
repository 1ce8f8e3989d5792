"""Independent runs in parallel processes, for ``compare``, ``tune`` and ``sweep`` (``--jobs N``).

Each run is one resolved configuration; :func:`run_all` runs them in a pool of ``jobs`` worker
processes and yields their outcomes **in the order given**, so a caller's output (tables, files,
progress lines) is the same as one run after the other. The results are the same too: a
simulated run depends only on its configuration and seed (the simulator is deterministic and
sets its own thread count), never on which process ran it or when.

Only simulated runs go to the pool. A run on the ``processes`` or ``ray`` runtime starts its own
worker processes and its wall clock is what it measures (speed-ups), so such runs go one at a
time in this process, whatever ``jobs`` says. Worker processes are started with ``spawn``: a
forked child of a process whose PyTorch thread pool already ran can hang.

A signal to the whole process group (Ctrl-C, ``timeout``, a scheduler) reaches every worker: its
run ends as interrupted and the set stops (:func:`.runtimes.signals.reraise`). A worker whose
main process is gone without stopping it (``kill`` of that process alone, SIGKILL, a crash)
stops its run the same way within a second, as if it had received SIGTERM, and exits: no run
goes on orphaned.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

from asyncopt.errors import check_int
from asyncopt.record import History
from asyncopt.runtimes import signals


class Task(NamedTuple):
    """One run: a resolved configuration, where to record it (None: not saved)."""

    config: Mapping[str, Any]
    run_dir: Path | None = None


class Outcome(NamedTuple):
    """What a run gives back: its summary, each metric's last non-NaN evaluation
    (:meth:`History.final`), and its history when it was saved to a run directory."""

    summary: dict[str, Any]
    finals: dict[str, float]
    history: History | None


def default_jobs() -> int:
    """The number of cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_jobs(value: Any) -> int:
    """``--jobs`` checked: an integer ≥ 1."""
    return check_int("--jobs", value, 1)


def run_all(tasks: Sequence[Task], jobs: int, *, progress: bool = False) -> Iterator[Outcome]:
    """The outcome of every task, in order; simulated ones ``jobs`` at a time in processes.
    ``progress`` shows each run's own progress bar when runs go one at a time, and one bar over
    the whole set (runs finished, in whatever order they finish) when they go in parallel."""
    jobs = check_jobs(jobs)
    parallel = [i for i, task in enumerate(tasks) if task.config.get("runtime") == "sim"]
    if jobs == 1 or len(parallel) <= 1:
        for task in tasks:
            yield _stopped_by_a_signal(run_task(task, progress))
        return
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(parallel)), mp_context=context,
                               initializer=watch_parent)
    bar = _set_bar(len(tasks)) if progress else None
    try:
        futures = {i: pool.submit(_pooled, tasks[i]) for i in parallel}
        here = 0  # runs on a real runtime, made in this process between the others
        for i, task in enumerate(tasks):
            if i in futures:
                outcome = futures[i].result()
            else:
                outcome, here = run_task(task, progress=False), here + 1
            if bar is not None:  # every run finished so far, in whatever order they finished
                bar.n = here + sum(future.done() for future in futures.values())
                bar.refresh()
            yield _stopped_by_a_signal(outcome)
    finally:  # after an error or Ctrl-C, runs not yet started never start
        pool.shutdown(cancel_futures=True)
        if bar is not None:
            bar.close()


_parent: int | None = None  # in a pool worker: the main process


def watch_parent(every: float = 1.0) -> None:
    """In a pool worker: a daemon thread that sends this process SIGTERM once its parent is
    gone (see the module docstring)."""
    global _parent
    parent = _parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="asyncopt-watch-parent", daemon=True).start()


def _pooled(task: Task) -> Outcome:
    """:func:`run_task` in a pool worker. Once the main process is gone the outcome is not sent
    back (nobody reads it, and the sibling workers hold the result pipe open, so sending a big
    history would block forever): the run has written its directory, the worker exits."""
    outcome = run_task(task)
    if os.getppid() != _parent:
        os._exit(128 + signal.SIGTERM)
    return outcome


def _set_bar(total: int) -> Any:
    """A tqdm bar over ``total`` runs."""
    from tqdm import tqdm

    return tqdm(total=total, unit="run", desc="runs", dynamic_ncols=True, leave=False)


def _stopped_by_a_signal(outcome: Outcome) -> Outcome:
    """A run that a signal stopped stops the whole set (:func:`.runtimes.signals.reraise`)."""
    signals.reraise(outcome.summary)
    return outcome


def run_task(task: Task, progress: bool = False) -> Outcome:
    """One run (module level, so that a worker process can import it)."""
    from asyncopt.api import run

    if task.run_dir is not None:
        task.run_dir.mkdir(parents=True)
    try:
        result = run(task.config, save=task.run_dir is not None, run_dir=task.run_dir,
                     progress=progress)
    except BaseException:
        if task.run_dir is not None and not any(task.run_dir.iterdir()):
            task.run_dir.rmdir()  # refused before anything ran: no trace
        raise
    history = result.history
    finals = {metric: history.final(metric) for metric in history.evaluations}
    return Outcome(dict(result.summary), finals, history if task.run_dir is not None else None)
