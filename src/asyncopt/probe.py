"""The server's time per arrival, measured on this machine: ``asyncopt calibrate --probe``.

The simulator charges a server time s per handled arrival (``[speed] server_time``,
:mod:`asyncopt.runtimes.sim.loop`) so that a prediction includes the central server's
saturation: with n workers of compute time c, arrivals come at n / c per second and the server
keeps up only while n·s / c < 1. A real run records s per arrival (``server_time`` in
``arrivals.csv``); without one, this probe measures it for a config's protocol, rule and model
size: the config's protocol is fed ``arrivals`` arrivals, in the order its workers were started
(one stochastic gradient, computed once, stands for every worker's), and each
``protocol.handle`` (aggregation, the rule's step, the version count) is timed with
``time.perf_counter`` (the first ``WARM_UP`` left out). It is a lower bound of a real run's
``server_time``, which also holds the gradient's read from shared memory and in which the
driver competes with the workers for the cores. Evaluations are in neither.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from asyncopt import config as configuration
from asyncopt.problems.registry import make_problem
from asyncopt.protocols.base import Arrival, Server
from asyncopt.protocols.registry import make_protocol
from asyncopt.rules.registry import make_rule
from asyncopt.runtimes.common.generators import worker_generators

WARM_UP = 20


def probe_server(config: str | Path, overrides: Iterable[str] = (), arrivals: int = 300,
                 ) -> dict[str, float]:
    """Seconds per arrival of ``config``'s server: mean, median, and the means of the
    arrivals that stepped and of those that did not (NaN when there were none)."""
    resolved = configuration.load(config, overrides)
    workers, seed = resolved["workers"], resolved["seed"]
    problem = make_problem(resolved["problem"], workers, seed)
    server = Server(problem.init_params(torch.Generator().manual_seed(seed)),
                    make_rule(resolved["rule"], workers))
    protocol = make_protocol(resolved["protocol"], server, workers)
    loss, grads = problem.loss_and_grad(server.params, 0, worker_generators(seed, workers)[0])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the driver's setting in the real runtimes
    try:
        queue = deque((w, protocol.model_for(w)[0]) for w in protocol.begin().start)
        times, stepped = [], []
        while queue and len(times) < arrivals:
            worker, version = queue.popleft()
            before = protocol.version
            began = time.perf_counter()
            reply = protocol.handle(Arrival(worker, version, grads, float(loss), 1.0))
            times.append(time.perf_counter() - began)
            stepped.append(protocol.version > before)
            cancelled = set(reply.cancel)
            queue = deque((w, v) for w, v in queue if w not in cancelled)
            queue.extend((w, protocol.model_for(w)[0]) for w in reply.start)
    finally:
        torch.set_num_threads(threads)
    warm = min(WARM_UP, len(times) // 2)  # first calls pay for allocations and caches
    seconds, steps = np.array(times[warm:]), np.array(stepped[warm:], dtype=bool)
    return {"arrivals": float(len(seconds)), "mean": float(seconds.mean()),
            "median": float(np.median(seconds)),
            "step": float(seconds[steps].mean()) if steps.any() else float("nan"),
            "no_step": float(seconds[~steps].mean()) if (~steps).any() else float("nan")}
