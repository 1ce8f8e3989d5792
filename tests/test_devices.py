"""``runtime_options.device`` in the processes runtime (issue 8).

On a CPU-only machine these tests check the option, the device plan, the refusals (all before
any process starts), moving a problem, and the whole device path run with CPU tensors
(``device = ["cpu"]``: placement, synchronized shared buffers, per-worker start-up), which must
give the plain runtime's history. The CUDA tests below them are skipped without a GPU: the CUDA
path has never run on one, and these are the first thing to run where one exists.
"""

from __future__ import annotations

import multiprocessing
import pickle
import threading

import numpy as np
import pytest
import torch
from faults import Faulty, logged

from asyncopt.api import Result, train
from asyncopt.config import Evaluation
from asyncopt.errors import ConfigError
from asyncopt.problems.base import Problem
from asyncopt.problems.registry import make_problem
from asyncopt.rules.registry import make_rule
from asyncopt.runtimes.processes.device import check_plan, plan_devices
from asyncopt.runtimes.processes.device_shared import DeviceSharedModel

MLP = {"name": "mlp", "dataset": "digits", "hidden": 16, "batch_size": 8, "gradient": "autograd"}
CNN = {"name": "cnn", "dataset": "digits", "model": "resnet8", "batch_size": 8}
QUADRATIC = {"name": "quadratic", "dim": 10, "noise": 0.1}
CUDA = pytest.mark.skipif(not torch.cuda.is_available(),
                          reason="needs a CUDA device (the CUDA path has never run on a GPU)")
TWO_GPUS = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")


def _train(problem: Problem, *, rule: dict | None = None, steps: int = 100, every: int = 50,
           **options) -> Result:
    n = problem.num_workers
    return train(problem, make_rule(rule or {"name": "sgd", "lr": 0.1}, n), "asgd",
                 budget={"steps": steps}, evaluation=Evaluation(every, "steps"),
                 runtime="processes", runtime_options=options)


def _workers_left() -> list[multiprocessing.Process]:
    return [p for p in multiprocessing.active_children() if p.name.startswith("asyncopt-")]


def test_device_plans_map_workers_round_robin_with_the_model_on_the_first_device():
    assert plan_devices("cpu", 3) is None  # the plain runtime
    cpu = plan_devices(["cpu", "cpu"], 3)
    assert cpu.home == torch.device("cpu") and cpu.workers == (torch.device("cpu"),) * 3
    one = plan_devices("cuda", 3, cuda_count=2)
    assert one.home == torch.device("cuda:0") and set(one.workers) == {torch.device("cuda:0")}
    assert set(plan_devices("cuda:1", 2, cuda_count=2).workers) == {torch.device("cuda:1")}
    two = plan_devices(["cuda:1", "cuda:0"], 5, cuda_count=2)
    assert two.home == torch.device("cuda:1")
    assert [d.index for d in two.workers] == [1, 0, 1, 0, 1]
    assert two.distinct == [torch.device("cuda:1"), torch.device("cuda:0")]


@pytest.mark.parametrize(("device", "count", "allowed"), [
    ("gpu", 0, "'cpu', 'cuda' or 'cuda:K'"),
    ([], 0, "a list of them"),
    (["cuda:0", 1], 1, "a list of them"),
    ("cuda", 0, r"has 0 CUDA device\(s\) \(torch.cuda.is_available\(\) is False\)"),
    ("cuda:2", 2, r"has 2 CUDA device\(s\), so cuda:0..cuda:1"),
    (["cuda:0", "cuda:3"], 2, "has 2 CUDA device"),
    (["cpu", "cuda:0"], 1, "all 'cpu' or all CUDA devices"),
])
def test_bad_devices_are_refused_naming_the_field(device, count, allowed):
    with pytest.raises(ConfigError, match=f"runtime_options.device.*{allowed}"):
        plan_devices(device, 2, cuda_count=count)


def test_what_the_device_path_does_not_do_is_refused_before_any_process_starts():
    problem = make_problem(MLP, 2, 0)
    two_gpus = plan_devices(["cuda:0", "cuda:1"], 2, cuda_count=2)
    with pytest.raises(ConfigError, match=r"runtime_options.device.*one device with mode = "):
        check_plan(two_gpus, ["cuda:0", "cuda:1"], problem, mode="lockfree", servers=1)
    check_plan(two_gpus, ["cuda:0", "cuda:1"], problem, mode="server", servers=1)
    for options, field in (({"device": ["cpu"], "servers": 2}, "runtime_options.servers"),
                           ({"device": ["cpu"], "mode": "lockfree", "servers": 2},
                            "runtime_options.servers")):
        with pytest.raises(ConfigError, match=field):
            _train(problem, steps=1, **options)
    moved = make_problem(MLP, 2, 0).to("meta")  # e.g. moved to a GPU for the simulator
    assert moved.device.type == "meta" and problem.device.type == "cpu"
    with pytest.raises(ConfigError, match=r"runtime_options.device.*'meta', the device the"):
        _train(moved, steps=1)
    for spec in (QUADRATIC, {**MLP, "gradient": "closed_form"}):  # data kept on the CPU
        with pytest.raises(ConfigError, match=r"runtime_options.device.*'cpu' for problem"):
            _train(make_problem(spec, 2, 0), steps=1, device=["cpu"])
    assert not _workers_left()


def test_a_worker_moves_only_its_own_shard_and_pickling_sends_the_cpu_data():
    problem = make_problem(CNN, 3, 0)
    assert problem.movable and not make_problem(QUADRATIC, 2, 0).movable
    problem.to("meta", worker=1)  # "meta": a device with no data, enough to see what moved
    assert [X.device.type for X, _ in problem._shard_data] == ["cpu", "meta", "cpu"]
    assert next(problem.module.parameters()).device.type == "meta"
    assert problem._picks(1, torch.Generator().manual_seed(0)).device.type == "meta"
    assert problem.X_train.device.type == "cpu"
    copy = pickle.loads(pickle.dumps(problem))  # what a worker process receives
    assert {X.device.type for X, _ in copy._shard_data} == {"cpu"}
    assert copy._picks(1, torch.Generator().manual_seed(0)).device.type == "cpu"


def test_a_problem_moved_away_and_back_computes_what_it_did():
    problem = make_problem(CNN, 2, 0)
    params = problem.init_params(torch.Generator().manual_seed(0))
    before = problem.loss_and_grad(params, 1, torch.Generator().manual_seed(3))
    metrics = problem.evaluate(params)
    problem.to("cpu")
    after = problem.loss_and_grad(params, 1, torch.Generator().manual_seed(3))
    assert after[0] == before[0]
    for k, value in before[1].items():
        torch.testing.assert_close(after[1][k], value, rtol=0.0, atol=0.0)
    assert problem.evaluate(params) == pytest.approx(metrics)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["server", "lockfree"])
def test_the_device_path_on_the_cpu_gives_the_plain_runtimes_history(mode):
    """One worker is sequential, so both runs compute the same gradients at the same models:
    the device path (placed model and rule state, synchronized buffers, per-worker start-up,
    restore) must change nothing but where tensors live."""
    runs = [_train(make_problem(MLP, 1, 0), rule={"name": "adam", "lr": 0.01}, steps=60,
                   mode=mode, device=device) for device in ("cpu", ["cpu"])]
    plain, device = (run.history for run in runs)
    for column in ("version", "delay", "action"):
        assert np.array_equal(plain.arrivals[column], device.arrivals[column]), column
    np.testing.assert_allclose(device.arrivals["loss"], plain.arrivals["loss"], rtol=1e-6)
    # lock-free, the main process evaluates the shared model while the worker steps it: only
    # the final evaluation, after the worker stopped, is at a known model
    evaluated = slice(None) if mode == "server" else slice(-1, None)
    np.testing.assert_allclose(device.evaluations["loss"][evaluated],
                               plain.evaluations["loss"][evaluated], rtol=1e-6)
    for k, value in runs[0].params.items():
        assert runs[1].params[k].device.type == "cpu"
        torch.testing.assert_close(runs[1].params[k], value, rtol=1e-6, atol=1e-7)
    assert runs[1].summary["status"] == "completed" and not _workers_left()


# ---- CUDA: skipped without a GPU ------------------------------------------------------------

def _trained(result: Result, workers: int) -> None:
    losses = result.history.evaluations["loss"]
    assert result.summary["status"] == "completed"
    assert np.isfinite(losses).all() and losses[-1] < 0.8 * losses[0]
    assert set(result.history.arrivals["worker"]) == set(range(workers))
    assert all(v.device.type == "cpu" for v in result.params.values())
    assert not _workers_left()


@CUDA
@pytest.mark.parametrize("spec", [MLP, CNN], ids=["mlp", "resnet8"])
def test_server_mode_on_cuda_trains_with_several_workers_per_gpu(spec):
    result = _train(make_problem(spec, 4, 0), rule={"name": "adam", "lr": 0.01}, steps=200,
                    device="cuda")
    _trained(result, 4)
    assert result.summary["max_delay"] >= 1


@CUDA
@pytest.mark.parametrize("blocks", ["whole", "partition"])
def test_lock_free_on_cuda_trains_with_one_shared_adam_state(blocks):
    result = _train(make_problem(CNN, 2, 0), rule={"name": "adam", "lr": 0.01}, steps=200,
                    device="cuda", mode="lockfree", blocks=blocks)
    _trained(result, 2)
    assert 200 <= result.summary["version"] <= 201


@CUDA
@pytest.mark.parametrize("mode", ["server", "lockfree"])
def test_on_cuda_a_killed_worker_is_recorded_and_the_other_goes_on(mode, caplog):
    problem = Faulty(make_problem(MLP, 2, 0), victims=(1,), at=5)
    result = _train(problem, steps=300, device="cuda", mode=mode)
    assert logged(caplog, "worker process 1 died"), caplog.text
    assert result.summary["status"] == "completed" and result.summary["version"] >= 300
    assert list(result.history.arrivals["action"]).count("lost") == 1
    assert not _workers_left()


@CUDA
@pytest.mark.parametrize("mode", ["server", "lockfree"])
def test_one_worker_on_cuda_follows_the_cpu_run(mode):
    runs = [_train(make_problem(MLP, 1, 0), rule={"name": "adam", "lr": 0.01}, steps=60,
                   mode=mode, device=device) for device in ("cpu", "cuda")]
    np.testing.assert_allclose(runs[1].history.arrivals["loss"], runs[0].history.arrivals["loss"],
                               rtol=1e-4)
    for k, value in runs[0].params.items():
        torch.testing.assert_close(runs[1].params[k], value, rtol=1e-4, atol=1e-5)


@CUDA
def test_the_seqlock_on_cuda_never_lets_a_torn_model_through():
    like = {"a": torch.zeros(3_000_000), "b": torch.zeros(7)}
    device = torch.device("cuda")
    model = DeviceSharedModel(like, device)
    model.publish({k: torch.zeros_like(v, device=device) for k, v in like.items()}, 0)
    stop = threading.Event()

    def write() -> None:  # on a stream of its own, so its copies can overlap the reads
        version = 0
        with torch.cuda.stream(torch.cuda.Stream(device)):
            while not stop.is_set():
                version += 1
                model.publish({k: torch.full_like(v, float(version), device=device)
                               for k, v in like.items()}, version)

    writer = threading.Thread(target=write)
    writer.start()
    out = torch.empty(3_000_007, device=device)
    try:
        for _ in range(400):
            version, _ = model.read(out)
            assert bool(torch.all(out == version)), "a torn read got through"
    finally:
        stop.set()
        writer.join(timeout=10)


@TWO_GPUS
def test_server_mode_spreads_workers_over_two_gpus():
    result = _train(make_problem(CNN, 4, 0), rule={"name": "adam", "lr": 0.01}, steps=200,
                    device=["cuda:0", "cuda:1"])
    _trained(result, 4)
