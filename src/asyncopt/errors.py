"""Errors for bad user input, and the small checks that raise them.

Every user-facing value is validated once, at the boundary, by these helpers, so that every
message has the same shape: the field, the value, and what is allowed.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from typing import Any


class ConfigError(ValueError):
    """A user-given value is not allowed. The message names the field, the value and the rule."""

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field} = {value!r} is not allowed: {allowed}")

    def __reduce__(self) -> tuple[Any, ...]:
        # rebuilt from its fields, so that one raised in a worker process reaches the parent
        return type(self), (self.field, self.value, self.allowed)


class DivergenceError(RuntimeError):
    """A run stopped because its loss or its parameters stopped being finite or exploded."""


def check(condition: bool, field: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ConfigError(field, value, allowed)


def check_int(field: str, value: Any, minimum: int | None = None,
              maximum: int | None = None) -> int:
    """An integer (bools refused) within ``[minimum, maximum]``."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    check(ok, field, value, f"an integer{_range(minimum, maximum)}")
    return int(value)


MAX_SEED = 2**63 - 1
"""The largest seed: torch's generators take 64-bit seeds, and seeds travel as int64 tensors."""


def check_seed(field: str, value: Any) -> int:
    """A seed: an integer in [0, 2**63 - 1]."""
    return check_int(field, value, 0, MAX_SEED)


def check_float(field: str, value: Any, minimum: float | None = None,
                maximum: float | None = None, *, strict_minimum: bool = False) -> float:
    """A finite real number within the range (``minimum`` excluded when ``strict_minimum``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if strict_minimum else value >= minimum
    ok = ok and (maximum is None or value <= maximum)
    low = f"> {minimum}" if strict_minimum else f">= {minimum}"
    bounds = [b for b in (low if minimum is not None else None,
                          f"<= {maximum}" if maximum is not None else None) if b]
    check(ok, field, value, "a finite number" + (" " + " and ".join(bounds) if bounds else ""))
    return float(value)


def check_choice(field: str, value: Any, choices: Iterable[str]) -> str:
    choices = sorted(choices)
    check(value in choices, field, value, "one of " + ", ".join(choices) + nearest(value, choices))
    return str(value)


def check_keys(field: str, given: Iterable[str], allowed: Iterable[str]) -> None:
    """Refuse unknown keys in a user-given table (a typo must not be ignored silently)."""
    allowed = sorted(allowed)
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ConfigError(field, unknown[0], "known keys are " + (", ".join(allowed) or "none")
                          + nearest(unknown[0], allowed))


def nearest(value: Any, allowed: Iterable[str]) -> str:
    """``"; did you mean 'lr'?"`` for the allowed word closest to a misspelt one, else ``""``."""
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, list(allowed), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _range(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""
