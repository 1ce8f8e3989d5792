"""Issue 8's measurements on a device: images/s of a CIFAR ResNet with 1, 2 and 4 worker
processes on one GPU (PASSM+ against Hogwild! against synchronous training), and the
simulator's batched gradients against one at a time with n = 100 and 1,000 workers.

    .venv/bin/python benchmarks/gpu_throughput.py --device cuda          # the measurement
    .venv/bin/python benchmarks/gpu_throughput.py --device cpu --quick   # a smoke run (< 1 min)

**Status: written on a machine without a GPU; it has never run on one.** ``--device cpu
--quick`` checks that it runs and writes its section; those figures are CPU figures of tiny
sizes and are written under a section named as a CPU smoke run, never as the GPU results.

1. *Processes* (``runtime = "processes"``, ``runtime_options.device``): a ResNet (``--model``,
   default resnet20: He et al. 2016, PASSM+'s network, Kungurtsev et al. AAAI 2021) on
   synthetic 3×32×32 images (:func:`asyncopt.problems.images.synthetic_images`), minibatches of
   ``--batch`` images per gradient, SGD, for ``--seconds`` of wall time after start-up:
   ``lockfree`` + ``blocks = "partition"`` (PASSM+: each process steps its own block of the
   shared model, after full-model steps), ``lockfree`` + ``whole`` (Hogwild!, Niu et al. 2011)
   and server mode with the ``minibatch`` protocol (synchronous SGD over the n workers' gradients,
   the data-parallel baseline). images/s = gradients computed × batch / seconds, counted after
   the first quarter of the run (CUDA start-up, cuDNN autotuning). Evaluations are replaced by
   a constant (:func:`throughput_only`), so only gradients and steps are timed.
2. *Simulator* (``runtime = "sim"``, problem moved with ``Problem.to(device)``): synchronous SGD
   (``minibatch``) with n simulated workers, so all n pending gradients start at one snapshot;
   ``runtime_options.batch = 1`` (one gradient at a time) against ``batch = --sim-batch`` (up to
   that many in one ``torch.func.vmap`` pass, :mod:`asyncopt.problems.batched`). Gradients per
   wall second, and the largest difference of the two runs' final losses (the same history to
   float rounding is the batching's contract).
3. *Time to accuracy* (processes, on the device): ResNet-8 on scikit-learn's digits (1,437
   real 8×8 training images, 360 test images), n workers, SGD with momentum: wall seconds
   (after start-up) to the first evaluation at ``--target`` test accuracy, PASSM+ against
   synchronous training, median of ``--repeats`` seeds, and the ratio sync / PASSM+ beside the
   paper's ≈ 1.2× (Kungurtsev et al. report it for ResNets on CIFAR; digits is the small real
   data set at hand offline). Evaluations every ``EVERY`` s; in server mode they block the
   server, in lock-free mode the workers go on meanwhile.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import results
import torch
from results import write_section

from asyncopt.aggregate import time_to_target
from asyncopt.api import Result, train
from asyncopt.config import Evaluation
from asyncopt.problems.base import Problem
from asyncopt.problems.registry import make_problem
from asyncopt.rules.registry import make_rule
from asyncopt.tree import Params

MODES = {"PASSM+ (lock-free, partition)": ("asgd", {"mode": "lockfree", "blocks": "partition"}),
         "Hogwild! (lock-free, whole)": ("asgd", {"mode": "lockfree", "blocks": "whole"}),
         "synchronous (minibatch)": ("minibatch", {})}
FULL = {"model": "resnet20", "batch": 128, "samples": 10_000, "seconds": 30.0,
        "workers": (1, 2, 4), "sim_workers": (100, 1000), "sim_model": "resnet20",
        "sim_batch_size": 16, "rounds": 3, "accuracy_workers": 4, "accuracy_budget": 60.0}
QUICK = {"model": "resnet8", "batch": 16, "samples": 256, "seconds": 1.0, "workers": (2,),
         "sim_workers": (4, 16), "sim_model": "resnet8", "sim_batch_size": 4, "rounds": 2,
         "accuracy_workers": 2, "accuracy_budget": 2.0}
EVERY = 0.25  # seconds between evaluations in the time-to-accuracy runs


def cnn(model: str, batch: int, samples: int) -> dict:
    return {"name": "cnn", "dataset": "synthetic_images", "num_samples": samples,
            "model": model, "batch_size": batch, "test_fraction": 0.1}


def throughput_only(problem: Problem) -> Problem:
    """``problem`` with its evaluations replaced by a constant (an instance attribute of the
    main process's copy only: it is not pickled to the workers). The runtimes evaluate at the
    start and the end, and a full pass over the training set would otherwise be timed with the
    gradients; this benchmark measures throughput, not accuracy."""
    problem.evaluate = _constant  # type: ignore[method-assign]
    return problem


def _constant(params: Params) -> dict[str, float]:
    return {"loss": 1.0, "grad_norm_sq": 0.0}


def warm_up(problem: Problem, batch: int) -> None:
    """One untimed gradient and one batched pass (first-call costs: vmap, CUDA kernels,
    cuDNN's choice of algorithms), with generators of their own (the run's are untouched)."""
    params = problem.init_params(torch.Generator().manual_seed(0))
    generators = [torch.Generator().manual_seed(j) for j in range(batch)]
    problem.loss_and_grad(params, 0, generators[0])
    problem.loss_and_grads(params, list(range(batch)), generators)


def images_per_second(result: Result, batch: int, seconds: float) -> float:
    """Gradients computed after the first quarter of the run, × batch, per second."""
    arrivals = result.history.arrivals
    counted = np.isin(arrivals["action"], ("step", "drop", "buffer", "reject"))
    late = counted & (arrivals["now"] >= seconds / 4)
    span = float(arrivals["now"][late].max() - seconds / 4) if late.any() else 0.0
    return late.sum() * batch / span if span > 0 else float("nan")


def processes(size: dict, device: str) -> list[str]:
    rows = ["| workers | " + " | ".join(f"{name} (images/s)" for name in MODES) + " |",
            "|---|" + "---|" * len(MODES)]
    for workers in size["workers"]:
        rates = []
        for protocol, options in MODES.values():
            problem = make_problem(cnn(size["model"], size["batch"], size["samples"]), workers, 0)
            result = train(throughput_only(problem), make_rule({"name": "sgd", "lr": 0.05},
                                                               workers), protocol,
                           budget={"time": size["seconds"]}, evaluation=Evaluation(10**9),
                           runtime="processes",
                           runtime_options={**options, "device": device})
            rates.append(images_per_second(result, size["batch"], size["seconds"]))
        rows.append(f"| {workers} | " + " | ".join(f"{rate:.0f}" for rate in rates) + " |")
        print(rows[-1], file=sys.stderr)
    return rows


def simulated(size: dict, device: str, sim_batch: int) -> list[str]:
    rows = ["| n workers | one at a time (grad/s) | batched ≤ "
            f"{sim_batch} (grad/s) | speed-up | max final-loss difference |",
            "|---|---|---|---|---|"]
    for workers in size["sim_workers"]:
        rates, finals = [], []
        for batch in (1, sim_batch):
            problem = make_problem(cnn(size["sim_model"], size["sim_batch_size"],
                                       max(10 * workers, size["samples"])), workers, 0)
            warm_up(throughput_only(problem.to(device)), min(batch, workers))
            result = train(problem, make_rule({"name": "sgd", "lr": 0.05}, workers),
                           "minibatch", budget={"arrivals": size["rounds"] * workers},
                           evaluation=Evaluation(10**9), runtime_options={"batch": batch})
            rates.append(result.summary["arrivals_per_second"])  # the run, not its set-up
            finals.append(result.history.arrivals["loss"][-workers:])
        rows.append(f"| {workers} | {rates[0]:.1f} | {rates[1]:.1f} | "
                    f"{rates[1] / rates[0]:.2f}× | {np.abs(finals[0] - finals[1]).max():.1e} |")
        print(rows[-1], file=sys.stderr)
    return rows


def to_accuracy(size: dict, device: str, target: float, repeats: int) -> list[str]:
    workers = size["accuracy_workers"]
    rows = [f"| method ({workers} workers) | seconds to {target:.0%} test accuracy (median) | "
            "runs that reached it |", "|---|---|---|"]
    medians = {}
    for name, (protocol, options) in MODES.items():
        if name.startswith("Hogwild"):
            continue
        seconds = []
        for seed in range(repeats):
            problem = make_problem({"name": "cnn", "dataset": "digits", "model": "resnet8",
                                    "batch_size": 32}, workers, seed)
            result = train(problem, make_rule({"name": "momentum", "lr": 0.05}, workers),
                           protocol, seed=seed, budget={"time": size["accuracy_budget"]},
                           evaluation=Evaluation(EVERY, "time"), runtime="processes",
                           runtime_options={**options, "device": device})
            seconds.append(time_to_target(result.history, "accuracy", target, mode="max"))
        medians[name] = float(np.median(seconds))
        reached = sum(math.isfinite(x) for x in seconds)
        rows.append(f"| {name} | {medians[name]:.2f} | {reached} of {repeats} |")
        print(rows[-1], file=sys.stderr)
    passm, sync = medians.values()
    rows += ["", f"Ratio sync / PASSM+: {sync / passm:.2f}× (the paper: about 1.2×)."
             if math.isfinite(passm) and math.isfinite(sync) else
             "Ratio sync / PASSM+: not defined (a median run did not reach the target)."]
    return rows


def describe(size: dict, device: str, sim_batch: int) -> str:
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "the CPU"
    return (f"Device: {device} ({name}). Processes: {size['model']}, {size['batch']} images per "
            f"gradient, {size['samples']} synthetic 3×32×32 images, SGD, "
            f"{size['seconds']:g} s of wall time per run after start-up, the first quarter not "
            f"counted. Simulator: {size['sim_model']}, {size['sim_batch_size']} images per "
            f"gradient, synchronous SGD, {size['rounds']} rounds of n gradients, batch = 1 "
            f"against batch = {sim_batch} (torch.func.vmap over the pending minibatches). "
            f"Time to accuracy: resnet8 on digits, 32 images per gradient, momentum SGD "
            f"(lr 0.05), {size['accuracy_workers']} workers, at most "
            f"{size['accuracy_budget']:g} s per run, evaluations every {EVERY:g} s.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:K or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--sim-batch", type=int, default=256,
                        help="most pending gradients evaluated in one pass (simulator)")
    parser.add_argument("--target", type=float, default=0.9,
                        help="test accuracy of the time-to-accuracy runs")
    parser.add_argument("--repeats", type=int, default=3, help="seeds per time-to-accuracy run")
    parser.add_argument("--results", type=Path, default=results.RESULTS,
                        help="the Markdown file whose section is written")
    args = parser.parse_args()
    size = QUICK if args.quick else FULL
    results.RESULTS = args.results
    started = time.perf_counter()
    body = "\n".join(["### Worker processes on one device", "",
                      *processes(size, args.device), "",
                      "### Simulator: batched gradients against one at a time", "",
                      *simulated(size, args.device, args.sim_batch), "",
                      "### Time to accuracy: PASSM+ against synchronous training", "",
                      *to_accuracy(size, args.device, args.target,
                                   1 if args.quick else args.repeats), "",
                      describe(size, args.device, args.sim_batch)])
    on_gpu = args.device.startswith("cuda")
    command = (f".venv/bin/python benchmarks/gpu_throughput.py --device {args.device}"
               + (" --quick" if args.quick else ""))
    if not on_gpu:
        body = ("**CPU smoke run: these are not GPU figures.** It checks that the script runs; "
                "the sizes are tiny and the device is the CPU.\n\n" + body)
    write_section("GPU throughput (issue 8)" if on_gpu and not args.quick else
                  "GPU throughput script: smoke run" + ("" if on_gpu else " on the CPU"),
                  command, body)
    print(body)
    print(f"{time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
