"""Checkpoints of a trained model in PyTorch's standard form: a ``state_dict`` saved by
``torch.save``, which ``torch.load(path, weights_only=True)`` reads back without running any
pickled code, into the user's own module class:

    asyncopt.save_model(result, "net.pt")                   # or a module, or a state_dict
    net = asyncopt.load_model("net.pt", Net())              # Net() gets the trained weights

``train`` writes ``model.pt`` into the run directory (when there is one) for every problem with
a module. The state_dict holds the parameters and every buffer, the BatchNorm running
statistics among them (recomputed at the final parameters, see
:mod:`asyncopt.problems.running_stats`).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from asyncopt.errors import ConfigError


def save_model(model: nn.Module | Mapping[str, Tensor] | Any, path: str | Path) -> Path:
    """Write the ``state_dict`` of ``model`` (a module, a state_dict, or anything with a
    ``.model`` module such as a :class:`~asyncopt.api.Result`) to ``path``, atomically."""
    module = getattr(model, "model", model)
    if isinstance(module, nn.Module):
        state = module.state_dict()
    elif isinstance(module, Mapping) and all(isinstance(v, Tensor) for v in module.values()):
        state = dict(module)
    else:
        raise ConfigError("model", type(model).__name__, "an nn.Module, a state_dict, or a "
                          "Result with a model (a run of a problem that has a module)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save({k: v.detach().cpu() for k, v in state.items()}, partial)
    os.replace(partial, path)
    return path


def load_model(path: str | Path, into: nn.Module | None = None,
               ) -> nn.Module | dict[str, Tensor]:
    """The state_dict saved at ``path`` (``weights_only=True``), loaded into ``into`` when it is
    given (its keys and shapes must match: ``load_state_dict`` is strict)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch raises many kinds for a damaged or unsafe file
        raise ConfigError("path", str(path), f"a readable model file; loading it failed: "
                          f"{load_failure(error)}") from error
    if into is None:
        return state
    into.load_state_dict(state)
    return into


def load_failure(error: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` failed, in full where it matters: for a file
    that holds objects other than tensors and plain data, the globals it names (which the
    user needs to recognize the file), without torch's advice to load it unsafely; otherwise
    the error itself, its whitespace folded."""
    text = str(error)
    globals_named = [line.strip() for line in text.splitlines() if "GLOBAL" in line]
    if isinstance(error, pickle.UnpicklingError) and globals_named:
        return ("it holds Python objects that a safe (weights-only) load refuses, so it is "
                "not loaded: " + " ".join(globals_named))
    return f"{type(error).__name__}: {' '.join(text.split())}"
