"""The lock-free mode of the process runtime: Hogwild!, PASSM+ partitions, random blocks.

Every run starts two real processes (about 2 s), so the runs are few and short.
"""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest
import torch
import torch.utils._pytree as pytree

import asyncopt
from asyncopt.api import train
from asyncopt.config import Budget, Evaluation
from asyncopt.errors import ConfigError
from asyncopt.problems.base import Problem
from asyncopt.problems.registry import make_problem
from asyncopt.protocols.base import Server
from asyncopt.protocols.registry import make_protocol
from asyncopt.record import Recorder
from asyncopt.rules.base import Rule
from asyncopt.rules.registry import make_rule
from asyncopt.runtimes.common.layout import partition
from asyncopt.runtimes.common.shared import SharedCounters
from asyncopt.runtimes.common.steplog import StepLog
from asyncopt.runtimes.coordinator import Coordinator
from asyncopt.runtimes.processes import momentum
from asyncopt.runtimes.processes.blocks import BlockChooser
from asyncopt.runtimes.processes.lockfree import dump_rule
from asyncopt.runtimes.processes.lockfree_worker import _LockFreeWorker
from asyncopt.runtimes.registry import make_runtime
from asyncopt.runtimes.sim.speed import make_speed_model

QUADRATIC = {"name": "quadratic", "dim": 10, "noise": 0.1, "heterogeneity": 1.0}
MLP = {"name": "mlp", "hidden": 16}  # 4 tensors: 1024, 16, 160 and 10 entries


def _run(problem: Problem, rule: dict, steps: int, *, protocol: str = "asgd", every: int = 50,
         **options):
    """Run lock-free by hand (not through ``train``), to keep the runtime for inspection."""
    n = problem.num_workers
    server = Server(problem.init_params(torch.Generator().manual_seed(0)), make_rule(rule, n))
    recorder = Recorder()
    coordinator = Coordinator(problem, make_protocol({"name": protocol}, server, n), recorder,
                              Budget(steps=steps), Evaluation(every))
    runtime = make_runtime("processes", problem, make_speed_model({}, n, 0), 0,
                           {"mode": "lockfree", **options})
    runtime.run(coordinator)
    summary = coordinator.finish()
    return runtime, server, summary, recorder.history()


def _workers_left() -> list[multiprocessing.Process]:
    return [p for p in multiprocessing.active_children() if p.name.startswith("asyncopt-worker")]


def _check_trained(summary: dict, history, steps: int) -> None:
    arrivals, losses = history.arrivals, history.evaluations["loss"]
    assert summary["status"] == "completed"
    assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0]
    stepped = arrivals["action"] == "step"
    # every applied step is one row; at most one in-flight step per other worker past the budget
    assert steps <= summary["version"] == stepped.sum() <= steps + 1
    assert set(arrivals["worker"]) == {0, 1} and (arrivals["delay"] >= 0).all()
    assert (np.diff(arrivals["version"]) >= 0).all()
    assert not _workers_left()


@pytest.mark.slow
def test_whole_model_hogwild_shares_one_adam_step_counter():
    # 2,000 quick steps (~0.1 ms each) span many scheduler time slices, so the two workers
    # interleave even on a loaded 2-core machine (300 were done before the second one ran)
    runtime, server, summary, history = _run(make_problem(QUADRATIC, 2, 0),
                                             {"name": "adam", "lr": 0.05}, 2000)
    _check_trained(summary, history, 2000)
    assert summary["max_delay"] >= 1  # the two workers really overlap
    # the main process sees the one shared counter: every worker's steps, not one worker's
    # (~version / 2), and exactly (its increments take the shared lock: no tick is lost)
    counts = server.state.states[0].count  # one counter per leaf; whole-model steps tick all
    assert [int(c) for c in counts.values()] == [summary["version"]] * len(counts)
    assert all(c.is_shared() for c in counts.values())
    assert all(set(counts) == {"whole"} for counts in runtime.block_steps)


@pytest.mark.slow
def test_passm_partition_warms_up_then_alternates_full_and_own_partition():
    # paced (2 ms a step at least): unpaced, one worker could take every step after the
    # warm-up before the other one is scheduled (seen on a loaded 2-core machine)
    runtime, _, summary, history = _run(make_problem(MLP, 2, 0), {"name": "sgd", "lr": 0.1},
                                        200, blocks="partition", warmup_steps=100,
                                        time_scale=0.002)
    _check_trained(summary, history, 200)
    for counts in runtime.block_steps:
        # ≥ 100 shared steps were full; afterwards each worker alternates full / partition
        assert counts["partition"] >= 1 and counts["whole"] >= counts["partition"]
    total = sum(c["whole"] for c in runtime.block_steps)
    assert total - sum(c["partition"] for c in runtime.block_steps) >= 100 - 2


@pytest.mark.slow
def test_random_overlapping_blocks_train():
    runtime, _, summary, history = _run(make_problem(MLP, 2, 0), {"name": "sgd", "lr": 0.1}, 200,
                                        blocks="random", block_fraction=0.5)
    _check_trained(summary, history, 200)
    assert all(set(counts) == {"random"} for counts in runtime.block_steps)


@pytest.mark.slow
@pytest.mark.parametrize("rule", [
    {"name": "adagrad_norm", "lr": 1.0},
    {"name": "adagrad", "lr": 0.3},
    {"name": "amsgrad", "lr": 0.05, "bias_correction": True, "eps": 1e-8},
    {"name": "normalized_sgd", "lr": 0.05, "momentum": 0.9, "kind": "ema"},
])
def test_gratton_toint_rules_run_lock_free(rule):
    # enough quick steps that both workers surely take part (see the step-counter test)
    _, _, summary, history = _run(make_problem(QUADRATIC, 2, 0), rule, 1000, blocks="whole")
    _check_trained(summary, history, 1000)


@pytest.mark.slow
@pytest.mark.parametrize("blocks", ["partition", "random"])
def test_block_steps_that_form_only_the_blocks_gradient_take_the_same_steps(blocks):
    # one worker: deterministic, so the run with block gradients and the run with full ones
    # restricted to the block must agree bit for bit (closed-form and autograd MLPs)
    for gradient in ("closed_form", "autograd"):
        problem = make_problem({**MLP, "gradient": gradient}, 1, 0)
        runs = [_run(problem, {"name": "sgd", "lr": 0.1}, 40, blocks=blocks, backprop=backprop,
                     block_fraction=0.5) for backprop in ("block", "full")]
        (_, fast, _, history), (_, slow, _, reference) = runs
        assert runs[0][0].block_steps[0].get(blocks, 0) >= 10
        assert np.array_equal(history.arrivals["loss"], reference.arrivals["loss"])
        for name, value in slow.params.items():
            assert torch.equal(fast.params[name], value), (gradient, name)


@pytest.mark.slow
def test_per_worker_momentum_keeps_a_buffer_per_process_and_resumes_with_them(tmp_path):
    runtime, server, summary, history = _run(
        make_problem(MLP, 2, 0), {"name": "momentum", "lr": 0.05}, 300, blocks="partition",
        momentum="per_worker", time_scale=0.001)
    _check_trained(summary, history, 300)
    shared = momentum.traces(server.state)[0].momentum
    assert all(float(v.abs().sum()) == 0.0 for v in shared.values())  # nobody used it
    mine = [momentum.traces(state)[0].momentum for state in runtime.worker_states]
    assert all(float(v.abs().sum()) > 0.0 for buffers in mine for v in buffers.values())
    assert not all(torch.equal(mine[0][k], mine[1][k]) for k in mine[0])
    config = {"problem": MLP, "workers": 2, "rule": {"name": "momentum", "lr": 0.05},
              "budget": {"steps": 120}, "eval": {"every": 40}, "runtime": "processes",
              "runtime_options": {"mode": "lockfree", "momentum": "per_worker",
                                  "time_scale": 0.01, "checkpoint_every": 50},
              "output": {"dir": str(tmp_path), "name": "run"}}
    first = asyncopt.run(config)
    saved = torch.load(first.run_dir / "checkpoint.pt", weights_only=True)
    assert len(saved["worker_states"]) == 2 and saved["version"] >= 50
    assert all(float(leaf.abs().sum()) > 0 for leaves in saved["worker_states"] for leaf in leaves)
    resumed = asyncopt.resume_run(first.run_dir, overrides=["budget.steps=200"])
    assert resumed.summary["status"] == "completed" and resumed.summary["version"] >= 200
    with pytest.raises(ConfigError, match=r"runtime_options.momentum.*per_worker"):
        asyncopt.resume_run(first.run_dir, overrides=["runtime_options.momentum='shared'"])
    with pytest.raises(ConfigError, match="heavy-ball buffer"):
        _run(make_problem(MLP, 2, 0), {"name": "adam", "lr": 0.01}, 10, momentum="per_worker")
    assert not _workers_left()


def test_partition_is_contiguous_and_balanced_by_size():
    sizes = [100, 1, 1, 50, 50, 98, 2]
    runs = partition(sizes, 3)
    assert [j for run in runs for j in run] == list(range(len(sizes)))  # contiguous, in order
    assert all(len(run) > 0 for run in runs)
    assert [sum(sizes[j] for j in run) for run in runs] == [101, 101, 100]  # the optimum
    assert partition([5, 5], 2) == [range(0, 1), range(1, 2)]
    with pytest.raises(ValueError):
        partition([1], 2)
    chooser = BlockChooser("partition", list("abcdefg"), sizes, 1, 3, seed=0, block_fraction=0.5,
                           warmup_steps=10)
    assert chooser.next(9) == ("whole", list("abcdefg"))
    assert [chooser.next(10)[0] for _ in range(4)] == ["whole", "partition"] * 2
    assert chooser.next(11)[0] == "whole" and chooser.next(11) == ("partition", list("cde"))


def test_random_blocks_are_seeded_per_worker():
    def draws(worker: int) -> list[list[str]]:
        chooser = BlockChooser("random", list("abcdef"), [1] * 6, worker, 2, seed=3,
                               block_fraction=0.5, warmup_steps=0)
        return [chooser.next(0)[1] for _ in range(5)]

    assert draws(0) == draws(0) != draws(1)
    assert all(len(block) == 3 for block in draws(0))


def test_bad_options_and_protocols_are_refused_naming_the_field():
    problem = make_problem(QUADRATIC, 2, 0)
    for options, field in (({"mode": "hogwild"}, "runtime_options.mode"),
                           ({"mode": "lockfree", "blocks": "diagonal"}, "runtime_options.blocks"),
                           ({"blocks": "random"}, "runtime_options.blocks"),
                           ({"mode": "lockfree", "block_fraction": 0.0},
                            "runtime_options.block_fraction"),
                           ({"mode": "lockfree", "warmup_steps": -1},
                            "runtime_options.warmup_steps"),
                           ({"mode": "lockfree", "backprop": "half"},
                            "runtime_options.backprop.*one of block, full"),
                           ({"backprop": "full"}, "runtime_options.backprop.*lock-free"),
                           ({"mode": "lockfree", "blocks": "partition"},  # 1 tensor, 2 workers
                            "runtime_options.blocks")):
        with pytest.raises(ConfigError, match=field):
            train(problem, {"name": "sgd"}, "asgd", budget={"steps": 1}, runtime="processes",
                  runtime_options=options)
    with pytest.raises(ConfigError, match=r"protocol.name.*mode = 'server'"):
        train(problem, {"name": "sgd"}, "minibatch", budget={"steps": 1}, runtime="processes",
              runtime_options={"mode": "lockfree"})
    assert not _workers_left()


def _tick_many(count: torch.Tensor, lock, go, times: int) -> None:
    from asyncopt.rules.base import share_ticks, tick

    torch.set_num_threads(1)
    share_ticks(lock)
    go.wait(60)  # a barrier: both processes tick at the same time
    for _ in range(times):
        tick(count)


@pytest.mark.slow
def test_ticks_of_a_shared_counter_from_two_processes_are_all_counted():
    # without the lock (``share_ticks(None)``) this loses thousands of the 200,000 ticks
    context = multiprocessing.get_context("spawn")
    count, lock, go = torch.zeros((), dtype=torch.int64).share_memory_(), context.Lock(), \
        context.Barrier(2)
    processes = [context.Process(target=_tick_many, args=(count, lock, go, 100_000))
                 for _ in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0, 0]
    assert int(count) == 200_000


class _Poisoned(Problem):
    """The quadratic, except that every gradient has a NaN in its first leaf."""

    def __init__(self, inner: Problem) -> None:
        self.inner, self.num_workers = inner, inner.num_workers

    def init_params(self, generator):
        return self.inner.init_params(generator)

    def loss_and_grad(self, params, worker, generator):
        loss, grads = self.inner.loss_and_grad(params, worker, generator)
        first = next(iter(grads))
        grads[first] = grads[first].clone()
        grads[first].view(-1)[0] = float("nan")
        return loss, grads

    def evaluate(self, params):
        return self.inner.evaluate(params)


def _worker_here(problem: Problem, rule: Rule):
    """A lock-free worker in this process (no spawn): its pipe's other end, params and state."""
    params = problem.init_params(torch.Generator().manual_seed(0))
    state = rule.init(params)
    counters = SharedCounters(multiprocessing.get_context("spawn"))
    ours, theirs = multiprocessing.Pipe()
    options = {"speed": make_speed_model({}, problem.num_workers, 0), "seed": 0,
               "time_scale": 0.0, "blocks": "whole", "block_fraction": 0.5, "warmup_steps": 0,
               "backprop": "block", "max_version": 100}
    worker = _LockFreeWorker(0, theirs, problem, params, state, dump_rule(rule), counters,
                             StepLog(1), options)
    return worker, ours


def _reported(worker, pipe) -> list[tuple]:
    """The rows the worker wrote into its ring in shared memory (nothing goes by the pipe)."""
    worker._flush()
    assert not pipe.poll()
    return worker.log.take(0)


def _raise(*args, **kwargs):
    raise AssertionError("the functional update was called although the rule has a fused step")


@pytest.mark.parametrize("spec", [{"name": "sgd", "lr": 0.1}, {"name": "adam", "lr": 0.1},
                                  {"name": "sgd", "lr": 0.1, "max_delay": 3}],
                         ids=["sgd-fused", "adam-fused", "sgd-chain-functional"])
def test_a_non_finite_gradient_is_rejected_never_applied(spec):
    rule = make_rule(spec, 1)
    worker, pipe = _worker_here(_Poisoned(make_problem(QUADRATIC, 1, 0)), rule)
    before = {k: v.clone() for k, v in worker.params.items()}
    state_before = [t.clone() for t in _tensors(worker.stepper.state)]
    for _ in range(3):
        worker.step(0.0)
    assert [row[0] for row in _reported(worker, pipe)] == ["reject"] * 3
    assert worker.counters.version == 0
    for key, value in before.items():
        assert torch.equal(worker.params[key], value)
    assert all(torch.equal(a, b) for a, b in zip(_tensors(worker.stepper.state), state_before,
                                                  strict=True))


def test_the_worker_steps_with_the_fused_step_and_falls_back_to_update_and_apply():
    rule = make_rule({"name": "adam", "lr": 0.05}, 1)
    fused_only = Rule(rule.init, _raise, rule.step)  # any functional call would fail
    fused, pipe = _worker_here(make_problem(QUADRATIC, 1, 0), fused_only)
    functional, other = _worker_here(make_problem(QUADRATIC, 1, 0), rule._replace(step=None))
    for _ in range(20):
        fused.step(0.0)
        functional.step(0.0)
    assert [row[:2] for row in _reported(fused, pipe)] == [("step", k) for k in range(1, 21)]
    assert [row[:2] for row in _reported(functional, other)] == [
        ("step", k) for k in range(1, 21)]
    for key in fused.params:
        torch.testing.assert_close(fused.params[key], functional.params[key], rtol=0,
                                   atol=1e-6)


def _tensors(state: object) -> list[torch.Tensor]:
    """Every tensor in a rule state (NamedTuples, dicts), in pytree order."""
    return [t for t in pytree.tree_leaves(state) if isinstance(t, torch.Tensor)]
