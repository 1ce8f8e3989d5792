"""Resource limits: what cannot fit the machine is refused before anything starts or is written."""

from __future__ import annotations

import os
import pickle
import time

import pytest
import torch
from test_bad_input import QUADRATIC

from asyncopt.cli import main
from asyncopt.errors import ConfigError
from asyncopt.problems.registry import make_problem
from asyncopt.protocols.base import Server
from asyncopt.protocols.registry import make_protocol
from asyncopt.rules.registry import make_rule
from asyncopt.runtimes.common import resources
from asyncopt.runtimes.common.resources import Footprint, estimate
from asyncopt.runtimes.registry import make_runtime


def _run(tmp_path, *overrides: str) -> int:
    config = tmp_path / "q.toml"
    config.write_text(QUADRATIC)
    args = ["run", str(config), "--quiet", "--no-plot", "--out", str(tmp_path / "runs")]
    for item in overrides:
        args += ["--set", item]
    return main(args)


def test_worker_processes_beyond_four_per_cpu_are_refused_at_once(tmp_path, capsys):
    cpus, _ = resources.available_cpus()
    began = time.perf_counter()
    assert _run(tmp_path, "workers=100000", "runtime=processes") == 2
    assert time.perf_counter() - began < 30  # refused before any process or shared memory
    err = capsys.readouterr().err
    assert f"workers = 100000 is not allowed: at most {4 * cpus} worker processes" in err
    assert "runtime_options.oversubscribe = true" in err
    assert not (tmp_path / "runs").exists()


def test_oversubscribe_lifts_the_cpu_limit_and_is_checked():
    problem = make_problem({"name": "quadratic"}, 4 * resources.available_cpus()[0] + 1, 0)
    with pytest.raises(ConfigError, match="worker processes"):
        make_runtime("processes", problem, None, 0, {})
    engine = make_runtime("processes", problem, None, 0, {"oversubscribe": True})
    assert engine.footprint.processes == problem.num_workers  # built, nothing started
    with pytest.raises(ConfigError, match=r"runtime_options\.oversubscribe = 'yes'"):
        make_runtime("processes", problem, None, 0, {"oversubscribe": "yes"})


def test_a_cgroup_quota_caps_the_cpus(tmp_path):
    limit = tmp_path / "cpu.max"
    limit.write_text("150000 100000\n")
    assert resources.cgroup_quota(limit) == 2  # 1.5 CPUs rounds up
    limit.write_text("max 100000\n")
    assert resources.cgroup_quota(limit) is None
    assert resources.cgroup_quota(tmp_path / "absent") is None
    affinity = len(os.sched_getaffinity(0))
    quota = resources.cgroup_quota(resources.cpu_max_file())
    assert resources.available_cpus()[0] == min(affinity, quota or affinity)


def test_a_huge_minibatch_is_refused_with_the_estimate_and_the_limit(tmp_path, capsys):
    assert _run(tmp_path, 'problem={name="mlp", dataset="digits", batch_size=1000000000}') == 2
    err = capsys.readouterr().err
    assert "problem.batch_size = 1000000000 is not allowed: a run that fits in memory" in err
    assert "minibatches being computed" in err and "MemAvailable" in err
    assert not (tmp_path / "runs").exists()


def test_a_huge_generated_problem_is_refused_before_it_is_built(tmp_path, capsys):
    assert _run(tmp_path, "workers=100000000") == 2
    assert "workers = 100000000 is not allowed: a problem that fits in memory" in (
        capsys.readouterr().err)
    assert _run(tmp_path, 'problem={name="logistic", dataset="synthetic", '
                'num_samples=100000000000}') == 2
    assert "problem.num_samples = 100000000000" in capsys.readouterr().err


def test_the_estimate_prices_protocol_tables_snapshots_and_processes():
    workers, model = 6, 4 * 1000  # float32 bytes of the 1000-dimensional quadratic's x
    problem = make_problem({"name": "quadratic", "dim": 1000}, workers, 0)
    rule = make_rule({"name": "sgd", "lr": 0.1}, workers)
    footprint = Footprint(snapshots=workers, processes=2, shared_models=3)
    for name, held in (("asgd", 0), ("malenia", workers + 1), ("ringleader", 2 * (workers + 1)),
                       ("minibatch", workers)):
        server = Server(problem.init_params(torch.Generator().manual_seed(0)), rule)
        protocol = make_protocol({"name": name}, server, workers)
        parts = {need.what.split(" (")[0]: need.bytes
                 for need in estimate(problem, protocol, footprint)}
        assert parts.get("the protocol's tables and buffers", 0) == held * model
        assert parts["model snapshots of work in flight"] == workers * model
        assert parts["worker processes"] == 2 * (resources.PROCESS_BYTES + 3 * model)
        assert parts["shared memory"] == 3 * model


def test_a_gradient_table_beyond_memory_names_the_workers(tmp_path, capsys):
    # 74M parameters (296 MiB) and a table and a snapshot per worker: far beyond any machine
    code = _run(tmp_path, 'problem={name="mlp", dataset="digits", hidden=1000000}',
                "workers=1000", "protocol.name=malenia")
    assert code == 2
    err = capsys.readouterr().err
    assert "workers = 1000 is not allowed: a run that fits in memory" in err
    assert "the protocol's tables and buffers (malenia)" in err
    assert not (tmp_path / "runs").exists()


def test_a_private_ray_is_priced_and_refused_before_ray_starts(tmp_path, capsys, monkeypatch):
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()  # the check below is that the refusal started no Ray
    problem = make_problem({"name": "mlp", "dataset": "digits"}, 2, 0)
    engine = make_runtime("ray", problem, None, 0, {})
    assert (engine.footprint.processes, engine.footprint.problem_copies,
            engine.footprint.shared_models) == (2, 3, 4)  # 2 actors, 2 slots each in /dev/shm
    assert engine.ray is None and not ray.is_initialized()  # built, not connected
    rule = make_rule({"name": "sgd", "lr": 0.1}, 2)
    protocol = make_protocol({"name": "asgd"}, Server(
        problem.init_params(torch.Generator().manual_seed(0)), rule), 2)
    parts = {need.what.split(" (")[0]: need.bytes
             for need in estimate(problem, protocol, engine.footprint)}
    assert parts["copies of the problem and its data"] == 3 * len(pickle.dumps(problem))
    assert make_runtime("ray", problem, None, 0, {"transport": "object_store"}
                        ).footprint.shared_models == 0

    monkeypatch.setattr(resources, "available_memory", lambda: 50 * 2**20)
    assert _run(tmp_path, 'runtime="ray"', "workers=2") == 2
    err = capsys.readouterr().err
    assert "workers = 2 is not allowed: a run that fits in memory" in err
    assert "copies of the problem and its data (Ray's object store and actors)" in err
    assert "more than the 50.0 MiB available" in err
    assert not ray.is_initialized() and not (tmp_path / "runs").exists()
