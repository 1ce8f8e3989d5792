"""Fit the simulator's parametric speed model to a real run: ``asyncopt calibrate RUN_DIR``.

The model of :mod:`asyncopt.runtimes.sim.speed`, per worker w, is τ = (τ_w + ε)·s·m_w(now)
(the factors folded into τ_w and the spread). From worker w's measured compute times x_k, in
the order their jobs started at t_k (:mod:`asyncopt.runtimes.sim.trace_file`):

1. **level changes** m_w(t): binary segmentation of z_k = log x_k (clipped at its median plus
   three MADs, so that stragglers do not make segments): the split of a segment that most
   reduces the squared error Σ(z − mean)² is kept while the reduction exceeds
   ``PENALTY``·σ̂²·log n, σ̂ the robust noise level (MAD of the differences / √2), and both
   parts hold at least ``MIN_SEGMENT`` samples. A segment's level is its ``LEVEL`` quantile;
   neighbours whose levels differ by less than ``MIN_CHANGE`` are merged. The segment with
   the most samples is the reference; every other one whose level differs from the
   reference's by ``MIN_CHANGE`` or more becomes a slowdown window from its first start to the
   next segment's, with factor = its level / the reference's level;
2. **stragglers** s: in the de-trended y_k = x_k / m_w(t_k), the far-out values
   y > max(Q3 + 3·IQR, 1.5·median) (Tukey's outer fence) when there are at least 3 of them and
   under 30 %: probability = their share, factor = their median / the others' median;
3. **noise**: for each family F of ``speed.noise`` and each base τ on a grid in (0, min y), the
   spread σ by maximum likelihood given τ (half-normal: √mean (y−τ)², exponential:
   mean(y−τ), lognormal: exp mean log(y−τ)), and the (τ, σ) with the smallest
   Kolmogorov–Smirnov distance D = sup |F̂_n − F| to the non-straggler y is kept.

The goodness of fit printed is D between all the de-trended y and the mixture
(1 − p)·F(y) + p·F(y / s). One ``[speed]`` table for all workers: the family with the smallest
summed D; noise_scale σ = the median of the workers' σ_w; factors c_w = σ_w / σ and
times = τ_w / c_w, so that (τ_w / c_w + ε)·c_w has base τ_w and spread σ_w; one straggler
probability and factor (pooled); each worker's slowdowns; ``latency`` the median
communication latency per worker; ``server_time`` the mean measured server time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import erf

from asyncopt.runtimes.sim.trace_file import Trace, read_trace

FAMILIES = ("half_normal", "exponential", "lognormal")
PENALTY = 8.0
MIN_SEGMENT = 10
MAX_SEGMENTS = 8
LEVEL = 0.1
MIN_CHANGE = 0.15
"""Neighbouring segments whose levels differ by less than this fraction are merged, and a
segment within it of the reference level is no slowdown."""
_GRID = np.concatenate([1.0 - np.geomspace(1e-4, 1.0, 48)[::-1][1:], [1.0 - 1e-6]])


@dataclass
class WorkerFit:
    """One worker's fit: base time, noise family and spread, stragglers, level changes, D."""

    worker: int
    samples: int
    base: float
    noise: str
    spread: float
    straggler_probability: float
    straggler_factor: float
    windows: list[dict[str, float]] = field(default_factory=list)
    levels: list[tuple[float, float, float]] = field(default_factory=list)  # start, end, level
    ks: float = math.nan
    latency: float = 0.0
    detrended: np.ndarray = field(default_factory=lambda: np.array([]))
    """The de-trended times y, sorted."""
    series: tuple[np.ndarray, np.ndarray] = (np.array([]), np.array([]))
    """(start times, compute times) in start order."""


def noise_cdf(family: str, x: np.ndarray, base: float, spread: float) -> np.ndarray:
    """P(τ + ε ≤ x) for noise ε of ``family`` with spread σ."""
    e = np.maximum(np.asarray(x, dtype=np.float64) - base, 0.0)
    if spread <= 0.0:
        return (e > 0).astype(np.float64)
    if family == "half_normal":
        return erf(e / (spread * math.sqrt(2.0)))
    if family == "exponential":
        return 1.0 - np.exp(-e / spread)
    with np.errstate(divide="ignore"):
        z = np.log(e / spread)
    return 0.5 * (1.0 + erf(z / math.sqrt(2.0)))


def mixture_cdf(fit: WorkerFit, x: np.ndarray) -> np.ndarray:
    p, s = fit.straggler_probability, fit.straggler_factor
    cdf = noise_cdf(fit.noise, x, fit.base, fit.spread)
    return (1 - p) * cdf + p * noise_cdf(fit.noise, np.asarray(x) / s, fit.base, fit.spread)


def ks_distance(samples: np.ndarray, cdf: np.ndarray) -> float:
    """sup |F̂_n − F| over sorted ``samples`` with the model's ``cdf`` at them."""
    n = len(samples)
    upper = np.arange(1, n + 1) / n
    return float(max(np.max(upper - cdf), np.max(cdf - (upper - 1.0 / n))))


def fit_noise(y: np.ndarray, family: str) -> tuple[float, float, float]:
    """(τ, σ, D) of ``family`` for the samples ``y`` (sorted inside)."""
    y = np.sort(y)
    best = (float(y[0]), 0.0, math.inf)
    for base in y[0] * _GRID:
        e = y - base
        if family == "half_normal":
            spread = float(np.sqrt(np.mean(e * e)))
        elif family == "exponential":
            spread = float(np.mean(e))
        else:
            spread = float(np.exp(np.mean(np.log(np.maximum(e, 1e-300)))))
        d = ks_distance(y, noise_cdf(family, y, float(base), spread))
        if d < best[2]:
            best = (float(base), spread, d)
    return best


def segments(z: np.ndarray) -> list[tuple[int, int]]:
    """Binary segmentation of ``z`` into [begin, end) index ranges (see the module docstring)."""
    n = len(z)
    if n < 2 * MIN_SEGMENT:
        return [(0, n)]
    sigma = 1.4826 * float(np.median(np.abs(np.diff(z)))) / math.sqrt(2.0)
    threshold = PENALTY * max(sigma, 1e-12) ** 2 * math.log(n)
    found = [(0, n)]
    while len(found) < MAX_SEGMENTS:
        best = None
        for k, (a, b) in enumerate(found):
            gain, at = _best_split(z[a:b])
            if at is not None and gain > threshold and (best is None or gain > best[0]):
                best = (gain, k, a + at)
        if best is None:
            break
        _, k, at = best
        a, b = found[k]
        found[k:k + 1] = [(a, at), (at, b)]
    return found


def _merged(parts: list[tuple[int, int]], x: np.ndarray) -> list[tuple[int, int]]:
    """Neighbours whose levels differ by less than ``MIN_CHANGE`` joined, closest first."""
    while len(parts) > 1:
        medians = [_level(x[a:b]) for a, b in parts]
        changes = [abs(math.log(medians[k + 1] / medians[k])) for k in range(len(parts) - 1)]
        k = int(np.argmin(changes))
        if changes[k] >= math.log1p(MIN_CHANGE):
            break
        parts[k:k + 2] = [(parts[k][0], parts[k + 1][1])]
    return parts


def _level(x: np.ndarray) -> float:
    """A segment's level: its ``LEVEL`` quantile (the base time dominates a low quantile, so
    the ratio of two levels estimates a slowdown's factor with less noise than medians)."""
    return float(np.quantile(x, LEVEL))


def _best_split(z: np.ndarray) -> tuple[float, int | None]:
    n = len(z)
    if n < 2 * MIN_SEGMENT:
        return 0.0, None
    s, q = np.cumsum(z), np.cumsum(z * z)
    k = np.arange(MIN_SEGMENT, n - MIN_SEGMENT + 1)
    left = q[k - 1] - s[k - 1] ** 2 / k
    right = (q[-1] - q[k - 1]) - (s[-1] - s[k - 1]) ** 2 / (n - k)
    total = q[-1] - s[-1] ** 2 / n
    gains = total - left - right
    i = int(np.argmax(gains))
    return float(gains[i]), int(k[i])


def fit_worker(worker: int, compute: np.ndarray, start: np.ndarray,
               family: str | None = None) -> WorkerFit:
    """Worker ``worker``'s fit; ``family`` None: the family with the smallest D."""
    order = np.argsort(start, kind="stable")
    x, t = compute[order], start[order]
    z = np.log(x)
    mad = float(np.median(np.abs(z - np.median(z))))
    parts = _merged(segments(np.minimum(z, np.median(z) + 3 * 1.4826 * mad)), x)
    medians = [_level(x[a:b]) for a, b in parts]
    reference = max(range(len(parts)), key=lambda k: parts[k][1] - parts[k][0])
    level = np.empty(len(x))
    windows, levels = [], []
    for k, (a, b) in enumerate(parts):
        factor = medians[k] / medians[reference]
        if abs(math.log(factor)) < math.log1p(MIN_CHANGE):
            factor = 1.0  # the reference level again (e.g. before and after a slowdown)
        level[a:b] = factor
        end = float(t[b]) if b < len(x) else math.inf
        levels.append((float(t[a]), end, float(np.median(x[a:b]))))
        if factor != 1.0:
            window = {"start": float(t[a]) if a > 0 else 0.0, "factor": factor}
            if b < len(x):
                window["end"] = end
            windows.append(window)
    y = x / level
    q1, median, q3 = np.quantile(y, [0.25, 0.5, 0.75])
    fence = max(q3 + 3 * (q3 - q1), 1.5 * median)
    out = y > fence
    p, factor = 0.0, 1.0
    if 3 <= out.sum() < 0.3 * len(y):
        p, factor = float(out.mean()), float(np.median(y[out]) / np.median(y[~out]))
    bulk = y[~out] if p > 0 else y
    fits = {f: fit_noise(bulk, f) for f in ([family] if family else FAMILIES)}
    chosen = min(fits, key=lambda f: fits[f][2])
    base, spread, _ = fits[chosen]
    fit = WorkerFit(worker, len(x), base, chosen, spread, p, max(factor, 1.0), windows, levels,
                    detrended=np.sort(y), series=(t, x))
    fit.ks = ks_distance(fit.detrended, mixture_cdf(fit, fit.detrended))
    return fit


@dataclass
class Calibration:
    """Per-worker fits, the one ``[speed]`` table, and the table's D per worker."""

    source: Path
    fits: list[WorkerFit]
    speed: dict[str, Any]
    table_ks: list[float]


def calibrate(path: str | Path) -> Calibration:
    """Fit every worker of the trace in ``path`` (a run directory or a CSV trace)."""
    trace = read_trace(path)
    own = [fit_worker(w, trace.compute[w], trace.start[w]) for w in range(trace.num_workers)]
    scores = {f: [fit_worker(w, trace.compute[w], trace.start[w], f)
                  for w in range(trace.num_workers)] for f in FAMILIES}
    family = min(FAMILIES, key=lambda f: sum(fit.ks for fit in scores[f]))
    fits = scores[family]
    for fit in own:
        fit.latency = float(np.median(trace.latency[fit.worker]))
    speed = speed_table(fits, trace)
    table = [table_fit(fit, speed) for fit in fits]
    return Calibration(Path(path), own, speed,
                       [ks_distance(f.detrended, mixture_cdf(t, f.detrended))
                        for f, t in zip(fits, table, strict=True)])


def speed_table(fits: list[WorkerFit], trace: Trace) -> dict[str, Any]:
    """One ``[speed]`` table from per-worker fits of one family (see the module docstring)."""
    spreads = np.array([fit.spread for fit in fits])
    sigma = float(np.median(spreads))
    table: dict[str, Any] = {}
    if sigma > 0:
        factors = [max(s, 1e-9 * fit.base) / sigma for s, fit in zip(spreads, fits, strict=True)]
        table |= {"times": [fit.base / c for fit, c in zip(fits, factors, strict=True)],
                  "factors": factors, "noise": fits[0].noise, "noise_scale": sigma}
    else:
        table["times"] = [fit.base for fit in fits]
    stragglers = sum(round(f.straggler_probability * f.samples) for f in fits)
    if stragglers:
        total = sum(f.samples for f in fits)
        table["straggler_probability"] = stragglers / total
        table["straggler_factor"] = float(np.median(
            [f.straggler_factor for f in fits if f.straggler_probability > 0]))
    slowdowns = [{"workers": [f.worker], **w} for f in fits for w in f.windows]
    if slowdowns:
        table["slowdowns"] = slowdowns
    latency = [float(np.median(trace.latency[f.worker])) for f in fits]
    if any(latency):
        table["latency"] = latency
    if len(trace.server):
        table["server_time"] = float(np.mean(trace.server))
    return table


def table_fit(fit: WorkerFit, speed: dict[str, Any]) -> WorkerFit:
    """The table's model of ``fit.worker`` (shared spread, stragglers) as a :class:`WorkerFit`."""
    c = speed.get("factors", [1.0] * (fit.worker + 1))[fit.worker]
    return WorkerFit(fit.worker, fit.samples, speed["times"][fit.worker] * c,
                     speed.get("noise", fit.noise), speed.get("noise_scale", 0.0) * c,
                     speed.get("straggler_probability", 0.0),
                     speed.get("straggler_factor", 1.0))


def format_fits(calibration: Calibration) -> str:
    """The per-worker fits as a table, with D of the own fit and of the one table."""
    from asyncopt.aggregate import format_table

    rows = []
    for fit, table_ks in zip(calibration.fits, calibration.table_ks, strict=True):
        rows.append({
            "worker": fit.worker, "samples": fit.samples, "base (s)": fit.base,
            "noise": fit.noise, "spread (s)": fit.spread,
            "stragglers": f"{fit.straggler_probability:.3g} × {fit.straggler_factor:.3g}"
            if fit.straggler_probability else "none",
            "level changes": len(fit.windows), "latency (s)": fit.latency,
            "KS D (own fit)": fit.ks, "KS D (table)": table_ks})
    return format_table(rows)


def dumps_speed(calibration: Calibration, command: str) -> str:
    """The ``[speed]`` table as TOML, headed by how it was made and its fit."""
    import tomli_w

    worst = max(calibration.table_ks)
    return (f"# fitted by: {command}\n# Kolmogorov–Smirnov D of this model per worker: "
            f"{', '.join(f'{d:.3f}' for d in calibration.table_ks)} (worst {worst:.3f})\n"
            + tomli_w.dumps({"speed": _plain(calibration.speed)}))


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers (for TOML)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value
