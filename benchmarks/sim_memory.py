"""Peak memory of the simulator with 1,000 workers (issue 7): peak RSS of one process that
builds the Ringleader comparison's problem and simulates each method for a few rounds.

    .venv/bin/python benchmarks/sim_memory.py [workers] [arrivals]

Setting: configs/ringleader_mnist.toml (MNIST subset, MLP 784-128-10 ≈ 100k parameters,
d ≈ 0.4 MB as float32) with ``workers`` (default 1,000) workers — the 4,000 training images
then give 4 per worker — each method run in a fresh child process for ``arrivals`` (default
3 × workers) arrivals, so that the per-worker tables fill. The floor is what the tables need:
Ringleader keeps two n × d tables (current and buffer, 2 × 1,000 × 0.4 MB ≈ 0.8 GB), Malenia
and IA²SGD one.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from results import write_section

CONFIG = Path(__file__).parents[1] / "configs" / "ringleader_mnist.toml"
CHILD = """
import resource, sys
from asyncopt import config as configuration
from asyncopt.api import train
from asyncopt.problems.registry import make_problem
from asyncopt.rules.registry import make_rule
from asyncopt.config import Evaluation
from asyncopt.runtimes.sim.speed import make_speed_model
path, label, workers, arrivals = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
method = configuration.load(path, method=label if label != "-" else "ASGD")
problem = make_problem(method["problem"], workers, method["seed"])
if label != "-":
    train(problem, make_rule(method["rule"], workers), method["protocol"],
          speed=make_speed_model(method["speed"], workers, method["seed"]), seed=method["seed"],
          budget={"arrivals": arrivals}, evaluation=Evaluation(10 * arrivals, "steps"))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def peak_mb(label: str, workers: int, arrivals: int) -> float:
    """Peak RSS (MB) of a child that builds the problem and, unless label is '-', runs it."""
    out = subprocess.run([sys.executable, "-c", CHILD, str(CONFIG), label, str(workers),
                          str(arrivals)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    workers = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    arrivals = int(sys.argv[2]) if len(sys.argv) > 2 else 3 * workers
    from asyncopt import config as configuration

    labels = [label for label, _ in configuration.methods(configuration.read(CONFIG))]
    base = peak_mb("-", workers, arrivals)
    peaks = {label: peak_mb(label, workers, arrivals) for label in labels}
    body = (f"configs/ringleader_mnist.toml with {workers:,} workers (MNIST subset, MLP "
            f"784-128-10, ~100k parameters), {arrivals:,} arrivals per method, each in a fresh "
            f"process. Peak RSS (`ru_maxrss`):\n\n| run | peak RSS (MB) |\n|---|---|\n"
            f"| problem built, no simulation | {base:,.0f} |\n"
            + "".join(f"| {label} | {peak:,.0f} |\n" for label, peak in peaks.items())
            + "\nThe floor: one n × d gradient table (Malenia, IA²SGD; Ringleader's second table "
            "fills only for workers that buffer), and the model version each in-flight worker "
            "holds (the ASGD row).")
    print(body)
    write_section("Simulator memory, 1,000 workers (issue 7)",
                  f"python benchmarks/sim_memory.py {workers} {arrivals}", body)


if __name__ == "__main__":
    main()
