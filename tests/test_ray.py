"""The Ray runtime on an embedded local Ray: training, loopback only, a killed worker actor,
checkpoints and ``--resume``, bad input, the shared-memory transport of co-located workers (and
that it leaves nothing in /dev/shm). One Ray serves the whole module (about 5 s to start) and is
shut down at its end, whatever happened.
"""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import faults
import numpy as np
import pytest
import torch
from faults import Faulty, logged

ray = pytest.importorskip("ray")

from asyncopt import cli, resume  # noqa: E402
from asyncopt.api import Result, resume_run, run, train  # noqa: E402
from asyncopt.config import Budget, Evaluation  # noqa: E402
from asyncopt.errors import ConfigError  # noqa: E402
from asyncopt.problems.base import Problem  # noqa: E402
from asyncopt.problems.registry import make_problem  # noqa: E402
from asyncopt.protocols.base import Server  # noqa: E402
from asyncopt.protocols.registry import make_protocol  # noqa: E402
from asyncopt.record import Recorder  # noqa: E402
from asyncopt.rules.registry import make_rule  # noqa: E402
from asyncopt.runtimes.common.layout import Layout  # noqa: E402
from asyncopt.runtimes.coordinator import Coordinator  # noqa: E402
from asyncopt.runtimes.ray import cluster, shm  # noqa: E402
from asyncopt.runtimes.registry import make_runtime  # noqa: E402
from asyncopt.runtimes.sim.speed import make_speed_model  # noqa: E402

pytestmark = pytest.mark.slow
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # actors cannot import tests
ray.cloudpickle.register_pickle_by_value(faults)
QUADRATIC = {"name": "quadratic", "dim": 10, "noise": 0.1, "heterogeneity": 1.0}


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    cluster.start_local(num_cpus=2)
    try:
        yield
    finally:
        ray.shutdown()


def _train(problem: Problem, protocol: str | dict = "asgd", *, options: dict | None = None,
           **budget) -> Result:
    return train(problem, make_rule({"name": "sgd", "lr": 0.1}, problem.num_workers), protocol,
                 budget=budget, evaluation=Evaluation(50), runtime="ray",
                 runtime_options={"worker_cpus": 0.5, **(options or {})})


def _drive(problem: Problem, protocol: str = "asgd", *, options: dict | None = None,
           steps: int = 200) -> tuple:
    """Run the Ray runtime itself (as ``train`` does), to look at it afterwards: answer
    (runtime, history, summary)."""
    server = Server(problem.init_params(torch.Generator().manual_seed(0)),
                    make_rule({"name": "sgd", "lr": 0.1}, problem.num_workers))
    recorder = Recorder()
    coordinator = Coordinator(problem, make_protocol({"name": protocol}, server,
                                                     problem.num_workers),
                              recorder, Budget(steps=steps), Evaluation(50))
    runtime = make_runtime("ray", problem, make_speed_model({}, problem.num_workers, 0), 0,
                           {"worker_cpus": 0.5, **(options or {})})
    runtime.run(coordinator)
    return runtime, recorder.history(), coordinator.finish()


def _left_in_dev_shm(runtime) -> bool:
    return runtime.shm.segment is not None and runtime.shm.segment.path.exists()


def _config(tmp_path: Path, **options) -> dict:
    return {"problem": QUADRATIC, "workers": 2, "rule": {"name": "momentum", "lr": 0.1},
            "runtime": "ray", "runtime_options": {"worker_cpus": 0.5, **options},
            "budget": {"steps": 120}, "eval": {"every": 20},
            "output": {"dir": str(tmp_path), "name": "run"}}


def test_trains_with_measured_delays_like_every_runtime():
    result = _train(make_problem(QUADRATIC, 2, 0), steps=200)
    arrivals = result.history.arrivals
    assert result.summary["status"] == "completed"
    assert result.summary["version"] == 200
    assert result.history.final("loss") < 0.1 * result.history.evaluations["loss"][0]
    assert set(arrivals["worker"].tolist()) == {0, 1}  # both actors delivered gradients
    # the delay of a row is the server version before it minus the version it was computed at
    assert (arrivals["delay"] >= 0).all() and arrivals["delay"].max() >= 1


def test_synchronous_protocol_restarts_and_cancels_through_the_same_replies():
    result = _train(make_problem(QUADRATIC, 2, 0), "minibatch", steps=30)
    actions = result.history.arrivals["action"].tolist()
    assert result.summary["status"] == "completed" and result.summary["version"] == 30
    assert actions.count("step") == 30 and actions.count("buffer") == 30  # two per step


def test_artificial_delay_hands_workers_older_models_from_the_object_store():
    result = _train(make_problem(QUADRATIC, 2, 0), {"name": "asgd", "artificial_delay": 6},
                    steps=100)
    delays = result.history.arrivals["delay"]
    assert result.summary["status"] == "completed"
    assert delays.max() >= 5 and delays.mean() > 2  # ~uniform on 0..5, plus the real staleness


def test_every_ray_server_listens_on_loopback_only():
    listeners = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    ours = [line for line in listeners.splitlines()
            if any(name in line for name in ("raylet", "gcs_server", "ray::", "RuntimeEnv"))]
    assert ours, listeners  # the embedded Ray is listening somewhere
    for line in ours:
        address = line.split()[3].rsplit(":", 1)[0]
        assert address in ("127.0.0.1", "[::ffff:127.0.0.1]", "[::1]"), line


def test_killed_worker_actor_is_restarted_and_the_run_completes(tmp_path, caplog):
    # Ringleader needs every worker's gradient in every round: the run cannot reach its 300
    # steps before the restarted actor is back, however long the restart takes on a busy machine
    paced = {"time_scale": 0.02}  # 20 ms a gradient
    undisturbed = _train(make_problem(QUADRATIC, 2, 0), "ringleader", options=paced, steps=300)
    problem = Faulty(make_problem(QUADRATIC, 2, 0), victims=(1,), at=20,
                     once=tmp_path / "killed")
    runtime, history, summary = _drive(problem, "ringleader", options=paced, steps=300)
    assert logged(caplog, "actor 1 died"), caplog.text
    arrivals = history.arrivals
    rows = [(a, w) for a, w in zip(arrivals["action"], arrivals["worker"], strict=True)
            if a in ("lost", "restart")]
    assert (tmp_path / "killed").exists()
    assert rows == [("lost", 1), ("restart", 1)]
    assert summary["status"] == "completed" and summary["version"] == 300
    after = arrivals["action"].tolist().index("restart")
    assert 1 in arrivals["worker"][after + 1:][arrivals["action"][after + 1:] == "step"]
    assert math.isclose(history.final("loss"), undisturbed.history.final("loss"),
                        rel_tol=0.5, abs_tol=0.02)
    # it died on the shared-memory path and its restarted actor mapped the segment again
    assert runtime.deaths == [0, 1] and runtime.shm.shared == [True, True]
    assert not _left_in_dev_shm(runtime)


def test_checkpoint_resume_continues_in_a_new_directory(tmp_path):
    first = run(_config(tmp_path, checkpoint_every=50))
    checkpoint = torch.load(first.run_dir / "checkpoint.pt", weights_only=True)
    assert checkpoint["version"] == 100 and checkpoint["arrival_rows"] >= 100
    before = _digest(first.run_dir)
    resumed = resume_run(first.run_dir, overrides=["budget.steps=200"])
    assert _digest(first.run_dir) == before  # the old run directory is only read
    assert resumed.run_dir == tmp_path / "run-resumed"
    assert resumed.summary["version"] == 200
    arrivals = resumed.history.arrivals
    prefix = checkpoint["arrival_rows"]
    assert arrivals["version"][:prefix].tolist() == first.history.arrivals["version"][
        :prefix].tolist()
    assert len(arrivals["now"]) == prefix + 100  # the resumed run took the 100 steps left
    assert resumed.history.final("loss") < first.history.evaluations["loss"][0]


def test_ringleader_tables_and_round_survive_a_resume(tmp_path, monkeypatch):
    config = _config(tmp_path, checkpoint_every=35)  # the last at version 105: mid-round
    first = run({**config, "protocol": {"name": "ringleader"}})
    saved = torch.load(first.run_dir / "checkpoint.pt", weights_only=True)["protocol_state"]
    assert saved["kind"] == "Ringleader" and saved["rounds"] == 52
    assert saved["updated"].count(True) == 1  # one of the 2 workers updated in round 53
    assert (saved["current"]["counts"] >= 1).all()  # its table full: Phase 2, it steps
    restored = []
    original = resume.restore

    def restore(coordinator, state, history):
        original(coordinator, state, history)
        restored.append((coordinator.protocol, coordinator.protocol.state_dict()))

    monkeypatch.setattr(resume, "restore", restore)
    resumed = resume_run(first.run_dir, overrides=["budget.steps=160"])
    protocol, state = restored[0]
    for key in ("current", "buffer"):  # the tables as saved, bit for bit
        for field in ("counts", "means", "average"):
            assert torch.equal(state[key][field], saved[key][field])
    assert (state["updated"], state["rounds"], state["retired"]) == (
        saved["updated"], saved["rounds"], saved["retired"])
    # the round went on where it stopped: n = 2 steps per round since version 0
    assert resumed.summary["version"] == 160 and protocol.rounds == 80
    assert protocol.retired > saved["retired"]
    prefix = torch.load(first.run_dir / "checkpoint.pt", weights_only=True)["arrival_rows"]
    assert (resumed.history.arrivals["delay"][prefix:] <= 2).all()  # Ringleader's δ ≤ 2n − 2


def test_block_servers_checkpoint_their_blocks_and_resume_from_them(tmp_path):
    config = _config(tmp_path, checkpoint_every=50, servers=2, layout="ranges")
    config["rule"], config["eval"] = {"name": "adam", "lr": 0.05}, {"every": 10**6}
    first = run(config)
    saved = torch.load(first.run_dir / "checkpoint.pt", weights_only=True)
    assert saved["rule_state"] == [] and len(saved["blocks"]) == 2
    versions = [block["version"] for block in saved["blocks"]]
    assert min(versions) >= 50 and saved["version"] >= 50  # each server's own count
    flat = torch.cat([block["block"] for block in saved["blocks"]])
    assert torch.equal(flat, torch.cat([v.reshape(-1) for v in saved["params"].values()]))
    with pytest.raises(ConfigError, match=r"runtime_options\.servers = 3.*2, the checkpoint"):
        resume_run(first.run_dir, overrides=["runtime_options.servers=3"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    resumed = resume_run(first.run_dir, overrides=["budget.steps=250"])
    assert resumed.summary["status"] == "completed"
    # the servers start from their blocks: the model evaluated at the resume is the saved one
    evaluations = resumed.history.evaluations
    at = evaluations["version"].tolist().index(saved["version"], 1)
    loss = make_problem(QUADRATIC, 2, 0).evaluate(saved["params"])["loss"]
    assert math.isclose(evaluations["loss"][at], loss, rel_tol=1e-6)
    # ... and their versions: 250 is reached with about 250 - v steps more, not 250
    actions = resumed.history.arrivals["action"][saved["arrival_rows"]:]
    assert 250 - max(versions) <= (actions == "step").sum() <= 250 - min(versions) + 60
    last = torch.load(resumed.run_dir / "checkpoint.pt", weights_only=True)
    assert min(block["version"] for block in last["blocks"]) >= 200
    assert resumed.history.final("loss") < resumed.history.evaluations["loss"][0]


def test_corrupt_or_mismatched_checkpoint_is_refused_and_nothing_is_written(tmp_path, capsys):
    first = run(_config(tmp_path, checkpoint_every=60))
    before = _digest(first.run_dir)
    assert cli.main(["run", "--quiet", "--resume", str(first.run_dir),
                     "--set", "problem.dim=12"]) == 2
    assert "does not belong to this configuration" in capsys.readouterr().err
    path = first.run_dir / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:100])
    before = _digest(first.run_dir)
    with pytest.raises(ConfigError, match="readable checkpoint"):
        resume_run(first.run_dir)
    assert _digest(first.run_dir) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_more_workers_than_the_cluster_can_place_fail_after_startup_timeout_with_the_shortfall():
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"need 2.5 CPUs .*has 2 CPUs, 2 of them free "
                                          r"\(short by 0.5; at most 4 such workers fit\)"):
        _train(make_problem(QUADRATIC, 5, 0), options={"startup_timeout": 1.0}, steps=10)
    assert time.monotonic() - started < 30
    assert all(group["state"] == "REMOVED"  # the reservation was given back
               for group in ray.util.placement_group_table().values())
    _wait_for(lambda: ray.available_resources().get("CPU") == 2.0)


def test_workers_are_placed_in_one_placement_group_of_their_cpus():
    before = set(ray.util.placement_group_table())
    runtime, _, summary = _drive(make_problem(QUADRATIC, 2, 0), steps=20)
    groups = [group for key, group in ray.util.placement_group_table().items()
              if key not in before]
    assert summary["status"] == "completed" and runtime.reservation.group is None
    assert [(g["strategy"], g["bundles"], g["state"]) for g in groups] == [
        ("PACK", {0: {"CPU": 0.5}, 1: {"CPU": 0.5}}, "REMOVED")]  # both at once, given back
    _wait_for(lambda: ray.available_resources().get("CPU") == 2.0)


def test_unreachable_address_fails_fast_and_writes_nothing(tmp_path, capsys):
    with pytest.raises(ConfigError, match="cannot be reached"):
        _train(make_problem(QUADRATIC, 2, 0), options={"address": "127.0.0.1:1"}, steps=10)
    ray.shutdown()  # this module's Ray is up: a run would use it whatever its address says
    try:
        for address, match in [("127.0.0.1:1", "cannot be reached"),
                               ("http://127.0.0.1:8265", "dashboard's address"),
                               ("nowhere", "'HOST:PORT' of a Ray head")]:
            assert cli.main(["run", "configs/quickstart.toml", "--quiet", "--no-plot",
                             "--set", 'runtime="ray"', "--set",
                             f'runtime_options.address="{address}"',
                             "--out", str(tmp_path)]) == 2, address
            assert match in capsys.readouterr().err
            assert not list(tmp_path.iterdir()), address
    finally:
        cluster.start_local(num_cpus=2)


def _wait_for(condition, timeout: float = 10.0) -> None:
    """Until ``condition()`` (Ray updates its resource view asynchronously)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _digest(run_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.iterdir())}


def test_block_servers_train_like_one_server_with_delays_from_versions():
    one = _train(make_problem(QUADRATIC, 2, 0), steps=200)
    two = _train(make_problem(QUADRATIC, 2, 0), options={"servers": 2, "layout": "ranges"},
                 steps=200)
    arrivals = two.history.arrivals
    assert two.summary["status"] == "completed" and two.summary["version"] >= 200
    assert set(arrivals["worker"].tolist()) == {0, 1}
    assert (arrivals["action"] == "step").all()
    assert (arrivals["delay"] >= 0).all() and arrivals["delay"].max() >= 1
    assert (np.diff(arrivals["version"]) >= 0).all()  # the largest min_b v_b reported so far
    assert two.history.evaluations["loss"][0] > 10 * two.history.final("loss")
    assert math.isclose(two.history.final("loss"), one.history.final("loss"), rel_tol=0.3)
    # the final model is the servers' blocks side by side, and the result carries it
    assert math.isclose(make_problem(QUADRATIC, 2, 0).evaluate(two.params)["loss"],
                        two.history.final("loss"), rel_tol=1e-6)


def test_block_servers_need_asgd_and_at_most_one_server_per_parameter():
    with pytest.raises(ConfigError, match=r"by itself \(asgd\) with runtime_options.servers"):
        _train(make_problem(QUADRATIC, 2, 0), "minibatch", options={"servers": 2}, steps=10)
    with pytest.raises(ConfigError, match="at most the number of parameter tensors"):
        _train(make_problem(QUADRATIC, 2, 0), options={"servers": 2}, steps=10)  # one tensor
    with pytest.raises(ConfigError, match="at most the number of parameters"):
        _train(make_problem(QUADRATIC, 2, 0), options={"servers": 11, "layout": "ranges"},
               steps=10)


def test_layout_cuts_the_flat_model_into_balanced_ranges_or_whole_tensors():
    params = {"w": torch.zeros(3, 4), "b": torch.zeros(4)}
    layout = Layout(params, 3, "ranges")
    assert layout.ranges() == [(0, 5), (5, 10), (10, 16)]
    assert [{k: shape for k, (shape, _) in pieces.items()} for pieces in layout.pieces] == [
        {"w": (5,)}, {"w": (5,)}, {"w": (2,), "b": (4,)}]
    square = {"a": torch.zeros(2, 2), "b": torch.zeros(2, 2)}  # a tensor not cut keeps its shape
    assert [{k: shape for k, (shape, _) in pieces.items()}
            for pieces in Layout(square, 2, "ranges").pieces] == [{"a": (2, 2)}, {"b": (2, 2)}]
    # whole tensors, balanced by size: the default of both runtimes
    mlp = {"w1": torch.zeros(8, 4), "b1": torch.zeros(8), "w2": torch.zeros(2, 8),
           "b2": torch.zeros(2)}
    tensors = Layout(mlp, 2)
    assert tensors.ranges() == [(0, 32), (32, 58)]
    assert [list(pieces) for pieces in tensors.pieces] == [["w1"], ["b1", "w2", "b2"]]
    assert all(pieces[k][0] == tuple(mlp[k].shape) for pieces in tensors.pieces for k in pieces)


def test_dead_server_actor_fails_the_run_with_the_reason():
    problem = make_problem(QUADRATIC, 2, 0)
    server = Server(problem.init_params(torch.Generator().manual_seed(0)),
                    make_rule({"name": "sgd", "lr": 0.1}, 2))
    coordinator = Coordinator(problem, make_protocol({"name": "asgd"}, server, 2), Recorder(),
                              Budget(steps=10**6), Evaluation(10**9))
    runtime = make_runtime("ray", problem, make_speed_model({}, 2, 0), 0,
                           {"servers": 2, "layout": "ranges", "worker_cpus": 0.5,
                            "time_scale": 0.01})
    thread = threading.Thread(target=runtime.run, args=(coordinator,))
    thread.start()
    deadline = time.monotonic() + 60
    while coordinator.version < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    ray.kill(runtime.servers[1])
    thread.join(60)
    assert not thread.is_alive()
    assert coordinator.status == "failed" and "server actor died" in coordinator.stop_reason


def test_colocated_workers_use_shared_memory_and_train_like_the_object_store():
    problem = make_problem(QUADRATIC, 2, 0)
    by_shm, shm_history, shm_summary = _drive(problem)
    by_store, store_history, store_summary = _drive(problem, options={"transport":
                                                                       "object_store"})
    assert by_shm.shm.shared == [True, True] and by_shm.shm.segment is not None  # both on this node
    assert by_store.shm.shared == [False, False] and by_store.shm.segment is None
    for history, summary in ((shm_history, shm_summary), (store_history, store_summary)):
        arrivals = history.arrivals
        assert summary["status"] == "completed" and summary["version"] == 200
        assert set(arrivals["worker"].tolist()) == {0, 1}
        assert (arrivals["delay"] >= 0).all() and arrivals["delay"].max() >= 1
        assert history.final("loss") < 0.1 * history.evaluations["loss"][0]
    assert math.isclose(shm_history.final("loss"), store_history.final("loss"), rel_tol=0.3)
    assert not _left_in_dev_shm(by_shm)


class _Counting(Problem):
    """One float x with gradient -1: SGD at lr 0.1 makes x_v = 0.1 v, and the loss a worker
    reports, -x, says at which version it computed. Worker ``slow`` sleeps ``seconds`` in each
    gradient, so the driver hands out many models meanwhile."""

    num_workers = 3

    def __init__(self, slow: int, seconds: float) -> None:
        self.slow, self.seconds = slow, seconds

    def init_params(self, generator):
        return {"x": torch.zeros(1)}

    def loss_and_grad(self, params, worker, generator):
        loss = -float(params["x"][0])
        if worker == self.slow:
            time.sleep(self.seconds)
        return loss, {"x": -torch.ones(1)}

    def evaluate(self, params):
        return {"loss": -float(params["x"][0])}


def test_every_gradient_is_computed_at_the_version_it_carries_stragglers_included():
    runtime, history, summary = _drive(_Counting(0, 0.03), steps=300)
    arrivals = history.arrivals
    steps = arrivals["action"] == "step"
    computed_at = arrivals["version"][steps] - 1 - arrivals["delay"][steps]
    assert summary["status"] == "completed" and runtime.shm.shared == [True, True, True]
    assert arrivals["delay"][steps][arrivals["worker"][steps] == 0].min() >= 3  # a straggler
    np.testing.assert_allclose(arrivals["loss"][steps], -0.1 * computed_at, atol=1e-3)
    assert not _left_in_dev_shm(runtime)


class _Interrupted(Problem):
    """The quadratic, whose evaluation on the driver raises ``error`` at its ``at``-th call
    (a Ctrl-C or a bug in the middle of a run)."""

    def __init__(self, inner: Problem, error: type[BaseException], at: int) -> None:
        self.inner, self.num_workers, self.error, self.at = inner, inner.num_workers, error, at
        self.calls = 0

    def init_params(self, generator):
        return self.inner.init_params(generator)

    def loss_and_grad(self, params, worker, generator):
        return self.inner.loss_and_grad(params, worker, generator)

    def evaluate(self, params):
        self.calls += 1
        if self.calls == self.at:
            raise self.error("stopped here")
        return self.inner.evaluate(params)


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_a_run_that_ends_by_ctrl_c_or_an_error_leaves_nothing_in_dev_shm(error):
    problem = _Interrupted(make_problem(QUADRATIC, 2, 0), error, at=3)
    server = Server(problem.init_params(torch.Generator().manual_seed(0)),
                    make_rule({"name": "sgd", "lr": 0.1}, 2))
    coordinator = Coordinator(problem, make_protocol({"name": "asgd"}, server, 2), Recorder(),
                              Budget(steps=10**6), Evaluation(20))
    runtime = make_runtime("ray", problem, make_speed_model({}, 2, 0), 0, {"worker_cpus": 0.5})
    with pytest.raises(error, match="stopped here"):
        runtime.run(coordinator)
    assert runtime.shm.segment is not None and runtime.shm.shared == [True, True]
    assert not runtime.shm.segment.path.exists()


def test_the_next_driver_removes_segments_of_a_killed_one(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = shm.ROOT / f"{shm.PREFIX}{int(dead.stdout)}-test"
    stale.write_bytes(b"\0" * 64)
    segment = shm.Segment.create("node", {"x": ((10,), torch.float32)}, 1)
    try:
        assert not stale.exists() and segment.path.exists()
    finally:
        segment.close()
        stale.unlink(missing_ok=True)
    assert not segment.path.exists()


def test_transport_is_validated_with_field_value_and_choices():
    with pytest.raises(ConfigError) as refused:
        make_runtime("ray", make_problem(QUADRATIC, 2, 0), make_speed_model({}, 2, 0), 0,
                     {"transport": "tcp"})
    assert (refused.value.field, refused.value.value) == ("runtime_options.transport", "tcp")
    assert "one of auto, object_store" in str(refused.value)


def test_a_worker_maps_the_drivers_segment_by_name_and_slots_do_not_overlap():
    segment = shm.Segment.create("node", {"w": ((2, 3), torch.float32), "b": ((3,),
                                                                           torch.float32)}, 2)
    try:
        worker = shm.Segment.attach(segment.spec)  # as a worker actor maps it
        params = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([6.0, 7.0, 8.0])}
        segment.models.write(1, params)
        assert worker.models.buffers[1].tolist() == list(range(9))
        worker.grads.write(0, {"w": -params["w"], "b": -params["b"]})
        assert segment.grads.buffers[0].tolist() == [-v for v in range(9)]
        assert segment.models.buffers[0].tolist() == [0.0] * 9  # untouched by both writes
        assert segment.grads.buffers[1].tolist() == [0.0] * 9
    finally:
        segment.close()
    assert not segment.path.exists()


def test_address_follows_rays_rules(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster.target("") == cluster.Target("local")
    assert cluster.target("local").private
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # as `ray job submit` sets it
    with pytest.raises(ConfigError, match=r"RAY_ADDRESS = '127.0.0.1:1' .*cannot be reached"):
        cluster.target("")
    with pytest.raises(ConfigError, match=r"RAY_ADDRESS = '127.0.0.1:1'"):
        cluster.target("auto")
    assert cluster.target("local") == cluster.Target("local")  # "local" ignores RAY_ADDRESS
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setenv("RAY_TMPDIR", "/nonexistent")  # no `ray start` recorded
    with pytest.raises(ConfigError, match="a running Ray cluster: none was found"):
        cluster.target("auto")
    for bad in ("ray://nowhere", "grpc://127.0.0.1:1", "127.0.0.1:x", 7):
        with pytest.raises(ConfigError, match=r"runtime_options\.address = .*'local', 'auto'"):
            cluster.target(bad)
    with pytest.raises(ConfigError, match="cannot be reached"):
        cluster.target("ray://127.0.0.1:1")


def test_runtime_env_is_checked_by_ray(monkeypatch):
    assert cluster.check_runtime_env({}) == {}
    assert cluster.check_runtime_env({"env_vars": {"A": "1"}}) == {"env_vars": {"A": "1"}}
    with pytest.raises(ConfigError, match=r"runtime_env\.no_such_field = 1 .*py_modules"):
        cluster.check_runtime_env({"no_such_field": 1})
    with pytest.raises(ConfigError, match=r"runtime_env = .*must be of type str or List"):
        cluster.check_runtime_env({"pip": 5})
    with pytest.raises(ConfigError, match="a table of Ray runtime_env fields"):
        cluster.check_runtime_env(["pip"])
    with pytest.raises(ConfigError, match="already initialized"):  # this module's Ray
        _train(make_problem(QUADRATIC, 2, 0), options={"runtime_env": {"env_vars": {"A": "1"}}},
               steps=5)


def test_a_local_ray_beyond_the_processes_cpus_is_refused_before_it_starts(tmp_path,
                                                                          monkeypatch):
    from asyncopt.runtimes.ray import local

    cpus = len(os.sched_getaffinity(0))
    with pytest.raises(ConfigError, match=rf"at most {cpus} worker actors .*may use {cpus} "
                                          r".*oversubscribe = true"):
        local.check_fits(cpus + 1, 1.0, False)
    assert local.check_fits(cpus + 1, 1.0, True) == cpus + 1
    assert local.check_fits(2 * cpus, 0.5, False) == cpus
    # through the CLI, in a fresh process (this one has a Ray): refused in seconds, nothing
    # written, no Ray started
    started = time.monotonic()
    driver = subprocess.run(
        [sys.executable, "-m", "asyncopt.cli", "run", "configs/quickstart.toml", "--quiet",
         "--no-plot", "--set", 'runtime="ray"', "--set", f"workers={cpus + 1}",
         "--out", str(tmp_path)], capture_output=True, text=True, timeout=120,
        cwd=Path(__file__).parents[1])
    assert driver.returncode == 2, driver.stderr[-2000:]
    assert "runtime_options.oversubscribe = true" in driver.stderr
    assert "Token authentication" not in driver.stderr  # no Ray was started
    assert not list(tmp_path.iterdir())
    assert time.monotonic() - started < 60
