"""Protocols: when the server steps and what each worker does next."""

from asyncopt.protocols.asgd import ASGD
from asyncopt.protocols.base import Action, Arrival, Protocol, Reply, Server
from asyncopt.protocols.ia2sgd import IA2SGD
from asyncopt.protocols.malenia import Malenia
from asyncopt.protocols.minibatch import Minibatch
from asyncopt.protocols.registry import make_protocol, protocol_names, resolve_protocol_spec
from asyncopt.protocols.rennala import Rennala
from asyncopt.protocols.ringleader import Ringleader
from asyncopt.protocols.ringmaster import Ringmaster
from asyncopt.protocols.table import GradientTable

__all__ = ["ASGD", "IA2SGD", "Action", "Arrival", "GradientTable", "Malenia", "Minibatch",
           "Protocol", "Rennala", "Reply", "Ringleader", "Ringmaster", "Server", "make_protocol",
           "protocol_names", "resolve_protocol_spec"]
