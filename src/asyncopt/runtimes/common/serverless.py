"""Modes without a central server: lock-free workers, and K block servers.

There, each arrival must be a step of its own, which a worker or a block server can apply where
it is; a protocol that buffers, waits for several workers, cancels or hands out older models needs
the one server that sees every arrival, and so does a rule that steps a private copy of the whole
model (``rules.from_torch``). Protocols and rules declare it (``Protocol.needs_server``,
``Rule.needs_central_server``); the modes refuse by that capability, never by a name.
"""

from __future__ import annotations

from typing import Any

from asyncopt.errors import ConfigError
from asyncopt.protocols.base import Protocol


def require_serverless(protocol: Protocol, option: str, value: Any) -> None:
    """Refuse ``protocol`` or its rule in the mode that ``option = value`` selects if either
    needs a central server."""
    if protocol.server.rule.needs_central_server:
        raise ConfigError("rule", "from_torch", f"a rule that steps where the gradient is with "
                          f"{option} = {value!r}: this rule runs a torch.optim optimizer on a "
                          f"private copy of the whole model, which only one central server "
                          f"owns (mode = 'server', servers = 1)")
    if protocol.needs_server:
        raise ConfigError("protocol.name", protocol.name,
                          f"a protocol that steps on every arrival by itself (asgd) with "
                          f"{option} = {value!r}: there is no one server to buffer, wait for "
                          f"workers or cancel; use a central server (mode = 'server', "
                          f"servers = 1) for {protocol.name!r}")
