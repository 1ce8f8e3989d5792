"""What a partitioned step saves: the cost of a block's gradient against the full gradient.

PASSM+ (Kungurtsev, Egan, Chatterjee & Alistarh, AAAI 2021) lets each of n processes alternate
a full step and a step on its own partition of the tensors; the authors' code differentiates
only the partition (``autograd.grad`` with respect to the process's parameter group), so a
partition step costs less than a full one. asyncopt's lock-free workers do the same
(``runtime_options.backprop = "block"``, :meth:`asyncopt.problems.base.Problem.gradient_at`).
This measures, for each partition of n = 2 and 4 contiguous runs of tensors balanced by size
(:func:`asyncopt.runtimes.common.layout.partition`, what a worker owns), milliseconds per
gradient of the partition against the full gradient at the same model, on one thread (as each
worker process computes), interleaved: full, block 0, block 1, ..., repeated ``--rounds``
times, the median of each. Models: the MLP of ``configs/passm.toml`` (closed form, and through
autograd), LeNet-5 and ResNet-8 on digits' 8×8 images (``cnn``, autograd).

    .venv/bin/python benchmarks/block_gradients.py            # about two minutes

A partition holding the first layer needs the whole backward pass (its gradient is at the
bottom) and saves only the products of the layers above it; a partition of the last layers
skips everything below.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from results import one_thread, write_section

from asyncopt.problems.registry import make_problem
from asyncopt.runtimes.common.generators import worker_generators
from asyncopt.runtimes.common.layout import partition

PROBLEMS = {
    "MLP 64-128-10, closed form (configs/passm.toml)":
        {"name": "mlp", "dataset": "digits", "hidden": 128, "batch_size": 32},
    "MLP 64-128-10, autograd":
        {"name": "mlp", "dataset": "digits", "hidden": 128, "batch_size": 32,
         "gradient": "autograd"},
    "LeNet-5 on digits (8×8)": {"name": "cnn", "dataset": "digits", "model": "lenet5",
                                "batch_size": 32},
    "ResNet-8 on digits (8×8)": {"name": "cnn", "dataset": "digits", "model": "resnet8",
                                 "batch_size": 32},
}


def measure(spec: dict, parts: int, rounds: int, calls: int) -> list[tuple[str, int, float]]:
    """(block's tensors, its share of the parameters in %, its cost / the full gradient's)."""
    problem = make_problem(spec, 2, 0)
    params = problem.init_params(torch.Generator().manual_seed(0))
    names = list(params)
    sizes = [params[n].numel() for n in names]
    blocks = [[names[j] for j in run] for run in partition(sizes, parts)]
    gradient = problem.gradient_at(params, 0)
    generator = worker_generators(0, 2)[0]
    for only in [None, *blocks]:  # warm-up: TorchScript's compilation, allocator caches
        for _ in range(calls):
            gradient(generator, only)
    times: list[list[float]] = [[] for _ in range(len(blocks) + 1)]
    for _ in range(rounds):  # interleaved: the full gradient, then each block
        for slot, only in enumerate([None, *blocks]):
            start = time.perf_counter()
            for _ in range(calls):
                gradient(generator, only)
            times[slot].append((time.perf_counter() - start) / calls)
    full = statistics.median(times[0])
    total = sum(sizes)
    return [(_describe(block), round(100 * sum(params[n].numel() for n in block) / total),
             statistics.median(times[slot + 1]) / full) for slot, block in enumerate(blocks)
            ] + [("full gradient", 100, full * 1e3)]


def _describe(block: list[str]) -> str:
    return block[0] if len(block) == 1 else f"{block[0]} … {block[-1]} ({len(block)} tensors)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=20, help="gradients per timing")
    args = parser.parse_args()
    lines = ["| model | n | partition | share of parameters | cost / full gradient |",
             "|---|---|---|---|---|"]
    with one_thread():
        for label, spec in PROBLEMS.items():
            for parts in (2, 4):
                rows = measure(spec, parts, args.rounds, args.calls)
                *blocks, (_, _, full_ms) = rows
                for index, (block, share, ratio) in enumerate(blocks):
                    lines.append(f"| {label} (full: {full_ms:.2f} ms) | {parts} | "
                                 f"{index}: {block} | {share} % | {ratio:.2f} |")
                    print(lines[-1], flush=True)
    body = ("Median milliseconds per gradient of each partition over the full gradient's at the "
            f"same model, one thread, minibatch 32, {args.rounds} interleaved rounds of "
            f"{args.calls} gradients. Partition i is what worker i of n owns.\n\n"
            + "\n".join(lines))
    write_section("Block gradients (PASSM+ partitions)",
                  "python benchmarks/block_gradients.py " + " ".join(sys.argv[1:]), body)


if __name__ == "__main__":
    main()
