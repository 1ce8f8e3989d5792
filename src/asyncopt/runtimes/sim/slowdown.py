"""Time-varying worker speeds: the *universal computation model*, made concrete.

Ringleader ASGD (Maranjyan & Richtárik 2026, appendix) and Ringmaster ASGD (Maranjyan, Tyurin &
Richtárik 2025) analyse, beyond fixed times τ_i, a universal computation model in which worker
i's speed is an arbitrary function of time. The simulator offers two families of such functions,
both *multiplicative* on a gradient's duration, and evaluated at the virtual time ``now`` at which
the gradient starts (a gradient's duration is fixed when it starts; a slowdown that begins while
it runs does not stretch it):

* piecewise-constant **slowdowns** (``[[speed.slowdowns]]``): a window ``start ≤ now < end`` in
  which the listed workers take ``factor`` times longer (``factor < 1`` is a speed-up). ``end``
  left out (or ``inf``) means forever. Overlapping windows multiply;
* smooth **periodic** load (``[[speed.periodic]]``)::

      m(now) = 1 + amplitude · (1 − cos(2π (now / period + phase))) / 2   ∈ [1, 1 + amplitude],

  equal to 1 at ``now = 0`` when ``phase = 0``. Several waves on one worker multiply.

``workers`` is a list of worker ids (the ids the runtime uses, after any permutation of the base
times) or ``"all"`` (the default).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from asyncopt.errors import ConfigError, check, check_float, check_keys

SLOWDOWN_KEYS = ("workers", "start", "end", "factor")
PERIODIC_KEYS = ("workers", "period", "amplitude", "phase")
_TWO_PI = 2.0 * math.pi


@dataclass(frozen=True, slots=True)
class Window:
    """``factor`` applies when ``start ≤ now < end``."""

    start: float
    end: float
    factor: float


@dataclass(frozen=True, slots=True)
class Wave:
    """``1 + amplitude · (1 − cos(2π (now / period + phase))) / 2``."""

    period: float
    amplitude: float
    phase: float


@dataclass(frozen=True, slots=True)
class Varying:
    """The time-varying multiplier of one worker: the product of its windows and waves."""

    windows: tuple[Window, ...]
    waves: tuple[Wave, ...]

    def factor(self, now: float) -> float:
        value = 1.0
        for window in self.windows:
            if window.start <= now < window.end:
                value *= window.factor
        for wave in self.waves:
            value *= 1.0 + wave.amplitude * (
                1.0 - math.cos(_TWO_PI * (now / wave.period + wave.phase))) * 0.5
        return value

    def bounds(self) -> tuple[float, float]:
        """The smallest and the largest value :meth:`factor` can take (for validation)."""
        low = high = 1.0
        for window in self.windows:
            low *= min(window.factor, 1.0)
            high *= max(window.factor, 1.0)
        for wave in self.waves:
            high *= 1.0 + wave.amplitude
        return low, high


def resolve_slowdowns(value: Any) -> list[dict[str, Any]]:
    """Validate ``speed.slowdowns``; every table gets ``workers`` and ``start`` filled in."""
    out = []
    for k, table in enumerate(_tables("speed.slowdowns", value)):
        field = f"speed.slowdowns[{k}]"
        check_keys(field, table, SLOWDOWN_KEYS)
        check("factor" in table, field, dict(table), "a table with a factor, e.g. "
              "{workers = [0], start = 10.0, end = 20.0, factor = 3.0}")
        start = check_float(f"{field}.start", table.get("start", 0.0), 0.0)
        entry: dict[str, Any] = {
            "workers": _workers(f"{field}.workers", table.get("workers", "all")),
            "start": start,
            "factor": check_float(f"{field}.factor", table["factor"], 0.0, strict_minimum=True),
        }
        end = table.get("end")
        if end is not None and end != math.inf:
            entry["end"] = check_float(f"{field}.end", end, start, strict_minimum=True)
        out.append(entry)
    return out


def resolve_periodic(value: Any) -> list[dict[str, Any]]:
    """Validate ``speed.periodic``; every table gets ``workers`` and ``phase`` filled in."""
    out = []
    for k, table in enumerate(_tables("speed.periodic", value)):
        field = f"speed.periodic[{k}]"
        check_keys(field, table, PERIODIC_KEYS)
        check("period" in table and "amplitude" in table, field, dict(table),
              "a table with a period and an amplitude, e.g. {period = 100.0, amplitude = 1.0}")
        out.append({
            "workers": _workers(f"{field}.workers", table.get("workers", "all")),
            "period": check_float(f"{field}.period", table["period"], 0.0, strict_minimum=True),
            "amplitude": check_float(f"{field}.amplitude", table["amplitude"], 0.0),
            "phase": check_float(f"{field}.phase", table.get("phase", 0.0)),
        })
    return out


def per_worker(slowdowns: Sequence[Mapping[str, Any]], periodic: Sequence[Mapping[str, Any]],
               num_workers: int) -> list[Varying | None]:
    """Each worker's :class:`Varying` (``None`` when nothing varies for it), from resolved tables.

    Raises ConfigError when a listed worker id is not below ``num_workers``.
    """
    windows: list[list[Window]] = [[] for _ in range(num_workers)]
    waves: list[list[Wave]] = [[] for _ in range(num_workers)]
    for name, tables, sink in (("slowdowns", slowdowns, windows), ("periodic", periodic, waves)):
        for k, table in enumerate(tables):
            ids = _ids(f"speed.{name}[{k}].workers", table["workers"], num_workers)
            item: Window | Wave
            if name == "slowdowns":
                item = Window(table["start"], table.get("end", math.inf), table["factor"])
            else:
                item = Wave(table["period"], table["amplitude"], table["phase"])
            for worker in ids:
                sink[worker].append(item)  # type: ignore[arg-type]
    return [Varying(tuple(w), tuple(p)) if w or p else None
            for w, p in zip(windows, waves, strict=True)]


def _tables(field: str, value: Any) -> list[Mapping[str, Any]]:
    ok = isinstance(value, (list, tuple)) and all(isinstance(t, Mapping) for t in value)
    check(ok, field, value, "a list of tables (TOML [[" + field + "]])")
    return list(value)


def _workers(field: str, value: Any) -> str | list[int]:
    if value == "all":
        return "all"
    ok = isinstance(value, (list, tuple)) and len(value) > 0 and all(
        isinstance(w, int) and not isinstance(w, bool) and w >= 0 for w in value)
    check(ok, field, value, '"all" or a non-empty list of worker ids (integers >= 0)')
    return list(value)


def _ids(field: str, value: str | list[int], num_workers: int) -> list[int]:
    if value == "all":
        return list(range(num_workers))
    bad = [w for w in value if w >= num_workers]
    if bad:
        raise ConfigError(field, value, f"worker ids in 0..{num_workers - 1} "
                          f"(workers = {num_workers})")
    return sorted(set(value))  # a repeated id must not apply the factor twice
