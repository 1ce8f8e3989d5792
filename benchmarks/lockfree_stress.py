"""How often does a lock-free run blow up in its first steps? Issue 15, item 6's stress count.

Lock-free workers (Hogwild!) share the model and the optimizer's state without a lock, so a
worker may read another's freshly written first moment m while the second moment v does not
hold that gradient yet: Adam-type ratios m/(√v + ε) are then unbounded (see
:func:`asyncopt.rules.transforms.moment_ratio_bound`). This runs ``--runs`` short lock-free runs
per rule (the quickstart MLP on digits, 2 worker processes, the first ``--steps`` steps, each
run its own seed) and counts the runs whose minibatch loss exceeds ``BLOWUP`` × its first loss
anywhere in the history: a blow-up. It counts events, it times nothing: the machine's load
changes the interleavings, so the count is only comparable between trees run alike, e.g.

    .venv/bin/python benchmarks/lockfree_stress.py                       # this tree
    PYTHONPATH=<old tree>/src .venv/bin/python benchmarks/lockfree_stress.py --label before

(from ``benchmarks/``, about 3 s a run).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from results import write_section

import asyncopt

RULES = {"amsgrad": {"name": "amsgrad", "lr": 0.003, "eps": 1e-8},
         "adam": {"name": "adam", "lr": 0.003},
         "momentum": {"name": "momentum", "lr": 0.05}}
BLOWUP = 10.0


def blew_up(rule: dict, seed: int, steps: int) -> tuple[bool, float]:
    """Whether a run blew up, and its largest loss over its first loss."""
    result = asyncopt.train(
        _problem(seed), rule, "asgd",
        budget={"steps": steps}, evaluation={"every": steps}, seed=seed, runtime="processes",
        runtime_options={"mode": "lockfree"})
    losses = result.history.arrivals["loss"]
    losses = losses[np.isfinite(losses)]
    if len(losses) == 0:
        return True, float("inf")
    worst = float(losses.max() / losses[0])
    return worst > BLOWUP, worst


def _problem(seed: int):
    from asyncopt.problems.registry import make_problem

    return make_problem({"name": "mlp", "dataset": "digits", "batch_size": 16}, 2, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--label", default="this tree", help="names the RESULTS.md section")
    args = parser.parse_args()
    tree = os.path.dirname(os.path.dirname(asyncopt.__file__))
    lines = [f"asyncopt from `{tree}`; {args.runs} lock-free runs of {args.steps} steps per "
             f"rule, 2 worker processes; a blow-up: a minibatch loss above {BLOWUP:g}× the "
             f"first. Load average {os.getloadavg()[0]:.1f} at the start.\n",
             "| rule | blow-ups | worst loss / first loss (median; max) |", "|---|---|---|"]
    for name, rule in RULES.items():
        outcomes = [blew_up(rule, seed, args.steps) for seed in range(args.runs)]
        worst = [w for _, w in outcomes]
        lines.append(f"| {name} | {sum(b for b, _ in outcomes)} of {args.runs} | "
                     f"{np.median(worst):.2f}; {max(worst):.3g} |")
        print(lines[-1], flush=True)
    print("\n".join(lines))
    write_section(f"Lock-free stress: blow-ups in the first steps ({args.label})",
                  "python benchmarks/lockfree_stress.py " + " ".join(sys.argv[1:]),
                  "\n".join(lines))


if __name__ == "__main__":
    main()
