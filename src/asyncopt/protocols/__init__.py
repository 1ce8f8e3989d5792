"""Protocols: when the server steps and what each worker does next."""

from asyncopt.protocols.asgd import ASGD
from asyncopt.protocols.base import Action, Arrival, Protocol, Reply, Server
from asyncopt.protocols.minibatch import Minibatch
from asyncopt.protocols.registry import make_protocol, protocol_names, resolve_protocol_spec

__all__ = ["ASGD", "Action", "Arrival", "Minibatch", "Protocol", "Reply", "Server",
           "make_protocol", "protocol_names", "resolve_protocol_spec"]
