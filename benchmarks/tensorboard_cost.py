"""The TensorBoard writer's cost per evaluation (asyncopt.TensorBoard).

    .venv/bin/python benchmarks/tensorboard_cost.py              # writes its RESULTS.md section
    .venv/bin/python benchmarks/tensorboard_cost.py --seconds 1 --smoke   # a quick check only

Two views of the same cost:

* the writer alone: ``on_arrivals`` for the rows between two evaluations, then
  ``on_evaluation`` (scalars, the delay and per-worker histograms, a scalar per worker up to
  ``WORKER_SCALARS``, a flush), called directly with realistic events, for a few worker
  counts;
* a simulated run with and without the writer (interleaved, best of each), whose difference
  in wall time divided by the number of evaluations includes everything the callback path adds
  to a run (rows turned into events, the batches, the writer's thread).

The simulator is where the cost shows: its evaluations and arrivals are cheap, so the writer is
a larger share of its wall time than of any real runtime's.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from results import ms_per_call, one_thread, write_section

from asyncopt.api import train
from asyncopt.callbacks import Arrivals, Begin, Evaluated, Row
from asyncopt.problems.registry import make_problem
from asyncopt.rules.registry import make_rule
from asyncopt.tensorboard import TensorBoard

METRICS = {"loss": 0.25, "grad_norm_sq": 1e-3, "test_loss": 0.3, "accuracy": 0.9}


def writer_alone(workers: int, rows_between: int, seconds: float, log_dir: Path) -> float:
    """Milliseconds per evaluation of the writer called directly."""
    writer = TensorBoard(log_dir / f"alone-{workers}")
    writer.on_begin(Begin(None, workers, None))
    rows = [Row(0.0, i % workers, i, i % 7, 0.5, "step", 1, 0.01, 0.0, 0.0)
            for i in range(rows_between)]
    version = [0]

    def one_evaluation() -> None:
        version[0] += rows_between
        writer.on_arrivals(Arrivals(float(version[0]), version[0], rows))
        writer.on_evaluation(Evaluated(float(version[0]), version[0], version[0], METRICS,
                                       float(version[0])))

    try:
        return ms_per_call(one_evaluation, seconds)
    finally:
        writer.on_end({"status": "completed"})


def in_a_run(workers: int, steps: int, every: int, repeats: int, log_dir: Path
             ) -> tuple[float, float]:
    """(ms per evaluation that the writer adds to a simulated run, the run's ms per
    evaluation without it), best of ``repeats`` interleaved runs each."""
    problem = make_problem({"name": "quadratic", "dim": 10, "noise": 0.1}, workers, 0)
    best = {False: float("inf"), True: float("inf")}
    for repeat in range(repeats):
        for with_writer in (False, True):
            callbacks = [TensorBoard(log_dir / f"run-{workers}-{repeat}")] if with_writer else []
            start = time.perf_counter()
            result = train(problem, make_rule({"name": "sgd", "lr": 5e-4}, workers), "asgd",
                           budget={"steps": steps}, evaluation={"every": every},
                           callbacks=callbacks)
            if result.summary["status"] != "completed":  # a shorter run would measure less
                raise RuntimeError(f"benchmark run stopped: {result.summary['reason']}")
            best[with_writer] = min(best[with_writer], time.perf_counter() - start)
    evaluations = steps // every + 1
    return ((best[True] - best[False]) / evaluations * 1e3, best[False] / evaluations * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="time each direct measurement this long")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved runs of each kind")
    parser.add_argument("--smoke", action="store_true",
                        help="short runs, print only: do not write RESULTS.md")
    args = parser.parse_args()
    steps = 2_000 if args.smoke else 20_000
    repeats = 1 if args.smoke else args.repeats
    rows = []
    with one_thread(), tempfile.TemporaryDirectory() as scratch:
        for workers in (8, 100, 1000):
            alone = writer_alone(workers, 100, args.seconds, Path(scratch))
            added, run = in_a_run(workers, steps, 100, repeats, Path(scratch))
            rows.append(f"| {workers} | {alone:.3f} | {added:.3f} | {run:.3f} |")
    body = ("| workers | writer alone, ms per evaluation | added to a simulated run, ms per "
            "evaluation | the run without it, ms per evaluation |\n|---|---|---|---|\n"
            + "\n".join(rows) + f"\n\nQuadratic d = 10, ASGD + SGD, an evaluation every 100 "
            f"steps, {steps:,} steps; direct calls timed for {args.seconds:g} s, runs best of "
            f"{repeats} interleaved.")
    print(body)
    if not args.smoke:
        write_section("TensorBoard writer", "python benchmarks/tensorboard_cost.py", body)


if __name__ == "__main__":
    main()
