"""Where the Ray runtime runs: an embedded local Ray, or an existing cluster at an address.

* no address: ``ray.init`` starts a local Ray for this run only (no dashboard, no usage
  reporting) and every server it opens listens on the loopback interface only. Ray resolves
  ``127.0.0.1`` to the machine's network address unless its cluster mode is off, so the
  embedded Ray is started with that mode off (the switch Ray itself uses on laptops,
  ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: node address = loopback), for the ``ray.init``
  call only; ``tests/test_ray.py`` checks with ``ss -ltn``.
* ``address = "HOST:PORT"``: join a cluster started with ``ray start --head``. Ray 2.60 turns
  token authentication on for ``ray start --head``, but a driver that joins an explicit
  address never sends a token unless told to (Ray's choice: a token is not offered to any
  address): start Python with ``RAY_AUTH_MODE=token`` and the cluster's token
  (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``). Ray reads the mode
  when it is imported, so set it in the environment, not from Python.

A Ray that was already initialized in this process (a notebook, a test fixture) is used as it
is and left running; one started here is shut down when the run ends, whatever ends it.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from asyncopt.errors import ConfigError


def import_ray() -> Any:
    """``ray``, imported here only (it is the optional ``asyncopt[ray]`` extra)."""
    try:
        import ray
    except ImportError as error:
        raise ConfigError("runtime", "ray", "an installed Ray: pip install 'asyncopt[ray]'"
                          ) from error
    return ray


def check_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` reachable over TCP, or a ConfigError naming it (fails in seconds, not after
    Ray's minute of retries)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError("runtime_options.address", address,
                          "'' (start a local Ray) or 'HOST:PORT' of a running Ray head")
    try:
        socket.create_connection((host, int(port)), timeout=5.0).close()
    except OSError as error:
        raise ConfigError("runtime_options.address", address,
                          f"the address of a running Ray head (ray start --head); it cannot be "
                          f"reached: {error}") from error
    return host, int(port)


@contextmanager
def connected(address: str, num_cpus: int | None = None) -> Iterator[Any]:
    """Ray, connected for the duration of the block: embedded (``address == ""``), joined, or
    the one already running in this process."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    if address:
        check_address(address)
        try:
            ray.init(address=address, configure_logging=False)
        except ConnectionError as error:
            raise ConfigError(
                "runtime_options.address", address,
                f"a Ray cluster this driver may join. A cluster started with `ray start` checks "
                f"a token: start Python with RAY_AUTH_MODE=token and the cluster's token "
                f"(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token). Ray said: "
                f"{str(error)[:300]}") from error
    else:
        start_local(num_cpus)
    try:
        yield ray
    finally:
        ray.shutdown()


def start_local(num_cpus: int | None = None) -> Any:
    """Start an embedded Ray on the loopback interface (no dashboard); answer ``ray``."""
    ray = import_ray()
    from ray._private import ray_constants

    # Ray's loopback mode, for this process only: the node address it resolves (and passes
    # to every process it starts) is 127.0.0.1. The environment variable would leak into
    # child processes, where it breaks a later `ray start --address` (a multi-node start).
    clustered, ray_constants.ENABLE_RAY_CLUSTER = ray_constants.ENABLE_RAY_CLUSTER, False
    try:
        # "local": always a new Ray, never one that `ray start` left running on this machine
        ray.init(address="local", include_dashboard=False, num_cpus=num_cpus,
                 configure_logging=False)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = clustered
    return ray


def free_cpus(ray: Any) -> float:
    """CPUs the cluster has in all (actors of finished runs give theirs back)."""
    return float(ray.cluster_resources().get("CPU", 0.0))
