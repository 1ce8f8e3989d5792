"""The Ray runtime on a two-node cluster started with ``ray start``: a head (127.0.0.2) and a
second node (127.0.0.3) on this machine, one CPU each, so the two worker actors must land on
different nodes. Both nodes run in their own process group and are stopped (SIGTERM, then
SIGKILL) by their process group, whatever happens: nothing else on the machine is touched.

Ray 2.60 binds its cluster servers to every interface when the node address is not 127.0.0.1
(and refuses ``ray start --address`` on a node in loopback mode), so for this test's ~20 s the
two nodes listen beyond loopback; token authentication (on for ``ray start``) refuses anyone
without this machine's token.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow
RAY_CLI = str(Path(sys.executable).with_name("ray"))
HEAD, NODE = "127.0.0.2", "127.0.0.3"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HEAD, 0))
        return probe.getsockname()[1]


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    with open(log, "w") as out:
        return subprocess.Popen([RAY_CLI, "start", "--block", "--num-cpus=1",
                                 "--disable-usage-stats", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _stop(nodes: list[subprocess.Popen]) -> None:
    for node in nodes:
        if node.poll() is None:
            os.killpg(node.pid, signal.SIGTERM)
    deadline = time.monotonic() + 5.0  # `ray start --block` stops its processes slowly
    for node in nodes:
        try:
            node.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait(timeout=10)


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    if shutil.which(RAY_CLI) is None:
        pytest.skip("the ray command is not installed")
    if ray.is_initialized():
        ray.shutdown()
    logs = tmp_path_factory.mktemp("ray-cluster")
    port = _free_port()
    nodes = [_start(["--head", f"--node-ip-address={HEAD}", f"--port={port}",
                     "--include-dashboard=false"], logs / "head.log")]
    try:
        _wait(lambda: _reachable(HEAD, port), 60, logs / "head.log")
        nodes.append(_start([f"--address={HEAD}:{port}", f"--node-ip-address={NODE}"],
                            logs / "node.log"))
        yield f"{HEAD}:{port}", logs
    finally:
        if ray.is_initialized():
            ray.shutdown()
        _stop(nodes)
        # `ray start` leaves its address for a later `ray.init()`; a killed head cannot clear it
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if current.is_file() and current.read_text().strip() == f"{HEAD}:{port}":
            current.unlink()


DRIVER = """
import sys, torch
from asyncopt.problems.registry import make_problem
from asyncopt.protocols.base import Server
from asyncopt.protocols.registry import make_protocol
from asyncopt.record import Recorder
from asyncopt.rules.registry import make_rule
from asyncopt.config import Budget, Evaluation
from asyncopt.runtimes.coordinator import Coordinator
from asyncopt.runtimes.registry import make_runtime
from asyncopt.runtimes.sim.speed import make_speed_model

problem = make_problem({"name": "quadratic", "dim": 10, "noise": 0.1}, 2, 0)
runtime = make_runtime("ray", problem, make_speed_model({}, 2, 0), 0,
                       {"address": sys.argv[1], "placement": "spread"})
server = Server(problem.init_params(torch.Generator().manual_seed(0)),
                make_rule({"name": "sgd", "lr": 0.1}, 2))
recorder = Recorder()
coordinator = Coordinator(problem, make_protocol({"name": "asgd"}, server, 2), recorder,
                          Budget(steps=100), Evaluation(50))
runtime.run(coordinator)
summary = coordinator.finish()
history = recorder.history()
print("RESULT", summary["version"], len(set(runtime.nodes)),
      sorted(set(history.arrivals["worker"].tolist())),
      history.final("loss") < history.evaluations["loss"][0], sorted(runtime.shm.shared),
      runtime.shm.segment is not None and runtime.shm.segment.path.exists())
"""


def test_workers_land_on_both_nodes_and_train(two_nodes):
    address, logs = two_nodes
    _wait(lambda: _nodes_alive(address) == 2, 60, logs / "node.log")
    # a fresh driver: Ray reads RAY_AUTH_MODE when it is imported (this process has Ray loaded)
    driver = subprocess.run([sys.executable, "-c", DRIVER, address], capture_output=True,
                            text=True, timeout=180, env={**os.environ, "RAY_AUTH_MODE": "token"})
    result = [line for line in driver.stdout.splitlines() if line.startswith("RESULT")]
    assert result, driver.stderr[-3000:]
    # 100 steps, one worker actor on each node, both delivered gradients, the loss went down;
    # transports are chosen by node id: the worker on the driver's node used shared memory, the
    # other the object store, and the segment is gone
    assert result[0].split(maxsplit=1)[1] == "100 2 [0, 1] True [False, True] False"


def test_joining_without_the_token_is_a_clear_error(two_nodes):
    address, _ = two_nodes
    driver = subprocess.run(
        [sys.executable, "-m", "asyncopt.cli", "run", "configs/quickstart.toml", "--quiet",
         "--set", 'runtime="ray"', "--set", f'runtime_options.address="{address}"',
         "--set", "budget.steps=5", "--set", "workers=2", "--out", str(two_nodes[1] / "runs")],
        capture_output=True, text=True, timeout=180,
        env={**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_NUM_REDIS_GET_RETRIES": "3"},
        cwd=Path(__file__).parents[1])  # 3 tries of the refused connection, not Ray's 20
    assert driver.returncode == 2, driver.stderr[-3000:]
    assert "RAY_AUTH_MODE=token" in driver.stderr


def _nodes_alive(address: str) -> int:
    probe = subprocess.run([RAY_CLI, "status", f"--address={address}"], capture_output=True,
                           text=True, env={**os.environ, "RAY_AUTH_MODE": "token"}, timeout=30)
    return probe.stdout.count("node_")


def _reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1.0).close()
    except OSError:
        return False
    return True


def _wait(condition, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the Ray test cluster did not come up in {timeout:g} s:\n"
                               + log.read_text()[-2000:])
        time.sleep(0.5)
