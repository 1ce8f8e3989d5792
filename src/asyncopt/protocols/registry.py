"""Protocols by name, for configuration files and the command line."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from asyncopt.errors import check_choice, check_keys
from asyncopt.protocols.asgd import ASGD
from asyncopt.protocols.base import Protocol, Server
from asyncopt.protocols.minibatch import Minibatch

PROTOCOLS: dict[str, tuple[Callable[..., Protocol], dict[str, Any]]] = {
    "asgd": (ASGD, {}),
    "minibatch": (Minibatch, {"wait_for": None}),
}
"""name -> (class, its options with their defaults)."""


def protocol_names() -> list[str]:
    return sorted(PROTOCOLS)


def resolve_protocol_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec with the name checked, unknown keys refused and every default filled in."""
    name = check_choice("protocol.name", spec.get("name", "asgd"), PROTOCOLS)
    defaults = PROTOCOLS[name][1]
    options = {k: v for k, v in spec.items() if k != "name"}
    check_keys("protocol", options, defaults)
    return {"name": name, **defaults, **options}


def make_protocol(spec: Mapping[str, Any], server: Server, num_workers: int) -> Protocol:
    resolved = resolve_protocol_spec(spec)
    cls = PROTOCOLS[resolved.pop("name")][0]
    options = {k: v for k, v in resolved.items() if v is not None}
    return cls(server, num_workers, **options)
