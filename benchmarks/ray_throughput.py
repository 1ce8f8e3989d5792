"""The Ray runtime against a plain Ray parameter server, and the processes runtime beside them.

    cd benchmarks && ../.venv/bin/python ray_throughput.py

Updates per second with 2 workers, for a 10k-float and a 1M-float model: the heterogeneous
quadratic without gradient noise (its gradient is three vector operations, so the transfers
dominate), ASGD + SGD, one
server step per gradient. Three ways:

* **asyncopt, ray**: ``runtime = "ray"`` (driver-side server, one object-store copy of the model
  per version, gradients read in place);
* **plain Ray PS**: the asynchronous parameter server of Ray's documentation ("Parameter Server"
  example): a server actor with a torch model and optimizer whose ``apply_gradients`` returns the
  weights as a dict of numpy arrays, worker actors whose ``compute_gradients(weights)`` returns a
  list of numpy gradients, and a ``ray.wait`` loop in the driver that passes object refs along;
* **asyncopt, processes**: the shared-memory runtime on the same problem.

Rates are taken between the ``SKIP``-th update and the last (start-up excluded), best of
``REPEATS``. Also measured: the time from starting ``asyncopt run`` (a fresh process) to the end
of a 1-step run, an upper bound on the time to the first update.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from results import write_section

from asyncopt.api import train
from asyncopt.problems.quadratic import QuadraticProblem
from asyncopt.rules.registry import make_rule
from asyncopt.runtimes.coordinator import Evaluation
from asyncopt.runtimes.ray import cluster
from asyncopt.runtimes.sim.loop import worker_generators

SIZES = (10_000, 1_000_000)
WORKERS, UPDATES, SKIP, REPEATS, LR = 2, 600, 50, 2, 0.1


def quadratic(dim: int) -> QuadraticProblem:
    return QuadraticProblem(dim, WORKERS, noise=0.0, heterogeneity=1.0, seed=0)


def asyncopt_rate(dim: int, runtime: str) -> float:
    best = 0.0
    for _ in range(REPEATS):
        result = train(quadratic(dim), make_rule({"name": "sgd", "lr": LR}, WORKERS), "asgd",
                       budget={"arrivals": UPDATES}, evaluation=Evaluation(10**9),
                       runtime=runtime, progress=False)
        now = result.history.arrivals["now"]
        best = max(best, (len(now) - 1 - SKIP) / (now[-1] - now[SKIP]))
    return best


class ParameterServer:
    """Ray's documented parameter server, with the quadratic's single tensor as the model."""

    def __init__(self, dim: int, lr: float) -> None:
        self.x = torch.nn.Parameter(torch.zeros(dim))
        self.optimizer = torch.optim.SGD([self.x], lr=lr)

    def apply_gradients(self, *gradients: list[np.ndarray]) -> dict[str, np.ndarray]:
        summed = [np.stack(g).sum(axis=0) for g in zip(*gradients, strict=True)]
        self.optimizer.zero_grad()
        self.x.grad = torch.from_numpy(summed[0])
        self.optimizer.step()
        return self.get_weights()

    def get_weights(self) -> dict[str, np.ndarray]:
        return {"x": self.x.data.cpu().numpy()}


class DataWorker:
    def __init__(self, problem: QuadraticProblem, worker: int) -> None:
        torch.set_num_threads(1)
        self.problem, self.worker = problem, worker
        self.generator = worker_generators(0, WORKERS)[worker]

    def compute_gradients(self, weights: dict[str, np.ndarray]) -> list[np.ndarray]:
        params = {"x": torch.tensor(weights["x"])}
        _, grads = self.problem.loss_and_grad(params, self.worker, self.generator)
        return [grads["x"].numpy()]


def plain_rate(ray, dim: int) -> float:
    """Updates per second of Ray's asynchronous parameter-server loop."""
    best = 0.0
    server_actor = ray.remote(num_cpus=0)(ParameterServer)
    worker_actor = ray.remote(num_cpus=1)(DataWorker)
    for _ in range(REPEATS):
        ps = server_actor.remote(dim, LR)
        workers = [worker_actor.remote(quadratic(dim), w) for w in range(WORKERS)]
        current = ps.get_weights.remote()
        gradients = {worker.compute_gradients.remote(current): worker for worker in workers}
        stamps = []
        for _ in range(UPDATES):
            ready, _ = ray.wait(list(gradients))
            worker = gradients.pop(ready[0])
            current = ps.apply_gradients.remote(*ready)
            gradients[worker.compute_gradients.remote(current)] = worker
            stamps.append(time.perf_counter())
        ray.get(current)
        stamps[-1] = time.perf_counter()  # the last update is applied
        best = max(best, (len(stamps) - 1 - SKIP) / (stamps[-1] - stamps[SKIP]))
        for actor in (ps, *workers):
            ray.kill(actor)
    return best


def time_to_first_update(runtime: str) -> float:
    """Wall seconds of ``asyncopt run`` (fresh process) for a 1-step run: an upper bound on
    the time to the first update (it includes the final evaluation and the shutdown)."""
    config = Path(__file__).parents[1] / "configs" / "quickstart.toml"
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "asyncopt.cli", "run", str(config), "--quiet",
                        "--out", out, "--set", f'runtime="{runtime}"', "--set", "workers=2",
                        "--set", "budget.steps=1"], check=True, capture_output=True,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
        return time.perf_counter() - start


def main() -> None:
    rows = ["| model | asyncopt, ray (updates/s) | plain Ray PS (updates/s) | ray / plain | "
            "asyncopt, processes (updates/s) |", "|---|---|---|---|---|"]
    rates = {dim: {"processes": asyncopt_rate(dim, "processes")} for dim in SIZES}
    ray = cluster.start_local(num_cpus=WORKERS)
    try:
        for dim in SIZES:
            rates[dim]["ray"] = asyncopt_rate(dim, "ray")
            rates[dim]["plain"] = plain_rate(ray, dim)
    finally:
        ray.shutdown()
    for dim in SIZES:
        r = rates[dim]
        rows.append(f"| {dim:,} floats | {r['ray']:.0f} | {r['plain']:.0f} | "
                    f"{r['ray'] / r['plain']:.2f}× | {r['processes']:.0f} |")
        print(rows[-1], file=sys.stderr)
    first = {runtime: time_to_first_update(runtime) for runtime in ("ray", "processes")}
    body = "\n".join(rows) + f"""

{WORKERS} workers, ASGD + SGD on the noiseless heterogeneous quadratic (its gradient costs a few
vector operations, so the transfers dominate), {UPDATES} updates per run, rate from update {SKIP} to
the last, best of {REPEATS}; embedded local Ray (2 CPUs, worker actors 1 CPU each, the plain
server actor 0 CPUs). The plain PS is Ray's documented asynchronous parameter server (server
actor returns the weights, workers get them as an argument, a `ray.wait` loop in the driver).
Measured under load on a shared 2-core machine: ratios are more telling than the rates.

Time from starting `asyncopt run configs/quickstart.toml --set workers=2 --set budget.steps=1`
(a fresh process) to its end, an upper bound on the time to the first update: Ray
{first['ray']:.1f} s (Python imports, `ray.init`, actor start-up, one step, shutdown),
processes {first['processes']:.1f} s."""
    write_section("Ray runtime throughput", "cd benchmarks && ../.venv/bin/python "
                  "ray_throughput.py", body)
    print(body)


if __name__ == "__main__":
    main()
