"""The Ray runtime against a plain Ray parameter server, and the processes runtime beside them.

    cd benchmarks && ../.venv/bin/python ray_throughput.py

Updates per second with 2 workers, for a 10k-float and a 1M-float model: the heterogeneous
quadratic without gradient noise (its gradient is three vector operations, so the transfers
dominate), ASGD + SGD, one
server step per gradient. The ways:

* **asyncopt, ray, shared memory**: ``runtime = "ray"`` with ``runtime_options.transport =
  "auto"`` (the default; driver-side server): the worker actors are on the driver's node, so
  the driver writes each job's model into the worker's slot of a ``/dev/shm`` segment, the
  worker computes on it in place and writes its gradient into its gradient slot
  (:mod:`asyncopt.runtimes.ray.shm`), and a task carries only the version;
* **asyncopt, ray, object store**: ``transport = "object_store"``: one object-store copy of the
  model per version, gradients read in place;
* **plain Ray PS**: the asynchronous parameter server of Ray's documentation ("Parameter Server"
  example): a server actor with a torch model and optimizer whose ``apply_gradients`` returns the
  weights as a dict of numpy arrays, worker actors whose ``compute_gradients(weights)`` returns a
  list of numpy gradients, and a ``ray.wait`` loop in the driver that passes object refs along;
* **asyncopt, ray, K servers**: ``runtime_options.servers = K`` (:mod:`asyncopt.runtimes.ray.
  sharded`): K block server actors, workers that pull and push the blocks themselves, the driver
  off the per-arrival path; K = 1 (one server actor, built directly: the option's 1 is the
  driver-as-server path) and K = 2;
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
from asyncopt.config import Budget, Evaluation
from asyncopt.problems.quadratic import QuadraticProblem
from asyncopt.protocols.base import Server
from asyncopt.protocols.registry import make_protocol
from asyncopt.record import Recorder
from asyncopt.rules.registry import make_rule
from asyncopt.runtimes.common.generators import worker_generators
from asyncopt.runtimes.coordinator import Coordinator
from asyncopt.runtimes.ray import cluster
from asyncopt.runtimes.ray.sharded import ShardedRuntime
from asyncopt.runtimes.registry import RUNTIMES
from asyncopt.runtimes.sim.speed import make_speed_model

SIZES = (10_000, 1_000_000)
WORKERS, UPDATES, SKIP, REPEATS, LR = 2, 600, 50, 2, 0.1


def quadratic(dim: int) -> QuadraticProblem:
    return QuadraticProblem(dim, WORKERS, noise=0.0, heterogeneity=1.0, seed=0)


def asyncopt_rate(dim: int, runtime: str, options: dict | None = None) -> float:
    best = 0.0
    for _ in range(REPEATS):
        result = train(quadratic(dim), make_rule({"name": "sgd", "lr": LR}, WORKERS), "asgd",
                       budget={"arrivals": UPDATES}, evaluation=Evaluation(10**9),
                       runtime=runtime, runtime_options=options, progress=False)
        now = result.history.arrivals["now"]
        best = max(best, (len(now) - 1 - SKIP) / (now[-1] - now[SKIP]))
    return best


def sharded_rate(dim: int, servers: int) -> float:
    """As :func:`asyncopt_rate` with ``servers`` block server actors; the runtime is built
    directly, so that K = 1 runs the server-actor path too."""
    # one tensor: the servers cut it into equal flat ranges
    options = {**RUNTIMES["ray"][1], "servers": servers, "layout": "ranges"}
    best = 0.0
    for _ in range(REPEATS):
        problem = quadratic(dim)
        server = Server(problem.init_params(torch.Generator().manual_seed(0)),
                        make_rule({"name": "sgd", "lr": LR}, WORKERS))
        recorder = Recorder()
        coordinator = Coordinator(problem, make_protocol({"name": "asgd"}, server, WORKERS),
                                  recorder, Budget(arrivals=UPDATES), Evaluation(10**9))
        ShardedRuntime(problem, make_speed_model({}, WORKERS, 0), 0, **options).run(coordinator)
        coordinator.finish()
        now = recorder.history().arrivals["now"]
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
    rates = {dim: {"processes": asyncopt_rate(dim, "processes")} for dim in SIZES}
    ray = cluster.start_local(num_cpus=WORKERS)
    try:
        for dim in SIZES:
            rates[dim]["shm"] = asyncopt_rate(dim, "ray", {"transport": "auto"})
            rates[dim]["store"] = asyncopt_rate(dim, "ray", {"transport": "object_store"})
            rates[dim]["plain"] = plain_rate(ray, dim)
            for servers in (1, 2):
                rates[dim][servers] = sharded_rate(dim, servers)
    finally:
        ray.shutdown()
    first = {runtime: time_to_first_update(runtime) for runtime in ("ray", "processes")}
    report(rates, first)


def report(rates: dict[int, dict], first: dict[str, float]) -> None:
    """Write the section of RESULTS.md from the measured rates and start-up times."""
    rows = ["| model | plain Ray PS | ray, shared memory | shm / plain | ray, object store | "
            "store / plain | ray, 1 server actor | ray, 2 server actors | "
            "asyncopt, processes |", "|---|---|---|---|---|---|---|---|---|"]
    for dim in SIZES:
        r = rates[dim]
        rows.append(f"| {dim:,} floats | {r['plain']:.0f} | {r['shm']:.0f} | "
                    f"{r['shm'] / r['plain']:.2f}× | {r['store']:.0f} | "
                    f"{r['store'] / r['plain']:.2f}× | {r[1]:.0f} | {r[2]:.0f} | "
                    f"{r['processes']:.0f} |")
    body = "\n".join(rows) + f"""

Updates per second. {WORKERS} workers, ASGD + SGD on the noiseless heterogeneous quadratic (its
gradient costs a few vector operations, so the transfers dominate), {UPDATES} updates per run,
rate from update {SKIP} to the last, best of {REPEATS}; embedded local Ray (2 CPUs, worker actors
1 CPU each, the plain server actor 0 CPUs). The plain PS is Ray's documented asynchronous
parameter server (server actor returns the weights, workers get them as an argument, a
`ray.wait` loop in the driver). "ray, shared memory" is the default layout (the driver is the
server) with the default `runtime_options.transport = "auto"`: both worker actors are on the
driver's node, so the model and the gradients go through one `/dev/shm` segment (a model slot
that the driver writes at each job and the worker computes on in place, and a gradient slot,
per worker) and a task carries only the version; "ray, object store" is the same with
`transport = "object_store"` (the model put once per version, the gradient returned through the
store and read in place). The "server actor" columns are `runtime_options.servers = K` (K
block server actors with `num_cpus = 0`, each answering a block's gradient with the block after
the step; the driver only records), K = 1 built directly. Ratios are more telling than the
rates, and with 2 cores for 2 workers, K servers and the driver, K = 2 cannot run its servers
in parallel.

Time from starting `asyncopt run configs/quickstart.toml --set workers=2 --set budget.steps=1`
(a fresh process) to its end, an upper bound on the time to the first update: Ray
{first['ray']:.1f} s (Python imports, `ray.init`, actor start-up, one step, shutdown),
processes {first['processes']:.1f} s."""
    write_section("Ray runtime throughput", "cd benchmarks && ../.venv/bin/python "
                  "ray_throughput.py", body)
    print(body)


if __name__ == "__main__":
    main()
