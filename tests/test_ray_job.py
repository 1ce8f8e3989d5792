"""Ray the way Ray users run it: ``ray job submit`` on a ``ray start`` cluster, and a
``runtime_env`` that ships the user's model code to a two-node cluster.

Both clusters listen on loopback only: they run with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
in their own environment (Ray's loopback mode, see ``asyncopt/runtimes/ray/local.py``), every
port is a free one (other Rays may run on this machine), and ``RAY_TMPDIR`` and ``TMPDIR`` are
a directory of the test's own (the cluster's processes are killed, so what they would have
removed at exit, such as multiprocessing's ``pymp-*`` directories, goes with it). Each cluster
runs in its own session and is stopped by its process group (SIGTERM, then SIGKILL), with
whatever of its descendants left that group (Ray runs a job's entrypoint in a session of its
own), whatever happens, within a bounded time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
RAY_CLI = str(Path(sys.executable).with_name("ray"))
LOOPBACK = ("127.0.0.1", "[::ffff:127.0.0.1]", "[::1]")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _environment(ray_tmp: Path) -> dict[str, str]:
    """This machine's environment for a loopback-only Ray of the test's own: no RAY_ADDRESS
    of anyone else's, asyncopt from this checkout."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0",
               RAY_TMPDIR=str(ray_tmp), TMPDIR=str(ray_tmp), PYTHONPATH=str(ROOT / "src"))
    return env


def _descendants(root: int) -> set[tuple[int, str]]:
    """(pid, start time) of ``root`` and every process below it, also in other sessions."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append((int(entry), fields[19]))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            found.add(child)
            todo.append(child[0])
    return found


def _stop(process: subprocess.Popen, seen: set[tuple[int, str]]) -> None:
    """Stop ``process``'s group, then every process in ``seen`` that is still the same one."""
    seen = seen | _descendants(process.pid)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    for pid, started in seen:
        try:
            alive = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        except OSError:
            continue
        if alive == started:  # not a new process that reuses the number
            os.kill(pid, signal.SIGKILL)


def _watch(process: subprocess.Popen, root: int, seen: set[tuple[int, str]],
           timeout: float) -> None:
    """Wait for ``process``, noting every process below ``root`` meanwhile in ``seen`` (Ray's
    workers leave their parent's process group: the test stops them one by one if they
    outlive it)."""
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        seen |= _descendants(root)
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(process.args, timeout)
        time.sleep(1.0)


def _listening(pids: set[int]) -> list[str]:
    """The local addresses on which the processes ``pids`` accept TCP connections."""
    table = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=30).stdout
    return [line.split()[3] for line in table.splitlines()
            if {int(p) for p in re.findall(r"pid=(\d+)", line)} & pids]


def _wait_for(host: str, port: int, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1.0).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:g} s:\n"
                                   + log.read_text()[-2000:]) from None
            time.sleep(0.5)


@pytest.fixture
def ray_tmp():
    """A short RAY_TMPDIR (Ray's socket paths must stay under 108 characters)."""
    path = Path(tempfile.mkdtemp(prefix="aoray-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_ray_job_submit_runs_asyncopt_on_the_cluster(ray_tmp):
    if shutil.which(RAY_CLI) is None or shutil.which("ss") is None:
        pytest.skip("needs the ray command (asyncopt[cluster]) and ss")
    pytest.importorskip("aiohttp", reason="ray job submit needs Ray's dashboard: ray[default]")
    env = {**_environment(ray_tmp), "RAY_AUTH_MODE": "token"}
    gcs, dashboard = _free_port(), _free_port()
    ports = {"port": gcs, "dashboard-port": dashboard}
    for name in ("ray-client-server", "dashboard-agent-listen", "dashboard-agent-grpc",
                 "metrics-export", "runtime-env-agent", "node-manager", "object-manager"):
        ports[f"{name}-port"] = _free_port()
    log = ray_tmp / "head.log"
    with open(log, "w") as out:
        head = subprocess.Popen(
            [RAY_CLI, "start", "--head", "--block", "--node-ip-address=127.0.0.1",
             "--include-dashboard=true", "--dashboard-host=127.0.0.1", "--num-cpus=2",
             "--disable-usage-stats", *(f"--{k}={v}" for k, v in ports.items())],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    seen: set[tuple[int, str]] = set()
    try:
        _wait_for("127.0.0.1", dashboard, 90, log)
        # the job: a config in its working_dir, asyncopt shipped as a py_module
        job_dir = ray_tmp / "job"
        job_dir.mkdir()
        (job_dir / "job.toml").write_text((ROOT / "configs" / "quickstart.toml").read_text()
                                          .replace('runtime = "sim"', 'runtime = "ray"'))
        with open(ray_tmp / "submit.log", "w") as out:
            submit = subprocess.Popen(
                [RAY_CLI, "job", "submit", "--address", f"http://127.0.0.1:{dashboard}",
                 "--working-dir", str(job_dir), "--runtime-env-json",
                 json.dumps({"py_modules": [str(ROOT / "src" / "asyncopt")]}),
                 "--", sys.executable, "-m", "asyncopt", "run", "job.toml", "--no-plot",
                 "--set", "workers=2", "--set", "budget.steps=30", "--set",
                 'eval.unit="steps"', "--set", "eval.every=10", "--out", "runs"],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _watch(submit, head.pid, seen, timeout=300)
        finally:
            _stop(submit, set())
        output = (ray_tmp / "submit.log").read_text()
        assert submit.returncode == 0, output[-4000:]
        # the job's driver joined the cluster through the RAY_ADDRESS that Ray gave it (not a
        # private Ray of its own) and completed its 30 steps on it
        assert re.search(rf"asyncopt: INFO: Ray: joined the cluster at 127\.0\.0\.1:{gcs} "
                         rf"\(RAY_ADDRESS = '127\.0\.0\.1:{gcs}'\)", output), output[-4000:]
        assert "status:   completed (step budget reached (30 steps))" in output
        # restartable worker actors get their problem after they start, so Ray's false
        # "constructor arguments in the object store and max_restarts > 0" ERROR is gone
        assert "max_restarts > 0" not in output
        # the head, its dashboard and the workers the job used listen on loopback only
        addresses = _listening({pid for pid, _ in _descendants(head.pid)} | {head.pid})
        assert any(a.endswith(f":{dashboard}") for a in addresses)
        assert addresses and all(a.rsplit(":", 1)[0] in LOOPBACK for a in addresses), addresses
    finally:
        _stop(head, seen)


USER_MODEL = '''"""A user's model: importable only where a runtime_env puts it."""
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def forward(self, x):
        return self.layer(x)
'''

TWO_NODES = """
import json, sys
sys.path.insert(0, sys.argv[1])  # the driver alone can import the user's module
import torch
from ray.cluster_utils import Cluster
import asyncopt
import usermodel_rt

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
cluster.add_node(num_cpus=1)
x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
data = (x, x @ torch.tensor([[1.0], [2.0], [-1.0], [0.5]]))
try:
    for runtime_env in ({}, {"py_modules": [sys.argv[2]]}):
        try:
            result = asyncopt.train(
                usermodel_rt.Net, {"name": "sgd", "lr": 0.05}, "asgd", data=data, workers=2,
                loss=torch.nn.functional.mse_loss, batch_size=8, budget={"steps": 40},
                runtime="ray", runtime_options={"address": cluster.address, "placement":
                "spread", "runtime_env": runtime_env, "startup_timeout": 60})
            outcome = {"status": result.summary["status"],
                       "workers": sorted(set(result.history.arrivals["worker"].tolist()))}
        except Exception as error:
            outcome = {"error": f"{type(error).__name__}: {error}"}
        print("RESULT " + json.dumps(outcome), flush=True)
finally:
    cluster.shutdown()
"""


def test_a_runtime_env_ships_the_users_model_to_every_node(ray_tmp):
    package = ray_tmp / "user" / "usermodel_rt"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(USER_MODEL)
    workdir = ray_tmp / "cwd"  # Ray adds the driver's directory to the workers' path
    workdir.mkdir()
    with open(ray_tmp / "driver.out", "w") as out, open(ray_tmp / "driver.log", "w") as err:
        driver = subprocess.Popen(
            [sys.executable, "-c", TWO_NODES, str(package.parent), str(package)],
            env=_environment(ray_tmp), cwd=workdir, stdout=out, stderr=err,
            start_new_session=True)
    seen: set[tuple[int, str]] = set()
    try:
        _watch(driver, driver.pid, seen, timeout=300)
    finally:
        _stop(driver, seen)
    stdout = (ray_tmp / "driver.out").read_text()
    results = [json.loads(line.split(" ", 1)[1]) for line in stdout.splitlines()
               if line.startswith("RESULT ")]
    assert len(results) == 2, (ray_tmp / "driver.log").read_text()[-4000:]
    without, with_env = results
    # without the runtime_env no worker can import the module, on either node
    assert "No module named 'usermodel_rt'" in without.get("error", ""), without
    assert "importable on every node" in without["error"]
    # with it, one worker on each node (one CPU each, spread) trains the user's model
    assert with_env == {"status": "completed", "workers": [0, 1]}
