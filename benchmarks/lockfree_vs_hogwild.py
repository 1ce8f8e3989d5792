"""Lock-free mode against a plain Hogwild loop: gradients per second, 2 processes.

    .venv/bin/python benchmarks/lockfree_vs_hogwild.py

The reference is written the way PyTorch's ``mnist_hogwild`` example does it: one
``share_memory()`` model, each process with its own ``torch.optim`` optimizer (so with Adam each
process keeps its own moments and its own step counter), ``torch.set_num_threads(1)``, a plain
forward/backward/step loop. The lock-free mode (``runtime = "processes"``, ``mode = "lockfree"``,
``blocks = "whole"``) runs the same model and batch with one optimizer state shared by both
processes, reports every step to the main process, which records it. Same MLP as
``processes_throughput.py`` (64-512-320-10, 200,650 parameters) on digits.
"""

from __future__ import annotations

import sys
import time

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from processes_throughput import mlp, problem
from results import ms_per_call, one_thread, write_section

from asyncopt import tree
from asyncopt.api import train
from asyncopt.problems.datasets import load_dataset
from asyncopt.rules.base import apply_updates
from asyncopt.rules.registry import make_rule
from asyncopt.runtimes.coordinator import Evaluation
from asyncopt.runtimes.sim.loop import worker_generators

WORKERS, BATCH, STEPS, WARMUP, REPEATS = 2, 32, 3000, 100, 3
RULES = {"sgd": ({"name": "sgd", "lr": 0.01}, torch.optim.SGD, {"lr": 0.01}),
         "adam": ({"name": "adam", "lr": 1e-3}, torch.optim.Adam, {"lr": 1e-3})}


def hogwild_process(rank: int, model: torch.nn.Module, optimizer: str, barrier, out) -> None:
    """One process of the reference: its own optimizer on the shared model."""
    torch.set_num_threads(1)
    data = load_dataset("digits", seed=0)
    X, y = data.X_train, data.y_train
    generator = worker_generators(0, WORKERS)[rank]
    _, cls, options = RULES[optimizer]
    opt = cls(model.parameters(), **options)

    def step() -> None:
        picks = torch.randint(len(y), (BATCH,), generator=generator)
        opt.zero_grad()
        F.cross_entropy(model(X.index_select(0, picks)), y.index_select(0, picks)).backward()
        opt.step()

    for _ in range(WARMUP):
        step()
    barrier.wait()
    start = time.perf_counter()
    for _ in range(STEPS // WORKERS):
        step()
    out.put((start, time.perf_counter()))


def hogwild_rate(optimizer: str) -> float:
    context = mp.get_context("spawn")
    model = mlp()
    model.share_memory()
    barrier, out = context.Barrier(WORKERS), context.Queue()
    processes = [context.Process(target=hogwild_process, args=(r, model, optimizer, barrier, out))
                 for r in range(WORKERS)]
    for process in processes:
        process.start()
    spans = [out.get(timeout=300) for _ in processes]
    for process in processes:
        process.join()
    return (STEPS // WORKERS * WORKERS) / (max(e for _, e in spans) - min(s for s, _ in spans))


def lockfree_rate(optimizer: str) -> tuple[float, float]:
    """(gradients/s between step WARMUP and the last, mean delay)."""
    spec = RULES[optimizer][0]
    result = train(problem(WORKERS, BATCH), make_rule(spec, WORKERS), "asgd",
                   budget={"steps": STEPS + WARMUP}, evaluation=Evaluation(10**9),
                   runtime="processes", runtime_options={"mode": "lockfree"})
    now = result.history.arrivals["now"]
    return (len(now) - 1 - WARMUP) / (now[-1] - now[WARMUP]), result.summary["mean_delay"]


def copy_cost(seconds: float = 1.0) -> tuple[float, float]:
    """ms per gradient on the params directly, and per model copy (what a private copy adds)."""
    with one_thread():
        built = problem(1, BATCH)
        params = built.init_params(torch.Generator().manual_seed(0))
        generator = worker_generators(0, 1)[0]
        return (ms_per_call(lambda: built.loss_and_grad(params, 0, generator), seconds, 0),
                ms_per_call(lambda: tree.clone(params), seconds, 0))


def step_costs(seconds: float = 1.0) -> dict[str, float]:
    """ms per piece of one SGD step, in this process with one torch thread: the reference's
    whole step, and the lock-free worker's gradient, finiteness check and rule + apply."""
    with one_thread():
        built = problem(1, BATCH)
        params = built.init_params(torch.Generator().manual_seed(0))
        generator = worker_generators(0, 1)[0]
        data = load_dataset("digits", seed=0)
        model = mlp()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        rule = make_rule(RULES["sgd"][0], 1)
        state = rule.init(params)
        _, grads = built.loss_and_grad(params, 0, generator)

        def reference() -> None:
            picks = torch.randint(len(data.y_train), (BATCH,), generator=generator)
            optimizer.zero_grad()
            F.cross_entropy(model(data.X_train.index_select(0, picks)),
                            data.y_train.index_select(0, picks)).backward()
            optimizer.step()

        def rule_and_apply() -> None:
            updates, _ = rule.update(grads, state, params, delay=0, worker=0)
            apply_updates(params, updates)

        return {name: ms_per_call(work, seconds) for name, work in (
            ("reference step", reference),
            ("gradient (problem.loss_and_grad)", lambda: built.loss_and_grad(params, 0, generator)),
            ("finiteness check", lambda: tree.all_finite(grads)),
            ("rule update + apply", rule_and_apply))}


def main() -> None:
    rows = ["| optimizer | Hogwild reference (grad/s) | lock-free mode (grad/s) | ratio | "
            "mean delay (lock-free) |", "|---|---|---|---|---|"]
    for optimizer in RULES:
        reference = max(hogwild_rate(optimizer) for _ in range(REPEATS))
        ours, delay = max(lockfree_rate(optimizer) for _ in range(REPEATS))
        rows.append(f"| {optimizer} | {reference:.0f} | {ours:.0f} | {ours / reference:.2f}× | "
                    f"{delay:.2f} |")
        print(rows[-1], file=sys.stderr)
    grad_ms, copy_ms = copy_cost()
    costs = step_costs()
    ours = sum(v for k, v in costs.items() if k != "reference step")
    pieces = " | ".join(f"{v:.3f}" for v in costs.values())
    body = "\n".join(rows) + f"""

{WORKERS} processes, MLP 64-512-320-10 (200,650 parameters) on digits, batch {BATCH},
{STEPS} timed steps after {WARMUP} untimed ones, best of {REPEATS} runs each; one torch thread
per process. The reference is PyTorch's `mnist_hogwild` pattern (per-process `torch.optim`
optimizer on a `share_memory()` model, nothing recorded). The lock-free mode shares one optimizer
state between the processes (one Adam step counter, incremented under the shared lock so it
is exact, and one set of moments), reports every step (in
batches, every 10 ms) to the main process, which records it, checks every gradient for NaN/Inf,
and runs the rule's functional update instead of `torch.optim`'s
fused loop; its rate is measured from the recorded steps. The machine has **2 cores shared with
other work**, and its speed drifts: the figures move between runs by up to a quarter; the
main process (recording) competes with the two workers for those 2 cores.

Gradient on the shared parameters directly vs on a private copy, one process: a gradient takes
{grad_ms:.2f} ms, a model copy {copy_ms:.3f} ms ({copy_ms / grad_ms:.0%} more per step), so the
workers differentiate the shared tensors directly (`loss_and_grad` must not modify them).

What one SGD step costs, one process, one thread (ms):

| {" | ".join(costs)} |
|{"---|" * len(costs)}
| {pieces} |

So before any runtime cost (the shared version's lock, reports, the main process recording on
the same 2 cores) a lock-free step costs {ours:.3f} ms against the reference's
{costs["reference step"]:.3f}: a ceiling of {costs["reference step"] / ours:.2f}× in one
process, where the gradient itself costs about what the reference's whole step does. The gap
is the finiteness check and the rule's functional update (updates returned, then added: two
passes and an allocation, where `torch.optim.SGD` does one in-place `_foreach_add_`); the rest
of the measured gap is the runtime's, on 2 cores shared by 3 processes: the main process
waking every 10 ms to record, the version lock, a pipe poll per step. Closing the rule's part
needs an in-place fused path per rule: a second code path for every rule, each needing its
own parity test; not done."""
    write_section("Lock-free mode vs Hogwild loop",
                  ".venv/bin/python benchmarks/lockfree_vs_hogwild.py", body)
    print(body)


if __name__ == "__main__":
    main()
