"""Protocols by name, for configuration files and the command line.

Two methods of the papers need no protocol of their own:

* **delay-adaptive ASGD** (Mishchenko et al. 2022; Koloskova et al. 2022) is ``asgd`` with the
  rule option ``delay_adaptive = true`` (step scaled by n / max(n, δ));
* **m-synchronous minibatch SGD** is ``minibatch`` with ``wait_for = m`` (the n − m slowest
  computations of each step are cancelled).

APAM's artificial delay (Xu et al. §5.4) is ``asgd`` with ``artificial_delay = D``: each worker
computes at a model drawn uniformly from the last D versions
(:mod:`asyncopt.protocols.artificial_delay`; ``seed`` fixes the draws).

Any protocol composes with any rule: the server always steps through ``rule.update``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from asyncopt.errors import check_choice, check_int, check_keys
from asyncopt.protocols.artificial_delay import ArtificialDelayASGD
from asyncopt.protocols.asgd import ASGD
from asyncopt.protocols.base import Protocol, Server
from asyncopt.protocols.ia2sgd import IA2SGD
from asyncopt.protocols.malenia import Malenia
from asyncopt.protocols.minibatch import Minibatch
from asyncopt.protocols.rennala import Rennala
from asyncopt.protocols.ringleader import Ringleader
from asyncopt.protocols.ringmaster import Ringmaster


def asgd(server: Server, num_workers: int, artificial_delay: int = 1,
         seed: int | None = None) -> Protocol:
    """``ASGD``, or with ``artificial_delay = D > 1`` its artificial-delay variant."""
    artificial_delay = check_int("protocol.artificial_delay", artificial_delay, 1)
    if artificial_delay == 1 and seed is None:
        return ASGD(server, num_workers)
    return ArtificialDelayASGD(server, num_workers, artificial_delay, seed)


PROTOCOLS: dict[str, tuple[Callable[..., Protocol], dict[str, Any]]] = {
    "asgd": (asgd, {"artificial_delay": 1, "seed": None}),
    "minibatch": (Minibatch, {"wait_for": None}),
    "rennala": (Rennala, {"batch_size": None}),
    "malenia": (Malenia, {"batch_size": None}),
    "ia2sgd": (IA2SGD, {"step_on_fill": True}),
    "ringmaster": (Ringmaster, {"max_delay": None, "stops": True}),
    "ringleader": (Ringleader, {}),
}
"""name -> (class, its options with their defaults; ``None`` = the class's own default:
``wait_for`` = n, Rennala's ``batch_size`` = n, Malenia's = the every-worker rule, ``max_delay``
= n)."""


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
