"""asyncopt's private local Ray: on the loopback interface only, sized to fit, gone with its
driver.

* **Loopback.** Every server of a Ray node listens on its node address. Ray 2.60 offers no
  public option that makes that address 127.0.0.1 on Linux: ``ray.init(_node_ip_address=
  "127.0.0.1")`` and ``ray start --node-ip-address=127.0.0.1`` both replace a loopback
  address by the machine's network address (``services.resolve_ip_for_localhost``), so
  the GCS, the raylet and the workers listen on every interface. The one switch Ray has is
  its laptop mode, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (node address = loopback), read
  once when Ray is imported, and as an environment variable it would reach every child
  process, where it breaks joining a multi-node cluster. So Ray's constant
  ``ray._private.ray_constants.ENABLE_RAY_CLUSTER`` is switched off for the ``ray.init``
  call only (tested with the Ray versions that ``pyproject.toml`` pins), and the node
  address is checked afterwards through the public ``ray.util.get_node_ip_address``: a Ray
  release that changes this fails the start instead of listening on the network.
* **No dashboard.** ``include_dashboard=False``: no web UI and no HTTP port. Every Ray head
  still runs its API server process (``dashboard.py --disable-frontend``, no listening
  port), and every node its ``DashboardAgent`` and ``RuntimeEnvAgent``; Ray has no option
  to leave those out.
* **Sized to fit.** The Ray gets ``ceil(workers × worker_cpus)`` CPUs, refused
  (:func:`check_fits`) when that exceeds the CPUs this process may use (its affinity and
  cgroup quota) unless ``runtime_options.oversubscribe = true``.
* **Nothing left behind**: :mod:`.reaper`.
"""

from __future__ import annotations

import atexit
import math
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from asyncopt.errors import ConfigError
from asyncopt.runtimes.common.resources import available_cpus
from asyncopt.runtimes.ray import reaper

_WATCHDOGS: list[subprocess.Popen] = []


def import_ray() -> Any:
    """``ray``, imported here only (it is the optional ``asyncopt[ray]`` extra)."""
    try:
        import ray
    except ImportError as error:
        raise ConfigError("runtime", "ray", "an installed Ray: pip install 'asyncopt[ray]'"
                          ) from error
    return ray


def check_fits(workers: int, worker_cpus: float, oversubscribe: bool) -> int:
    """The CPUs a private local Ray gets for ``workers`` actors of ``worker_cpus`` each, or a
    ConfigError when they exceed what this process may use (and ``oversubscribe`` is off)."""
    (have, source), need = available_cpus(), workers * worker_cpus
    if need > have and not oversubscribe:
        raise ConfigError(
            "workers", workers,
            f"at most {int(have // worker_cpus)} worker actors in a local Ray: each reserves "
            f"runtime_options.worker_cpus = {worker_cpus:g} CPUs and this process may use "
            f"{have:g} ({source}); lower worker_cpus, or set "
            f"runtime_options.oversubscribe = true to run them anyway")
    return max(1, math.ceil(need))


@contextmanager
def private_ray(num_cpus: int, runtime_env: Mapping[str, Any] | None = None) -> Iterator[Any]:
    """A new Ray for this process only (never one that ``ray start`` left running), shut
    down when the block ends, whatever ends it; answer ``ray``."""
    ray = import_ray()
    watchdog = start(num_cpus, runtime_env)
    try:
        yield ray
    finally:
        try:
            ray.shutdown()
        finally:
            _WATCHDOGS.remove(watchdog)
            watchdog.stdin.close()  # the watchdog sweeps what is left, then exits
            try:
                watchdog.wait(timeout=10)
            except subprocess.TimeoutExpired:
                watchdog.kill()
                watchdog.wait()


def start(num_cpus: int, runtime_env: Mapping[str, Any] | None = None) -> subprocess.Popen:
    """Start a private local Ray that the caller shuts down (``ray.shutdown()``; a test
    fixture); answer its watchdog (:mod:`.reaper`), which sweeps once its pipe closes, at
    the latest when this process exits."""
    ray = import_ray()
    ray_dir = os.path.dirname(ray.__file__)
    reaper.sweep(ray_dir)  # what the Rays of dead drivers left, if their watchdog died too
    watchdog = subprocess.Popen(
        [sys.executable, "-I", reaper.__file__, ray_dir], stdin=subprocess.PIPE, text=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        session = _start(ray, num_cpus, runtime_env)
        (Path(session) / reaper.MARK).write_text(str(reaper.owner_id(os.getpid())))
        watchdog.stdin.write(session + "\n")
        watchdog.stdin.flush()
    except BaseException:
        ray.shutdown()
        watchdog.stdin.close()
        watchdog.wait()
        raise
    if not _WATCHDOGS:
        atexit.register(_at_exit)
    _WATCHDOGS.append(watchdog)  # its pipe stays open as long as this process holds it
    return watchdog


def _at_exit() -> None:
    """Shut down a Ray that the caller left running, then let the watchdogs sweep."""
    if _WATCHDOGS:
        import_ray().shutdown()
    for watchdog in _WATCHDOGS:
        watchdog.stdin.close()
        watchdog.wait()


def _start(ray: Any, num_cpus: int, runtime_env: Mapping[str, Any] | None) -> str:
    """``ray.init`` in loopback mode; answer the session directory."""
    from ray._private import ray_constants

    if not hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):
        raise RuntimeError(f"Ray {ray.__version__} has no loopback switch; asyncopt starts "
                           f"a local Ray with the versions that asyncopt[ray] pins only")
    clustered, ray_constants.ENABLE_RAY_CLUSTER = ray_constants.ENABLE_RAY_CLUSTER, False
    try:
        context = ray.init(address="local", include_dashboard=False, num_cpus=num_cpus,
                           runtime_env=dict(runtime_env) if runtime_env else None,
                           configure_logging=False)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = clustered
    address = ray.util.get_node_ip_address()
    if address != "127.0.0.1":
        raise RuntimeError(f"the local Ray took the node address {address}, not 127.0.0.1, "
                           f"so it would listen on the network; Ray {ray.__version__} is not "
                           f"a version asyncopt[ray] pins")
    return str(context.address_info["session_dir"])
