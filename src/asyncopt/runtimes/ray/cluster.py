"""Which Ray a run uses, by Ray's own rules for ``address``; connected before anything is
written.

``runtime_options.address`` means what ``ray.init(address=...)`` means, except that the
default never joins a cluster by accident:

* ``""`` (default): ``RAY_ADDRESS`` when it is set (so ``ray job submit -- asyncopt run ...``
  uses the job's cluster), otherwise a private local Ray (:mod:`.local`);
* ``"local"``: a private local Ray, whatever ``RAY_ADDRESS`` says;
* ``"auto"``: the running cluster: ``RAY_ADDRESS``, else the last ``ray start`` on this
  machine; an error when there is none;
* ``"HOST:PORT"`` (a head's GCS, as ``ray start --head`` prints it) or ``"ray://HOST:PORT"``
  (Ray Client).

The address is checked before a run directory gets anything: its form, then a TCP
connection (seconds, not Ray's minutes of retries), then ``ray.init`` itself, all in the
runtime's ``build``; a failure is a ConfigError naming the field (or ``RAY_ADDRESS``).
Ray turns a loopback host into the machine's network address unless its loopback mode is on
(:mod:`.local`), so that is the address checked. ``runtime_options.runtime_env`` goes to
``ray.init`` (the job's runtime environment: ``working_dir``, ``py_modules``, ``pip``,
``env_vars``, ...); ``ray job submit --runtime-env-json`` merges with it as Ray merges them.

Token authentication: Ray 2.60's ``ray start --head`` turns it on, and a driver that joins an
explicit address sends a token only when told to: start Python with ``RAY_AUTH_MODE=token``
and the cluster's token (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or
``~/.ray/auth_token``); Ray reads the mode when it is imported. Jobs that ``ray job submit``
starts inherit the cluster's setting.

A Ray already initialized in this process (a notebook, a test fixture) is used as it is and
left running; one connected or started here is shut down when the run ends. Which of these a
run uses is logged (INFO, the ``asyncopt`` logger: the CLI prints it).
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncopt.errors import ConfigError
from asyncopt.runtimes.ray import local

log = logging.getLogger(__name__)

FORMS = ("'' (RAY_ADDRESS if set, else a private local Ray), 'local', 'auto' (the running "
         "cluster), 'HOST:PORT' of a Ray head or 'ray://HOST:PORT'")
_TOKEN = ("A cluster started with `ray start` checks a token: start Python with "
          "RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH "
          "or ~/.ray/auth_token).")


@dataclass(frozen=True)
class Target:
    """What ``ray.init`` gets (``"local"``: a private local Ray) and the setting it came
    from (``runtime_options.address`` or ``RAY_ADDRESS``), for errors."""

    address: str
    field: str = "runtime_options.address"

    @property
    def private(self) -> bool:
        return self.address == "local"


def target(address: Any) -> Target:
    """The Ray that ``address`` names, checked as far as it can be without Ray."""
    field = "runtime_options.address"
    if not isinstance(address, str):
        raise ConfigError(field, address, FORMS)
    if address == "" and os.environ.get("RAY_ADDRESS"):
        address, field = os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    if address in ("", "local"):
        return Target("local", field)
    if address == "auto":
        found = os.environ.get("RAY_ADDRESS") or _last_started()
        if os.environ.get("RAY_ADDRESS"):
            field = "RAY_ADDRESS"
        if not found:
            raise ConfigError(field, address, "a running Ray cluster: none was found (RAY_ADDRESS "
                              "is unset and no `ray start --head` on this machine is recorded)")
        reachable(found, field)
        return Target("auto", field)
    reachable(address, field)
    return Target(address, field)


def reachable(address: str, field: str) -> None:
    """``[ray://]HOST:PORT`` that accepts a TCP connection, or a ConfigError naming it."""
    scheme, sep, rest = address.rpartition("://")
    host, colon, port = rest.rpartition(":")
    if (sep and scheme != "ray") or not colon or not host or not port.isdigit():
        hint = " (http:// is the dashboard's address, for `ray job submit`)" \
            if scheme in ("http", "https") else ""
        raise ConfigError(field, address, FORMS + hint)
    host = host.strip("[]")
    if not sep and host in ("127.0.0.1", "localhost", "::1"):
        host = _loopback_as_ray_sees_it(host)
    try:
        socket.create_connection((host, int(port)), timeout=5.0).close()
    except OSError as error:
        raise ConfigError(field, address, f"the address of a running Ray head (ray start "
                          f"--head); it cannot be reached at {host}:{port}: {error}") from error


def _loopback_as_ray_sees_it(host: str) -> str:
    """Ray joins ``127.0.0.1:PORT`` at the machine's network address (unless its loopback
    mode is on): the host it will actually connect to."""
    return local.import_ray().util.get_node_ip_address()


def _last_started() -> str | None:
    """The address the last ``ray start --head`` on this machine recorded for ``"auto"``."""
    root = os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()
    try:
        return (Path(root) / "ray" / "ray_current_cluster").read_text().strip() or None
    except OSError:
        return None


@contextmanager
def connected(where: Target, num_cpus: int,
              runtime_env: Mapping[str, Any] | None = None) -> Iterator[Any]:
    """Ray for the duration of the block: started (private), joined, or the one already
    running in this process; answer ``ray``."""
    ray = local.import_ray()
    if ray.is_initialized():
        if runtime_env:
            raise ConfigError("runtime_options.runtime_env", dict(runtime_env),
                              "{} when Ray is already initialized in this process: pass the "
                              "runtime_env to your own ray.init")
        log.info("Ray: the one already initialized in this process")
        yield ray
        return
    if where.private:
        with local.private_ray(num_cpus, runtime_env) as ray:
            log.info("Ray: a private local Ray on 127.0.0.1 with %d CPUs", num_cpus)
            yield ray
        return
    try:
        ray.init(address=where.address, runtime_env=dict(runtime_env) if runtime_env else None,
                 configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        ray.shutdown()
        raise ConfigError(where.field, where.address, f"a Ray cluster this driver may join. "
                          f"{_TOKEN} Ray said: {error}") from error
    log.info("Ray: joined the cluster at %s (%s = %r)", ray.get_runtime_context().gcs_address,
             where.field, where.address)
    try:
        yield ray
    finally:
        ray.shutdown()


def start_local(num_cpus: int) -> None:
    """Start a private local Ray that the caller shuts down with ``ray.shutdown()`` (for
    fixtures that share one Ray among many runs; :func:`.local.start`)."""
    local.start(num_cpus)


def check_runtime_env(runtime_env: Any) -> dict[str, Any]:
    """``runtime_options.runtime_env`` as Ray accepts it (a table of Ray's runtime_env
    fields), or a ConfigError with Ray's reason."""
    field = "runtime_options.runtime_env"
    if not isinstance(runtime_env, Mapping):
        raise ConfigError(field, runtime_env, "a table of Ray runtime_env fields (working_dir, "
                          "py_modules, pip, env_vars, ...)")
    if not runtime_env:
        return {}
    from ray.runtime_env import RuntimeEnv

    known = sorted(f for f in RuntimeEnv.known_fields if not f.startswith("_"))
    unknown = sorted(set(runtime_env) - set(known))
    if unknown:  # Ray would take them for plugins and ignore them
        raise ConfigError(f"{field}.{unknown[0]}", runtime_env[unknown[0]],
                          f"a field of Ray's runtime_env: {', '.join(known)}")
    try:
        RuntimeEnv(**runtime_env)
    except (TypeError, ValueError) as error:
        raise ConfigError(field, dict(runtime_env), f"a Ray runtime_env: {error}") from error
    return dict(runtime_env)
