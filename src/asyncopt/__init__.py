"""asyncopt: asynchronous parallel and distributed stochastic optimization with PyTorch.

One method (a rule, a protocol) written once runs in every runtime; see the README for the
concepts and ``asyncopt.run`` / ``asyncopt.train`` for the Python API.
"""

from asyncopt import problems, protocols, rules
from asyncopt.api import Result, run, train
from asyncopt.checkpoint import load_model, save_model
from asyncopt.errors import ConfigError
from asyncopt.problems.user import user_problem
from asyncopt.record import History, load
from asyncopt.runtimes.coordinator import Budget, Evaluation

__version__ = "0.1.0"
__all__ = ["Budget", "ConfigError", "Evaluation", "History", "Result", "load", "load_model",
           "problems", "protocols", "rules", "run", "save_model", "train", "user_problem"]
