"""A new runtime is one event source: here a thread-pool runtime in a few lines, driven by the
one driver, with every protocol reply, the history, checkpoints and signals coming with it."""

from __future__ import annotations

import queue
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from asyncopt.config import Budget, Evaluation
from asyncopt.problems.registry import make_problem
from asyncopt.protocols.base import Server
from asyncopt.protocols.registry import make_protocol
from asyncopt.record import Recorder
from asyncopt.rules.registry import make_rule
from asyncopt.runtimes.common.generators import worker_generators
from asyncopt.runtimes.coordinator import Coordinator
from asyncopt.runtimes.sim.loop import Simulator
from asyncopt.runtimes.sim.speed import make_speed_model
from asyncopt.runtimes.source import Arrived, RealTimeSource


class Threads(RealTimeSource):  # the whole runtime: gradients from a pool of threads
    name = "threads"

    def __init__(self, problem, seed):
        super().__init__()
        self.problem, self.done = problem, queue.Queue()
        self.generators = worker_generators(seed, problem.num_workers)

    def open(self, coordinator):
        self.pool = ThreadPoolExecutor(self.problem.num_workers)

    def start(self, worker, job, version, params):
        def compute():
            begun = time.perf_counter()
            result = self.problem.loss_and_grad(params, worker, self.generators[worker])
            self.done.put(Arrived(worker, job, version, time.perf_counter() - begun, result))
        self.pool.submit(compute)
        return True

    def wait(self, timeout):
        try:
            return [self.done.get(timeout=timeout)]
        except queue.Empty:
            return []

    def close(self):
        self.pool.shutdown()


def _drive(source, problem, protocol: str, steps: int):
    server = Server(problem.init_params(torch.Generator().manual_seed(0)),
                    make_rule({"name": "sgd", "lr": 0.1}, problem.num_workers))
    recorder = Recorder()
    coordinator = Coordinator(problem, make_protocol({"name": protocol}, server,
                                                     problem.num_workers),
                              recorder, Budget(steps=steps), Evaluation(10))
    source.run(coordinator)
    return recorder.history(), coordinator.finish(), server


def test_a_thread_pool_runtime_in_a_few_lines_runs_every_protocol():
    for protocol in ("asgd", "minibatch", "rennala", "malenia", "ringmaster"):
        problem = make_problem({"name": "logistic", "dataset": "digits"}, 3, 0)
        history, summary, _ = _drive(Threads(problem, 0), problem, protocol, 30)
        a = history.arrivals
        assert summary["status"] == "completed" and summary["version"] == 30, protocol
        assert int((a["action"] == "step").sum()) == 30 and (a["delay"] >= 0).all()
        assert history.final("loss") < history.evaluations["loss"][0]


def test_with_one_worker_it_computes_the_simulators_run():
    problem = make_problem({"name": "logistic", "dataset": "digits"}, 1, 0)
    threads, _, a = _drive(Threads(problem, 0), problem, "asgd", 20)
    simulated, _, b = _drive(Simulator(problem, make_speed_model({}, 1, 0), 0), problem,
                             "asgd", 20)
    np.testing.assert_array_equal(threads.arrivals["loss"], simulated.arrivals["loss"])
    for name, value in a.params.items():
        assert torch.equal(value, b.params[name])
