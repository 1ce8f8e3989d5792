"""asyncopt: asynchronous parallel and distributed stochastic optimization with PyTorch.

One method (a rule, a protocol) written once runs in every runtime; see the README for the
concepts and ``asyncopt.run`` / ``asyncopt.train`` for the Python API.

The names below are imported on first use (PEP 562), so that ``import asyncopt`` and
``asyncopt --help`` do not import torch.
"""

from __future__ import annotations

from importlib import import_module, metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asyncopt import problems, protocols, rules
    from asyncopt.api import Result, resume_run, run, train
    from asyncopt.callbacks import Callback
    from asyncopt.checkpoint import load_model, save_model
    from asyncopt.config import Budget, Evaluation
    from asyncopt.errors import ConfigError
    from asyncopt.problems.user import user_problem
    from asyncopt.record import History, load
    from asyncopt.tensorboard import TensorBoard

try:
    __version__ = metadata.version("asyncopt")
except metadata.PackageNotFoundError:  # a source tree on sys.path, never installed
    __version__ = "0+unknown"

_WHERE = {
    "Budget": "asyncopt.config", "Callback": "asyncopt.callbacks",
    "ConfigError": "asyncopt.errors",
    "Evaluation": "asyncopt.config", "History": "asyncopt.record",
    "Result": "asyncopt.api", "load": "asyncopt.record", "load_model": "asyncopt.checkpoint",
    "problems": None, "protocols": None, "resume_run": "asyncopt.api", "rules": None,
    "run": "asyncopt.api",
    "save_model": "asyncopt.checkpoint", "TensorBoard": "asyncopt.tensorboard",
    "train": "asyncopt.api",
    "user_problem": "asyncopt.problems.user",
}
"""name -> the module that defines it (None: the name is a subpackage)."""

__all__ = ["Budget", "Callback", "ConfigError", "Evaluation", "History", "Result",
           "TensorBoard", "load", "load_model", "problems", "protocols", "resume_run", "rules",
           "run", "save_model", "train", "user_problem"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'asyncopt' has no attribute {name!r}")
    module = _WHERE[name]
    value = import_module(f"asyncopt.{name}") if module is None else \
        getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
