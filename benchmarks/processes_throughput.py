"""Throughput of the server-mode process runtime: gradients per second with 1 and 2 workers,
and with 2 workers and 2 concurrent parameter servers (``runtime_options.servers = 2``).

    .venv/bin/python benchmarks/processes_throughput.py

An MLP of 200,650 parameters, Linear(64, 512)-ReLU-Linear(512, 320)-ReLU-Linear(320, 10), on
digits (ASGD + SGD, so the server does one step and one model publication per gradient). The
rate is measured between the 50th and the last arrival of each run (start-up excluded), best of
``REPEATS``, and compared with one worker's rate: the goal (issue 3) is 2 workers ≥ 85 % of twice
one worker. With 2 servers the model's 6 tensors are split into 2 blocks of ~100k parameters,
each served by its own process. The reference row is the same gradient computed in a plain
loop in this process with one torch thread (no runtime at all).
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F
from results import ms_per_call, one_thread, write_section
from torch import nn

from asyncopt.api import train
from asyncopt.config import Evaluation
from asyncopt.problems.datasets import load_dataset
from asyncopt.problems.partition import partition
from asyncopt.problems.supervised import SupervisedProblem
from asyncopt.protocols.base import Server
from asyncopt.rules.registry import make_rule
from asyncopt.runtimes.common.generators import worker_generators
from asyncopt.runtimes.common.shared import GradientSlots, SharedModel, template

ARRIVALS, SKIP, REPEATS = 1500, 50, 3
BATCHES = (32, 128)


def mlp() -> nn.Module:
    """Module level, so that the worker processes can unpickle the factory."""
    return nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 320), nn.ReLU(),
                         nn.Linear(320, 10))


def problem(workers: int, batch_size: int) -> SupervisedProblem:
    data = load_dataset("digits", seed=0)
    shards = partition(data.y_train.numpy(), len(data.y_train), workers, "iid", seed=0)
    return SupervisedProblem(mlp, F.cross_entropy, data.X_train, data.y_train, shards,
                             batch_size=batch_size)


def serial_rate(batch_size: int, seconds: float = 2.0) -> float:
    """Gradients per second of a plain single-threaded loop in this process."""
    with one_thread():
        built = problem(1, batch_size)
        params = built.init_params(torch.Generator().manual_seed(0))
        generator = worker_generators(0, 1)[0]
        return 1e3 / ms_per_call(lambda: built.loss_and_grad(params, 0, generator), seconds)


def server_cost(seconds: float = 1.0) -> float:
    """ms the server spends per arrival (ASGD + SGD), in this process with one torch thread:
    copy the gradient out of its slot, the rule's step, publish the model."""
    with one_thread():
        built = problem(1, 32)
        server = Server(built.init_params(torch.Generator().manual_seed(0)),
                        make_rule({"name": "sgd", "lr": 0.01}, 1))
        model = SharedModel(template(server.params))
        slots = GradientSlots(model.like, 1)
        slots.write(0, built.loss_and_grad(server.params, 0, worker_generators(0, 1)[0])[1])

        def arrival() -> None:
            server.step(slots.take(0), delay=0, worker=0)
            model.publish(server.params, server.version)

        return ms_per_call(arrival, seconds)


def runtime_rate(workers: int, batch_size: int, servers: int = 1
                 ) -> tuple[float, float, float]:
    """Best of REPEATS: (gradients/s, median compute time per gradient in ms, mean delay)."""
    best = (0.0, 0.0, 0.0)
    for _ in range(REPEATS):
        result = train(problem(workers, batch_size), make_rule({"name": "sgd", "lr": 0.01},
                                                               workers), "asgd",
                       budget={"arrivals": ARRIVALS}, evaluation=Evaluation(10**9),
                       runtime="processes", runtime_options={"servers": servers})
        if result.summary["arrivals"] < ARRIVALS:
            raise RuntimeError(f"benchmark run stopped early: {result.summary['reason']}")
        now = result.history.arrivals["now"]
        rate = (len(now) - 1 - SKIP) / (now[-1] - now[SKIP])
        if rate > best[0]:
            compute = float(np.median(result.history.arrivals["compute_time"])) * 1e3
            best = (rate, compute, result.summary["mean_delay"])
    return best


def describe(server_ms: float) -> str:
    """What the table measures, and why 2 cores cannot show the 85 % goal."""
    return f"""ASGD + SGD, MLP 64-512-320-10 (200,650 parameters) on digits, {ARRIVALS} arrivals
per run, rate between arrival {SKIP} and the last, best of {REPEATS} runs; one torch thread per
process. "compute ms/grad" is the workers' own wall time per gradient (model read included);
its growth from 1 to 2 workers is the slowdown each worker suffers from sharing the cores.
"2 servers": `runtime_options.servers = 2`, the model's tensors split into 2 blocks of ~100k
parameters, each stepped and published by its own server process (the main process only
records).

Why 2 workers stay under 85 % of twice one worker on **{torch.get_num_threads()} cores**, in
figures: let c be a worker's time per gradient, s the server's per arrival (copy the gradient
out of its slot, SGD step, publish the model: s = {server_ms:.2f} ms, measured alone in one
process) and l the two pipe wake-ups of a round trip. One worker alternates with the server:
r₁ = 1/(c + s + l). Two workers and the server are three busy processes on two cores:
r₂ ≤ 2/(c₂ + s), c₂ being a worker's time per gradient when it shares the cores ("bound"
column). That bound is above 2 r₁ only if the two cores belong to these three processes alone;
"core-ms per gradient" = 2/r₂ is what each gradient actually cost the machine, against
c₂ + s used by the worker and the server: the difference goes to context switches, wake-ups
waiting for a core, and the other jobs on the machine. With a core per process (≥ 3 cores)
that overhead goes, which is where the goal can be judged. Concurrent parameter servers cannot
pay on 2 cores either (5 busy processes); they are for machines where the server's step, not
the workers, limits the rate (s > c / N)."""


def main() -> None:
    server_ms = server_cost()
    rows = ["| batch | serial loop (grad/s) | 1 worker (grad/s) | 2 workers (grad/s) | "
            "2 workers / (2 × 1 worker) | compute ms/grad (1 w → 2 w) | mean delay (2 w) | "
            "bound 2/(c₂ + s) (grad/s) | core-ms per gradient (2 w) | "
            "2 workers, 2 servers (grad/s) | its mean delay |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for batch in BATCHES:
        serial = serial_rate(batch)
        one, one_ms, _ = runtime_rate(1, batch)
        two, two_ms, delay = runtime_rate(2, batch)
        split, _, split_delay = runtime_rate(2, batch, servers=2)
        ratio = two / (2 * one)
        rows.append(f"| {batch} | {serial:.0f} | {one:.0f} | {two:.0f} | {ratio:.0%} | "
                    f"{one_ms:.2f} → {two_ms:.2f} | {delay:.2f} | "
                    f"{2e3 / (two_ms + server_ms):.0f} | {2e3 / two:.2f} | {split:.0f} | "
                    f"{split_delay:.2f} |")
        print(rows[-1], file=sys.stderr)
    body = "\n".join(rows) + "\n\n" + describe(server_ms)
    write_section("Process runtime throughput (server mode)",
                  ".venv/bin/python benchmarks/processes_throughput.py", body)
    print(body)


if __name__ == "__main__":
    main()
