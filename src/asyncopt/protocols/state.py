"""Checks of a protocol's saved state before it is restored (resuming from a checkpoint).

A protocol's state (:meth:`~asyncopt.protocols.base.Protocol.state_dict`) is plain numbers,
lists, dicts and tensors, so that ``torch.load(weights_only=True)`` reads it back without running
pickled code. What comes back from a file is untrusted input: before anything is restored, every
field is checked for its kind and shape against the protocol, model and rule that the run's
configuration builds, and the first field that does not fit raises a
:class:`~asyncopt.errors.ConfigError` naming it (``checkpoint protocol_state.<path>``), its value
and what is allowed. These helpers are those checks; each takes the field's dotted path.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from asyncopt.errors import ConfigError
from asyncopt.tree import Params

PREFIX = "checkpoint protocol_state"


class Shown(str):
    """A description that an error message shows as it is (its repr is itself)."""

    def __repr__(self) -> str:
        return str(self)


def describe(value: Any) -> Shown:
    """A short description of a saved value for an error message (never a tensor's data)."""
    if isinstance(value, Shown):
        return value
    if isinstance(value, Tensor):
        return Shown(f"tensor {tuple(value.shape)} {value.dtype}")
    if isinstance(value, dict):
        items = list(value.items())
        return Shown("{" + ", ".join(f"{k!r}: {describe(v)}" for k, v in items[:6])
                     + (", ..." if len(items) > 6 else "") + "}")
    if isinstance(value, list | tuple) and any(isinstance(v, Tensor | dict) for v in value):
        shown = ", ".join(describe(v) for v in value[:3]) + (", ..." if len(value) > 3 else "")
        return Shown(f"[{shown}] ({len(value)} items)")
    text = repr(value)
    return Shown(text if len(text) <= 120 else text[:117] + "...")


def need(ok: bool, path: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{PREFIX}.{path}" if path else PREFIX, describe(value), allowed)


def entry(state: Any, key: str, path: str) -> Any:
    """``state[key]``, or a ConfigError if ``state`` is not a dict holding ``key``."""
    need(isinstance(state, dict), path, state, "a dict (a protocol's state_dict)")
    need(key in state, f"{path}.{key}" if path else key, Shown("missing"),
         f"present: this protocol saves it (the saved keys: {', '.join(map(str, state))})")
    return state[key]


def integer(value: Any, path: str, minimum: int = 0, maximum: int | None = None) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum and (
        maximum is None or value <= maximum)
    need(ok, path, value, f"an integer >= {minimum}"
         + ("" if maximum is None else f" and <= {maximum}"))
    return int(value)


def workers(value: Any, path: str, num_workers: int) -> list[int]:
    """A list of distinct worker indices in [0, num_workers)."""
    need(isinstance(value, list) and all(
        isinstance(w, int) and not isinstance(w, bool) and 0 <= w < num_workers for w in value)
        and len(set(value)) == len(value), path, value,
        f"a list of distinct worker indices in [0, {num_workers})")
    return list(value)


def tensor(value: Any, path: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    need(isinstance(value, Tensor) and tuple(value.shape) == shape and value.dtype == dtype,
         path, value, f"a tensor of shape {shape} and dtype {dtype}")
    return value


def params(value: Any, path: str, like: Params) -> Params:
    """A tree with the model's names, shapes and dtypes (a saved gradient or model)."""
    expected = {k: (tuple(v.shape), v.dtype) for k, v in like.items()}
    need(isinstance(value, dict) and list(value) == list(like) and all(
        isinstance(v, Tensor) and (tuple(v.shape), v.dtype) == expected[k]
        for k, v in value.items()), path, value,
        f"a tree shaped like the model: {_shapes(expected)}")
    return value


def to_like(tree: Params, like: Params) -> Params:
    """A private copy of a checked saved tree, on the model's devices."""
    return {k: v.detach().to(like[k].device, copy=True) for k, v in tree.items()}


def _shapes(expected: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> str:
    text = ", ".join(f"{k}: {shape}" for k, (shape, _) in list(expected.items())[:6])
    return text + (", ..." if len(expected) > 6 else "")
