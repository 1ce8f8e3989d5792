"""Simulator speed (issue 7): simulated gradients per wall second on the Ringleader comparison,
all seven methods, against a plain loop that calls autograd once per gradient.

    .venv/bin/python benchmarks/sim_speed.py [config] [arrivals]

Setting: ``config`` (default configs/ringleader_mnist.toml: 100 workers, MNIST subset, MLP
784-128-10 ≈ 100k parameters, batch 4, equal-size Dirichlet(0.1) shards, the paper's speeds);
every ``[[methods]]`` entry with its tuned step size, the budget replaced by ``arrivals`` arrivals
per method and one evaluation at the start and one at the end. Rows, each the total arrivals of
all methods over their total wall time (best of REPEATS):

(a) a plain ``for`` loop, 1 torch thread: per gradient a random worker's minibatch,
    ``functional_call`` and ``torch.autograd.grad`` (no simulator, no server step);
(b) the simulator, ``gradient = "autograd"``, ``runtime_options.batch = 1``;
(c) the simulator, ``gradient = "closed_form"``, ``batch = 1``;
(d) the simulator, ``gradient = "closed_form"``, ``batch = 64`` (opt-in; the default is 1):
    pending gradients at one snapshot evaluated together (large for Malenia and Rennala, which
    restart every worker at one model).

Goal: (d) ≥ 3 × (a). A lever's share is its factor's part of the log of (d)/(a).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from results import one_thread, write_section
from torch.func import functional_call

from asyncopt import config as configuration
from asyncopt.api import train
from asyncopt.problems.registry import make_problem
from asyncopt.problems.supervised import SupervisedProblem
from asyncopt.rules.registry import make_rule
from asyncopt.runtimes.coordinator import Evaluation
from asyncopt.runtimes.sim.speed import make_speed_model

CONFIG = Path(__file__).parents[1] / "configs" / "ringleader_mnist.toml"
REPEATS = 3
VARIANTS = {"b": ("autograd", 1), "c": ("closed_form", 1), "d": ("closed_form", 64)}


def plain_loop(problem: SupervisedProblem, count: int) -> float:
    """Gradients per second of autograd in a bare loop over random workers' minibatches."""
    params = problem.init_params(torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    workers = torch.randint(problem.num_workers, (count,), generator=generator).tolist()
    shards = [(problem.X_train[s], problem.y_train[s]) for s in problem.shards]
    start = time.perf_counter()
    for worker in workers:
        X, y = shards[worker]
        picks = torch.randint(len(y), (problem.batch_size,), generator=generator)
        leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
        outputs = functional_call(problem.module, leaves, (X.index_select(0, picks),))
        loss = F.cross_entropy(outputs, y.index_select(0, picks))
        torch.autograd.grad(loss, list(leaves.values()))
        loss.item()
    return count / (time.perf_counter() - start)


def simulated(problem, method: dict, batch: int, arrivals: int) -> float:
    """Arrivals per wall second of the simulator running ``method`` for ``arrivals`` arrivals."""
    workers, seed = method["workers"], method["seed"]
    start = time.perf_counter()
    result = train(problem, make_rule(method["rule"], workers), method["protocol"],
                   speed=make_speed_model(method["speed"], workers, seed), seed=seed,
                   budget={"arrivals": arrivals}, evaluation=Evaluation(10 * arrivals, "steps"),
                   runtime_options={"batch": batch})
    wall = time.perf_counter() - start
    if result.summary["arrivals"] != arrivals:  # a diverged run would measure nothing
        raise RuntimeError(f"benchmark run stopped early: {result.summary['reason']}")
    return arrivals / wall


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else CONFIG
    arrivals = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    raw = configuration.read(path)
    methods = {label: configuration.load(path, method=label)
               for label, _ in configuration.methods(raw)}
    first = next(iter(methods.values()))
    workers, seed = first["workers"], first["seed"]
    problems = {g: make_problem({**first["problem"], "gradient": g}, workers, seed)
                for g in ("autograd", "closed_form")}
    with one_thread():  # what the simulator runs with (runtime_options.threads = 1)
        plain = max(plain_loop(problems["autograd"], arrivals) for _ in range(REPEATS))
        rates = {(label, row): max(simulated(problems[gradient], method, batch, arrivals)
                                   for _ in range(REPEATS))
                 for label, method in methods.items()
                 for row, (gradient, batch) in VARIANTS.items()}
    # overall: all methods' arrivals over their summed wall time (a harmonic mean of the rates)
    overall = {row: len(methods) / sum(1 / rates[label, row] for label in methods)
               for row in VARIANTS}
    factors = {"simulator (server step, protocol, event loop) with autograd": overall["b"] / plain,
               "closed-form gradients": overall["c"] / overall["b"],
               "batched evaluation at shared snapshots": overall["d"] / overall["c"]}
    total = math.log(overall["d"] / plain)
    body = (
        f"{path.name}: {workers} workers, {first['problem']['dataset']} MLP "
        f"(hidden {first['problem']['hidden']}), batch {first['problem']['batch_size']}, "
        f"{first['problem']['partition']}({first['problem']['alpha']}); {arrivals:,} arrivals "
        f"per method, best of {REPEATS}, 1 torch thread. Gradients per wall second:\n\n"
        "| method | (b) autograd | (c) closed form | (d) closed form + batched | (d) / (a) |\n"
        "|---|---|---|---|---|\n"
        + "".join(f"| {label} | {rates[label, 'b']:,.0f} | {rates[label, 'c']:,.0f} | "
                  f"{rates[label, 'd']:,.0f} | {rates[label, 'd'] / plain:.2f} |\n"
                  for label in methods)
        + f"| **all methods** | {overall['b']:,.0f} | {overall['c']:,.0f} | {overall['d']:,.0f} "
        f"| **{overall['d'] / plain:.2f}** |\n\n"
        f"(a) plain autograd loop: {plain:,.0f} gradients / s ({1e6 / plain:.0f} µs each). "
        f"Overall (d)/(a) = {overall['d'] / plain:.2f}, (c)/(a) = {overall['c'] / plain:.2f} "
        "(goal ≥ 3).\n\n"
        "| lever | factor | share of log((d)/(a)) |\n|---|---|---|\n"
        + "".join(f"| {name} | × {factor:.2f} | {math.log(factor) / total:+.0%} |\n"
                  for name, factor in factors.items()))
    print(body)
    write_section("Simulator speed (issue 7)", f"python benchmarks/sim_speed.py {path.name} "
                  f"{arrivals}", body)


if __name__ == "__main__":
    main()
