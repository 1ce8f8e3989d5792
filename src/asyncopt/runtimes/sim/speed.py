"""Worker speed models: how long one stochastic gradient takes on each worker.

The fixed computation model of Ringleader ASGD (Maranjyan & Richtárik 2026) and Ringmaster ASGD
(Maranjyan, Tyurin & Richtárik 2025) gives worker i a time τ_i per gradient; their experiments
add random noise per call. This module builds that model, and the time-varying one of
:mod:`asyncopt.runtimes.sim.slowdown`, from the ``[speed]`` table of a configuration::

    τ = (τ_i + ε) · c_i · s · m_i(now) ,

* τ_i, the **base time**: ``times`` (one per worker) or ``profile`` with ``scale`` = a:
  ``constant`` τ_i = a; ``linear`` τ_i = a·(i + 1), the Ringleader paper's 1..n; ``sqrt``
  τ_i = a·(1 + √i), the Ringmaster paper's. ``permute = true`` shuffles them with a seeded
  permutation π: worker w gets τ_{π(w)} (the papers permute per seed);
* ε ≥ 0, the **noise**, drawn afresh for every gradient with spread σ_w = ``noise_scale``, or
  σ·√(j + 1) when ``noise_grows`` (the Ringleader paper's |N(0, i + 1)|). With ``noise_index =
  "profile"`` (the default) j = π(w), the index before permutation, so a worker keeps the spread
  that belongs with its base time: permuting moves whole (τ_i, σ_i) pairs between workers. With
  ``noise_index = "worker"`` j = w, the worker's own index, as the Ringleader authors' code
  (``tune_and_plot_single_seed.py``, ``make_noise_function``: σ_i = √(i + 1) for node i, whose
  base time is perm[i]): a worker's spread is then unrelated to its base time.
  ``half_normal``: |N(0, σ_w²)| (mean σ_w·√(2/π)); ``exponential``: Exp with mean σ_w;
  ``lognormal``: σ_w·exp(N(0, 1)) (median σ_w, mean σ_w·e^{1/2});
* c_i, the persistent per-worker ``factors`` (``[3, 1, 1, 1]``: worker 0 three times slower),
  which the real-process runtime uses to emulate slow machines;
* s, the **straggler** factor: ``straggler_factor`` with probability ``straggler_probability``,
  independently per gradient, else 1;
* m_i(now), the product of the active slowdowns and periodic waves of
  :mod:`~asyncopt.runtimes.sim.slowdown`, at the virtual time ``now`` the gradient starts.

Two costs besides the computation, both simulator-only and 0 by default: ``latency`` ℓ_w (a
number, or one per worker), seconds from the end of a computation to the gradient's arrival at
the server; ``server_time`` s, the server's seconds per handled arrival, during which it handles
nothing else (:mod:`~asyncopt.runtimes.sim.loop`): the server's saturation. ``cores``,
``cancel`` and ``eval_time`` say what the workers share (:mod:`~asyncopt.runtimes.sim.machine`).
``trace = "RUN_DIR"`` replaces the parametric model by measured times
(:mod:`~asyncopt.runtimes.sim.trace`); ``asyncopt calibrate`` fits this model to them
(:mod:`asyncopt.calibrate`).

Randomness: with ``seeding = "spawn"`` (the default) worker w draws from its own generator,
``SeedSequence(seed).spawn(n + 1)[w]`` (built lazily as ``SeedSequence(seed, spawn_key=(w,))``,
the same stream), and the permutation from child n. With ``seeding = "offset"`` the streams are
the Ringleader authors': the permutation is ``default_rng(seed).permutation`` and worker w draws
from ``default_rng(seed + w)`` (``make_delays`` and ``make_noise_function``), so their base
times and noise draws are reproduced exactly (the streams of neighbouring seeds overlap: seed
s's worker 1 is seed s + 1's worker 0). Either way a worker's sequence of times depends only on
(spec, n, seed) and on how many gradients *it* started, never on how calls to other workers
interleave. The stationary part (τ_i + ε)·c_i·s is pre-drawn in blocks per worker, the same
numbers one draw at a time would give, so that a call is a few list look-ups.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from asyncopt.errors import ConfigError, check, check_int, check_seed
from asyncopt.runtimes.sim.machine import describe_machine
from asyncopt.runtimes.sim.slowdown import Varying, per_worker
from asyncopt.runtimes.sim.speed_spec import resolve_speed_spec

_FIRST_BLOCK, _MAX_BLOCK = 8, 128  # blocks grow, so 6000 rarely used workers cost little memory


def make_speed_model(spec: Mapping[str, Any], num_workers: int, seed: int,
                     problem: Mapping[str, Any] | None = None) -> Any:
    """The speed model of a ``[speed]`` spec for ``num_workers`` workers and ``seed``: a
    :class:`SpeedModel`, or with ``trace`` a :class:`~asyncopt.runtimes.sim.trace.TraceSpeed`
    (``problem``, the run's ``[problem]`` table, is checked against the trace's)."""
    spec = resolve_speed_spec(spec)
    num_workers, seed = check_int("workers", num_workers, 1), check_seed("seed", seed)
    if "trace" in spec:
        from asyncopt.runtimes.sim.trace import make_trace_speed

        return make_trace_speed(spec, num_workers, seed, problem)
    return SpeedModel(spec, num_workers, seed)


def profile_times(profile: str, scale: float, num_workers: int) -> list[float]:
    """τ_i for i = 0..n−1: ``a``, ``a·(i + 1)`` or ``a·(1 + √i)``."""
    i = np.arange(num_workers, dtype=np.float64)
    values = {"constant": np.ones_like(i), "linear": i + 1.0, "sqrt": 1.0 + np.sqrt(i)}[profile]
    return (scale * values).tolist()


class SpeedModel:
    """Seconds (virtual) per gradient for each worker; see the module docstring for the model."""

    def __init__(self, spec: Mapping[str, Any], num_workers: int, seed: int) -> None:
        n = num_workers
        self.num_workers, self.seed, self.spec = n, seed, dict(spec)
        if "times" in spec:
            profile = _per_worker("speed.times", spec["times"], n)
        else:
            profile = profile_times(spec["profile"], spec["scale"], n)
        self._offset = spec.get("seeding", "spawn") == "offset"
        index = list(range(n))
        if spec["permute"]:
            permuter = np.random.default_rng(seed) if self._offset else np.random.Generator(
                np.random.PCG64(_child(seed, n)))
            index = permuter.permutation(n).tolist()
        self._index = index  # worker w has the profile's entry index[w]
        self._base = [profile[j] for j in index]
        self._factors = _per_worker("speed.factors", spec["factors"], n) if "factors" in spec \
            else [1.0] * n
        grows = spec["noise_grows"]
        sigma = spec["noise_scale"]
        spread_index = range(n) if spec.get("noise_index", "profile") == "worker" else index
        self._sigma = [sigma * math.sqrt(j + 1.0) if grows else sigma for j in spread_index]
        self._noise = spec["noise"] if spec["noise"] != "none" and sigma > 0 else None
        self._p, self._straggle = spec["straggler_probability"], spec["straggler_factor"]
        self._random = self._noise is not None or (self._p > 0 and self._straggle > 1)
        self._varying: list[Varying | None] = per_worker(spec["slowdowns"], spec["periodic"], n)
        self._check_bounds()
        self._fixed = [b * c for b, c in zip(self._base, self._factors, strict=True)]
        self._blocks: list[list[float]] = [[] for _ in range(n)]
        self._pos = [0] * n
        self._rngs: list[np.random.Generator | None] = [None] * n
        latency = spec.get("latency", 0.0)
        self._latency = _per_worker("speed.latency", latency, n) if isinstance(
            latency, list) else [latency] * n
        self._server_time = spec.get("server_time", 0.0)
        self.charges_server = self._server_time > 0.0
        """Whether the simulator charges a server time per arrival (:meth:`server_time`)."""
        self.cores: int | None = spec.get("cores")
        self.cancel: str = spec.get("cancel", "preempt")
        self.eval_time: float = spec.get("eval_time", 0.0)
        """What the workers share (:mod:`~asyncopt.runtimes.sim.machine`)."""

    def compute_time(self, worker: int, now: float) -> float:
        """Seconds that ``worker`` needs for one gradient started at virtual time ``now``."""
        if self._random:
            pos = self._pos[worker]
            block = self._blocks[worker]
            if pos == len(block):
                block, pos = self._refill(worker), 0
            self._pos[worker] = pos + 1
            time = block[pos]
        else:
            time = self._fixed[worker]
        varying = self._varying[worker]
        if varying is not None:
            time *= varying.factor(now)
        if not 0.0 < time < math.inf:  # also false for NaN
            raise ConfigError(f"speed (worker {worker} at now = {now!r})", time,
                              "a finite compute time > 0; the product of the base time, "
                              "factors, slowdowns and periodic waves left that range")
        return time

    def latency(self, worker: int, now: float) -> float:
        """Seconds from the end of ``worker``'s computation to its gradient's arrival at the
        server (``latency``: communication; the server's queue is the simulator's)."""
        return self._latency[worker]

    def server_time(self, now: float) -> float:
        """The server's seconds per arrival (``server_time``), charged by the simulator."""
        return self._server_time

    def state_dict(self) -> dict[str, Any]:
        """Where each worker's random stream stands (numbers and lists only), so that a resumed
        simulation draws the same compute times as the uninterrupted one."""
        return {"blocks": [list(block) for block in self._blocks], "pos": list(self._pos),
                "rngs": [None if rng is None else rng.bit_generator.state
                         for rng in self._rngs]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the streams where :meth:`state_dict` left them (same spec, workers, seed)."""
        self._blocks = [list(block) for block in state["blocks"]]
        self._pos = list(state["pos"])
        self._rngs = restored_streams(state["rngs"])

    def base_times(self) -> list[float]:
        """The base τ_w of each worker, after the permutation (without noise or factors)."""
        return list(self._base)

    def describe(self) -> str:
        """The model in words, e.g. for a run's log."""
        spec, n = self.spec, self.num_workers
        if "times" in spec:
            words = f"{n} workers with base times {_short(spec['times'])}"
        else:
            formula = {"constant": "a", "linear": "a·(i+1)", "sqrt": "a·(1+√i)"}[spec["profile"]]
            words = f"{n} workers with base times τ_i = {formula}, a = {spec['scale']:g}"
        words += ", randomly permuted" if spec["permute"] else ""
        words += " (streams default_rng(seed) and default_rng(seed + w))" if self._offset else ""
        if self._noise is not None:
            spread = "σ" if not spec["noise_grows"] else "σ·√(w+1), w the worker" if (
                spec.get("noise_index") == "worker") else "σ·√(i+1), i the base time's index"
            words += f"; {self._noise.replace('_', '-')} noise with spread {spread}, " \
                     f"σ = {spec['noise_scale']:g}"
        if "factors" in spec:
            words += f"; per-worker factors {_short(spec['factors'])}"
        if self._p > 0:
            words += f"; stragglers: ×{self._straggle:g} with probability {self._p:g}"
        if spec["slowdowns"] or spec["periodic"]:
            words += f"; {len(spec['slowdowns'])} slowdown window(s) and " \
                     f"{len(spec['periodic'])} periodic wave(s)"
        if any(self._latency):
            words += f"; latency {_short(self._latency)} s"
        if self.charges_server:
            words += f"; server time {self._server_time:g} s per arrival"
        return words + describe_machine(self.cores, self.cancel, self.eval_time)

    def __repr__(self) -> str:
        return f"SpeedModel({self.describe()}; seed = {self.seed})"

    def _refill(self, worker: int) -> list[float]:
        rng = self._rngs[worker]
        if rng is None:
            rng = self._rngs[worker] = np.random.default_rng(self.seed + worker) if (
                self._offset) else np.random.Generator(np.random.PCG64(_child(self.seed, worker)))
        size = min(max(2 * len(self._blocks[worker]), _FIRST_BLOCK), _MAX_BLOCK)
        times = np.full(size, self._base[worker])
        if self._noise is not None:
            times += self._sigma[worker] * _draw(rng, self._noise, size)
        times *= self._factors[worker]
        if self._p > 0:
            times[rng.random(size) < self._p] *= self._straggle
        block = times.tolist()
        self._blocks[worker] = block
        return block

    def _check_bounds(self) -> None:
        # The noise is unbounded, so only the deterministic part can be checked here; compute_time
        # still refuses a non-finite time at run time.
        for worker in range(self.num_workers):
            varying = self._varying[worker]
            low, high = varying.bounds() if varying is not None else (1.0, 1.0)
            time = self._base[worker] * self._factors[worker]
            high *= self._straggle if self._p > 0 else 1.0
            if not (time * low > 0.0 and time * high < math.inf):
                raise ConfigError("speed", f"worker {worker}: base {self._base[worker]!r} × "
                                  f"factors between {low!r} and {high!r}",
                                  "finite compute times > 0 (factors, slowdowns and periodic "
                                  "amplitudes too large or too small)")


def _draw(rng: np.random.Generator, noise: str, size: int) -> np.ndarray:
    if noise == "half_normal":
        return np.abs(rng.standard_normal(size))
    if noise == "exponential":
        return rng.standard_exponential(size)
    return np.exp(rng.standard_normal(size))  # lognormal


def _child(seed: int, index: int) -> np.random.SeedSequence:
    """``SeedSequence(seed).spawn(index + 1)[index]``, without spawning the others."""
    return np.random.SeedSequence(seed, spawn_key=(index,))


def restored_streams(saved: list[Any]) -> list[np.random.Generator | None]:
    """Generators from their saved ``bit_generator.state`` (None: a stream not started yet),
    as a speed model's ``load_state_dict`` needs them."""
    streams: list[np.random.Generator | None] = []
    for state in saved:
        rng = None
        if state is not None:
            rng = np.random.Generator(np.random.PCG64())
            rng.bit_generator.state = state
        streams.append(rng)
    return streams


def _per_worker(field: str, values: list[float], num_workers: int) -> list[float]:
    check(len(values) == num_workers, field, values,
          f"a list of {num_workers} numbers, one per worker (workers = {num_workers})")
    return list(values)


def _short(values: list[float]) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:6])
    return f"[{shown}{', …' if len(values) > 6 else ''}]"
