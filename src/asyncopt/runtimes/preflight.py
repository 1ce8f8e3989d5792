"""What a run is checked for after its parts are built and before anything starts or is written.

A runtime's ``build`` validates its own options; what depends on the protocol and the rule as
well is checked here, by :func:`preflight`, which ``train`` calls before it creates the run
directory, so that a refusal leaves no file behind. An event source declares, as attributes set
by its ``build`` (absent: nothing to check):

* ``serverless = (option, value)``: the mode that ``option = value`` selects has no central
  server (lock-free workers, block servers), so protocols and rules that need one are refused
  (:func:`~asyncopt.runtimes.common.serverless.require_serverless`);
* ``footprint``: what it will hold once started
  (:class:`~asyncopt.runtimes.common.resources.Footprint`), priced against the machine's memory
  (:func:`~asyncopt.runtimes.common.resources.check_memory`);
* ``connect()``: what it must reach before it runs (Ray: join a cluster or start a private
  one), called after the checks, so that a refused run starts nothing.
"""

from __future__ import annotations

from typing import Any

from asyncopt.problems.base import Problem
from asyncopt.protocols.base import Protocol
from asyncopt.runtimes.common.resources import check_memory
from asyncopt.runtimes.common.serverless import require_serverless


def preflight(engine: Any, protocol: Protocol, problem: Problem) -> None:
    """Raise :class:`~asyncopt.errors.ConfigError` for what ``engine`` cannot run."""
    serverless = getattr(engine, "serverless", None)
    if serverless is not None:
        require_serverless(protocol, *serverless)
    check_memory(problem, protocol, getattr(engine, "footprint", None))
    connect = getattr(engine, "connect", None)
    if connect is not None:
        connect()
