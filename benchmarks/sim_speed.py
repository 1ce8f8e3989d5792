"""Simulator speed (issue 7): simulated gradients per wall second on the Ringleader comparison,
against a plain loop that calls autograd once per gradient.

    .venv/bin/python benchmarks/sim_speed.py [arrivals]

Setting: configs/ringleader.toml, method Ringleader (100 workers, digits, MLP 64-128-10, batch 4,
Dirichlet(0.1) shards, linear speeds with growing half-normal noise), with the budget replaced by
a fixed number of arrivals and one evaluation at the start and one at the end. Rows:

(a) a plain ``for`` loop: per gradient, a random worker's minibatch, ``functional_call`` and
    ``torch.autograd.grad`` (no simulator, no server step);
(b) the simulator with ``problem.gradient = "autograd"``;
(c) the simulator with ``problem.gradient = "closed_form"`` (the default, "auto").

Goal: (c) ≥ 3 × (a). Every figure is the best of several runs (the machine is shared).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from results import write_section
from torch.func import functional_call

from asyncopt import config as configuration
from asyncopt.api import train
from asyncopt.problems.registry import make_problem
from asyncopt.problems.supervised import SupervisedProblem
from asyncopt.rules.registry import make_rule
from asyncopt.runtimes.coordinator import Evaluation
from asyncopt.runtimes.sim.speed import make_speed_model

CONFIG = Path(__file__).parents[1] / "configs" / "ringleader.toml"
REPEATS = 5


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


def simulated(config: dict, gradient: str, arrivals: int) -> tuple[float, float]:
    """(arrivals per wall second, share of wall time spent computing gradients) of the
    simulator on ``config`` with ``problem.gradient = gradient``."""
    workers, seed = config["workers"], config["seed"]
    problem = make_problem({**config["problem"], "gradient": gradient}, workers, seed)
    inner, spent = problem.loss_and_grad, [0.0]

    def timed(*args):  # shadows the method on this instance only
        begin = time.perf_counter()
        out = inner(*args)
        spent[0] += time.perf_counter() - begin
        return out

    problem.loss_and_grad = timed
    start = time.perf_counter()
    result = train(problem, make_rule(config["rule"], workers), config["protocol"],
                   speed=make_speed_model(config["speed"], workers, seed), seed=seed,
                   budget={"arrivals": arrivals}, evaluation=Evaluation(arrivals, "steps"))
    wall = time.perf_counter() - start
    if result.summary["arrivals"] != arrivals:  # a diverged run would measure nothing
        raise RuntimeError(f"benchmark run stopped early: {result.summary['reason']}")
    return arrivals / wall, spent[0] / wall


def per_gradient_us(spec: dict, gradient: str, batch_size: int, count: int = 3000) -> float:
    """Best-of-REPEATS µs per ``loss_and_grad`` call, cycling over the workers."""
    problem = make_problem({**spec, "gradient": gradient, "batch_size": batch_size}, 100, 0)
    params = problem.init_params(torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        for i in range(count):
            problem.loss_and_grad(params, i % 100, generator)
        best = min(best, (time.perf_counter() - start) / count)
    return best * 1e6


def best(measure, *args) -> tuple[float, ...]:
    runs = [measure(*args) for _ in range(REPEATS)]
    return max(runs, key=lambda run: run if isinstance(run, float) else run[0])


def main() -> None:
    arrivals = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    config = configuration.load(CONFIG, method="Ringleader")
    default_threads = torch.get_num_threads()
    plain_default = best(plain_loop, make_problem({**config["problem"], "gradient": "autograd"},
                                                  config["workers"], config["seed"]), arrivals)
    torch.set_num_threads(1)  # what the simulator runs with (runtime_options.threads = 1)
    plain = best(plain_loop, make_problem({**config["problem"], "gradient": "autograd"},
                                          config["workers"], config["seed"]), arrivals)
    (auto_rate, auto_share), (fast_rate, fast_share) = (
        best(simulated, config, gradient, arrivals) for gradient in ("autograd", "closed_form"))
    us = {(g, b): per_gradient_us(config["problem"], g, b)
          for b in (4, 32) for g in ("autograd", "closed_form")}
    torch.set_num_threads(default_threads)
    base = max(plain, plain_default)
    t_auto, t_fast = 1e6 / auto_rate, 1e6 / fast_rate
    # the speed-up over the default-threads loop is a product of one factor per lever; a
    # lever's share is its factor's part of the log of that product (negative: a cost)
    factors = {"1 torch thread": plain / plain_default, "simulator (server step, protocol, "
               "event loop) instead of a bare loop": auto_rate / plain,
               "closed-form gradients": fast_rate / auto_rate}
    total = math.log(fast_rate / plain_default)
    levers = "".join(f"| {name} | × {factor:.2f} | {math.log(factor) / total:+.0%} |\n"
                     for name, factor in factors.items())
    body = (
        f"Ringleader comparison setting (configs/ringleader.toml, 100 workers, digits MLP "
        f"64-128-10, batch 4, Dirichlet(0.1)), {arrivals:,} arrivals, best of {REPEATS}.\n\n"
        "| row | gradients / wall s | µs / gradient | share in gradients | × plain loop |\n"
        "|---|---|---|---|---|\n"
        f"| (a) plain autograd loop, {default_threads} torch threads | {plain_default:,.0f} | "
        f"{1e6 / plain_default:.0f} | 100 % | {plain_default / base:.2f} |\n"
        f"| (a) plain autograd loop, 1 torch thread | {plain:,.0f} | {1e6 / plain:.0f} | "
        f"100 % | {plain / base:.2f} |\n"
        f"| (b) simulator, gradient = autograd | {auto_rate:,.0f} | {t_auto:.0f} | "
        f"{auto_share:.0%} | {auto_rate / base:.2f} |\n"
        f"| (c) simulator, gradient = closed_form | {fast_rate:,.0f} | {t_fast:.0f} | "
        f"{fast_share:.0%} | **{fast_rate / base:.2f}** |\n\n"
        f"(c)/(a) = {fast_rate / base:.2f} (goal ≥ 3; (a) is the faster of its two rows). "
        f"In (c) the simulator's own work costs {t_fast * (1 - fast_share):.0f} µs per "
        f"gradient, the gradient {t_fast * fast_share:.0f} µs.\n\n"
        f"Levers, from the {default_threads}-thread plain loop to (c) "
        f"(× {fast_rate / plain_default:.2f} in all):\n\n"
        "| lever | factor | share of the speed-up (log scale) |\n|---|---|---|\n"
        + levers + "\n"
        "µs per `loss_and_grad` (100 workers, cycling; best of 5 × 3,000 calls, 1 thread):\n\n"
        "| batch | autograd | closed form | speed-up |\n|---|---|---|---|\n"
        + "".join(f"| {b} | {us['autograd', b]:.0f} | {us['closed_form', b]:.0f} | "
                  f"{us['autograd', b] / us['closed_form', b]:.1f}× |\n" for b in (4, 32)))
    print(body)
    write_section("Simulator speed (issue 7)", "python benchmarks/sim_speed.py", body)


if __name__ == "__main__":
    main()
