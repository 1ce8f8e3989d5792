"""Measured speeds as a speed model: each simulated worker draws its times from a real run's.

``[speed] trace = "RUN_DIR"`` (or a CSV file, :mod:`~asyncopt.runtimes.sim.trace_file`) gives
simulated worker w the pairs (c_j, ℓ_j), compute time and communication latency, that its trace
worker σ(w) measured. A gradient started at virtual time ``now`` takes

    compute  c_j · c_w · m_w(now)          (the recorded compute_time)
    travel   ℓ_j                           (its arrival at the server comes ℓ_j later)

with c_w the ``factors`` and m_w(now) the ``slowdowns`` and ``periodic`` waves of
:mod:`~asyncopt.runtimes.sim.speed` (what-ifs on top of the measurement), and j chosen by
``trace_mode``:

* ``"resample"`` (default): j uniform among σ(w)'s samples, independently per gradient, from
  worker w's own seeded stream (``SeedSequence(seed, spawn_key=(w,))``, uniforms drawn in
  blocks). With ``trace_window = W > 0`` only among the samples whose job started in the window
  ⌊now / W⌋ of the trace's clock (time-varying speeds); a window without samples of that worker
  takes the nearest earlier one (else the nearest later), and past the trace's end the last.
* ``"replay"``: σ(w)'s samples in their order, starting over after the last (the trace's own
  time variation, exactly; no window).

A fresh worker process is slow at first (its first calls compile and allocate: the first
gradients of a digits MLP took 20 times the steady time, and a real run made a fifth of its
steady progress in its first 0.2 s). With ``trace_warmup = "auto"`` (the default in resample
mode), simulated worker w's first gradients are σ(w)'s leading samples, in order, as long as
their compute time exceeds twice σ(w)'s median; later draws leave them out (but a window's
draws). An integer K replays the first K samples instead, 0 none.

Mapping when the simulation has n workers and the trace m (``trace_workers``):
``"same"`` σ(w) = w and n must equal m (refused otherwise: no mapping is assumed);
``"modulo"`` σ(w) = w mod m (n > m repeats the trace's workers in turn, n < m takes the first
n); ``"pooled"``: every worker draws from all m workers' samples together (workers taken as
alike; replay then walks the pooled samples in handling order). The default is ``"same"``,
except for a trace of workers that shared one machine's cores without padding (its summary's
``cpus``, below): they ran the same program on the same cores, so their differences in the
trace are the operating system's scheduling of that run, not theirs, and a method that loads
the machine otherwise is scheduled otherwise; they are pooled, and the simulator's processor
sharing treats them alike.

The server (:mod:`~asyncopt.runtimes.sim.loop` charges it per handled arrival): ``server_time``
a number of seconds, or ``"trace"``, resampled from the trace's measured server times (the
default when the trace has them, else 0), from stream ``spawn_key=(n,)``; ``eval_time`` a
number, or ``"trace"``, the trace run's mean seconds per evaluation (the default when it has
one, else 0). What the workers share (:mod:`~asyncopt.runtimes.sim.machine`): ``cancel``
defaults to what the trace's runtime does (``"queue"`` for Ray, whose actors run every task
sent, else ``"finish"``), and ``cores``
to the CPUs the trace run's processes shared on one machine without padding (its summary's
``cpus``; a padded worker sleeps rather than computes, so a padded run gets none); with ``cores``
every measured time is first taken back to its seconds alone on a core (:meth:`~asyncopt.
runtimes.sim.trace_file.Trace.alone`, ℓ_j as work before the computation), and the simulator
shares the cores again.

Deterministic per seed: a worker's times depend only on (trace, spec, n, seed) and on how many
gradients it started; :meth:`TraceSpeed.state_dict` saves the streams for a checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from asyncopt.errors import ConfigError, check, check_choice, check_float, check_int
from asyncopt.runtimes.sim.machine import KEYS as MACHINE_KEYS
from asyncopt.runtimes.sim.machine import describe_machine, resolve_machine
from asyncopt.runtimes.sim.slowdown import Varying, per_worker, resolve_periodic, resolve_slowdowns
from asyncopt.runtimes.sim.speed import restored_streams
from asyncopt.runtimes.sim.speed_spec import positive_list
from asyncopt.runtimes.sim.trace_file import Trace, read_trace

MODES = ("resample", "replay")
MAPPINGS = ("same", "modulo", "pooled")
KEYS = ("trace", "trace_mode", "trace_window", "trace_workers", "trace_any_problem",
        "trace_warmup", "factors", "slowdowns", "periodic", "server_time", *MACHINE_KEYS)
_BLOCK = 64


def resolve_trace_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A ``[speed]`` spec with ``trace``, validated, defaults filled in (the file is read by
    :func:`make_trace_speed`, which knows the worker count)."""
    for key in spec:
        check(key in KEYS, f"speed.{key}", spec[key], "left out when speed.trace is given (the "
              "measured times replace the parametric model); with a trace: " + ", ".join(KEYS))
    check(isinstance(spec["trace"], str) and spec["trace"] != "", "speed.trace", spec["trace"],
          "the path of a run directory or a CSV file with columns worker, compute_time"
          "[, latency]")
    out: dict[str, Any] = {"trace": spec["trace"]}
    out["trace_mode"] = check_choice("speed.trace_mode", spec.get("trace_mode", "resample"),
                                     MODES)
    out["trace_window"] = check_float("speed.trace_window", spec.get("trace_window", 0.0), 0.0)
    check(out["trace_window"] == 0.0 or out["trace_mode"] == "resample", "speed.trace_window",
          out["trace_window"], '0 with trace_mode = "replay" (replay keeps the order itself)')
    if "trace_workers" in spec:
        out["trace_workers"] = check_choice("speed.trace_workers", spec["trace_workers"],
                                            MAPPINGS)
    warmup = spec.get("trace_warmup", "auto" if out["trace_mode"] == "resample" else 0)
    if warmup != "auto":
        warmup = check_int("speed.trace_warmup", warmup, 0)
        check(warmup == 0 or out["trace_mode"] == "resample", "speed.trace_warmup", warmup,
              '0 with trace_mode = "replay" (replay starts with the first samples anyway)')
    out["trace_warmup"] = warmup
    any_problem = spec.get("trace_any_problem", False)
    check(isinstance(any_problem, bool), "speed.trace_any_problem", any_problem, "true or false")
    out["trace_any_problem"] = any_problem
    if "factors" in spec:
        out["factors"] = positive_list("speed.factors", spec["factors"])
    out["slowdowns"] = resolve_slowdowns(spec.get("slowdowns", []))
    out["periodic"] = resolve_periodic(spec.get("periodic", []))
    if "server_time" in spec:
        out["server_time"] = resolve_server_time(spec["server_time"], trace=True)
    out.update(resolve_machine(spec, trace=True))
    return out


def resolve_server_time(value: Any, trace: bool) -> float | str:
    if trace and value == "trace":
        return "trace"
    allowed = 'seconds >= 0 per arrival' + (', or "trace"' if trace else '')
    check(isinstance(value, (int, float)) and not isinstance(value, bool), "speed.server_time",
          value, allowed)
    return check_float("speed.server_time", value, 0.0)


def make_trace_speed(spec: Mapping[str, Any], num_workers: int, seed: int,
                     problem: Mapping[str, Any] | None = None) -> TraceSpeed:
    """The trace speed model of a resolved spec; ``problem`` (the run's ``[problem]`` table)
    is compared with the trace run's, unless ``trace_any_problem``."""
    trace = read_trace(spec["trace"])
    theirs = trace.config.get("problem")
    if problem is not None and theirs is not None and not spec["trace_any_problem"]:
        for key in sorted(set(problem) | set(theirs)):
            if problem.get(key) != theirs.get(key):
                raise ConfigError("speed.trace", spec["trace"], f"a trace of the same problem: "
                                  f"its problem.{key} is {theirs.get(key)!r}, this run's "
                                  f"{problem.get(key)!r} (trace_any_problem = true to use it "
                                  "anyway)")
    return TraceSpeed(spec, trace, num_workers, seed)


class TraceSpeed:
    """Seconds per gradient drawn from a :class:`Trace`; see the module docstring."""

    def __init__(self, spec: Mapping[str, Any], trace: Trace, num_workers: int,
                 seed: int) -> None:
        n, m = num_workers, trace.num_workers
        self.spec, self.trace, self.num_workers, self.seed = dict(spec), trace, n, seed
        # workers that shared one machine's cores unpadded are alike: their differences are
        # the scheduler's, which the simulator's processor sharing gives them afresh
        mapping = self.mapping = spec.get("trace_workers", "pooled" if trace.cpus else "same")
        if mapping == "same" and n != m:
            raise ConfigError("workers", n, f"{m}, the trace's worker count ({trace.path}), or "
                              'speed.trace_workers = "modulo" or "pooled" to map them')
        self.cores: int | None = spec.get("cores", trace.cpus)
        self.cancel: str = spec.get("cancel", "queue" if trace.config.get("runtime") == "ray"
                                    else "finish")
        """What the workers share (:mod:`~asyncopt.runtimes.sim.machine`)."""
        times = trace.alone(self.cores) if self.cores else trace  # less the contention
        warm = [_warmup(c, spec["trace_warmup"]) for c in times.compute]  # per trace worker
        self._warmup = [times.compute[w % m][:warm[w % m]] for w in range(n)]
        self._warmup_latency = [times.latency[w % m][:warm[w % m]] for w in range(n)]
        steady = [np.arange(len(c)) >= k for c, k in zip(times.compute, warm, strict=True)]
        if mapping == "pooled":
            order = np.argsort(np.concatenate(times.start), kind="stable")
            pooled = [np.concatenate(a)[order] for a in (times.compute, times.latency,
                                                         times.start, steady)]
            sources = [tuple(pooled)] * n
        else:
            sources = [(times.compute[w % m], times.latency[w % m], times.start[w % m],
                        steady[w % m]) for w in range(n)]
        self._compute = [s[0] for s in sources]
        self._latency_of = [s[1] for s in sources]
        self._windows = [_windows(s[2], spec["trace_window"]) for s in sources]
        self._steady = [None if s[3].all() else np.flatnonzero(s[3]) for s in sources]
        self._begun = [0] * n  # gradients each worker started
        self._replay = spec["trace_mode"] == "replay"
        self._factors = list(spec.get("factors", [1.0] * n))
        check(len(self._factors) == n, "speed.factors", self._factors,
              f"a list of {n} numbers, one per worker (workers = {n})")
        self._varying: list[Varying | None] = per_worker(spec["slowdowns"], spec["periodic"], n)
        server = spec.get("server_time", "trace" if len(trace.server) else 0.0)
        if server == "trace" and not len(trace.server):
            raise ConfigError("speed.server_time", "trace", f"a number: {trace.path} has no "
                              "measured server times (recorded by runs of this version on)")
        self._server = times.server if server == "trace" else None
        self._server_constant = 0.0 if server == "trace" else float(server)
        self.charges_server = self._server is not None or self._server_constant > 0
        evaluation = spec.get("eval_time", "trace" if times.eval_time is not None else 0.0)
        if evaluation == "trace" and times.eval_time is None:
            raise ConfigError("speed.eval_time", "trace", f"a number: {trace.path} has no "
                              "measured evaluation time (a run of a real runtime records it in "
                              "summary.json from this version on)")
        self.eval_time: float = times.eval_time if evaluation == "trace" else float(
            evaluation)
        self._pos = [0] * (n + 1)  # worker n: the server's stream
        self._blocks: list[list[float]] = [[] for _ in range(n + 1)]
        self._rngs: list[np.random.Generator | None] = [None] * (n + 1)
        self._last = [0.0] * n

    def compute_time(self, worker: int, now: float) -> float:
        """Seconds of computation for ``worker``'s gradient started at virtual time ``now``;
        :meth:`latency` then gives the same sample's travel time."""
        compute = self._compute[worker]
        begun = self._begun[worker]
        self._begun[worker] = begun + 1
        if begun < len(self._warmup[worker]):  # a fresh worker's first gradients
            self._last[worker] = float(self._warmup_latency[worker][begun])
            return self._scaled(worker, float(self._warmup[worker][begun]), now)
        if self._replay:
            j = self._pos[worker] % len(compute)
            self._pos[worker] += 1
        else:
            window = self._windows[worker]
            pool = window[min(int(now // self.spec["trace_window"]), len(window) - 1)] if (
                window is not None) else self._steady[worker]
            size = len(compute) if pool is None else len(pool)
            j = min(int(self._uniform(worker) * size), size - 1)
            j = j if pool is None else int(pool[j])
        self._last[worker] = float(self._latency_of[worker][j])
        return self._scaled(worker, float(compute[j]), now)

    def _scaled(self, worker: int, time: float, now: float) -> float:
        """A sample's compute time under the ``factors``, ``slowdowns`` and ``periodic``."""
        time *= self._factors[worker]
        varying = self._varying[worker]
        return time * varying.factor(now) if varying is not None else time

    def latency(self, worker: int, now: float) -> float:
        """The travel time ℓ_j of the sample the last :meth:`compute_time` drew for ``worker``."""
        return self._last[worker]

    def server_time(self, now: float) -> float:
        """The server's seconds for one arrival handled at ``now``."""
        if self._server is None:
            return self._server_constant
        server = self._server
        return float(server[min(int(self._uniform(self.num_workers) * len(server)),
                                len(server) - 1)])

    def state_dict(self) -> dict[str, Any]:
        return {"trace": self.trace.fingerprint(), "pos": list(self._pos),
                "blocks": [list(b) for b in self._blocks], "begun": list(self._begun),
                "rngs": [None if r is None else r.bit_generator.state for r in self._rngs]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["trace"]) != self.trace.fingerprint():
            raise ConfigError("speed.trace", str(self.trace.path), "the trace the checkpoint "
                              "was simulated with (its rows changed since)")
        self._pos, self._blocks = list(state["pos"]), [list(b) for b in state["blocks"]]
        self._begun = list(state.get("begun", [0] * self.num_workers))
        self._rngs = restored_streams(state["rngs"])

    def describe(self) -> str:
        spec = self.spec
        words = (f"{self.num_workers} workers with times measured in {spec['trace']} "
                 f"({spec['trace_mode']}, workers {self.mapping}")
        words += f", windows of {spec['trace_window']:g} s)" if spec["trace_window"] else ")"
        if self.charges_server:
            words += "; server time " + ("resampled from the trace" if self._server is not None
                                         else f"{self._server_constant:g} s per arrival")
        return words + describe_machine(self.cores, self.cancel, self.eval_time)

    def __repr__(self) -> str:
        return f"TraceSpeed({self.describe()}; seed = {self.seed})"

    def _uniform(self, stream: int) -> float:
        pos, block = self._pos[stream], self._blocks[stream]
        if pos == len(block):
            rng = self._rngs[stream]
            if rng is None:
                rng = self._rngs[stream] = np.random.Generator(np.random.PCG64(
                    np.random.SeedSequence(self.seed, spawn_key=(stream,))))
            block = self._blocks[stream] = rng.random(_BLOCK).tolist()
            pos = 0
        self._pos[stream] = pos + 1
        return block[pos]


def _warmup(compute: np.ndarray, warmup: int | str) -> int:
    """How many leading samples a fresh worker replays (see the module docstring)."""
    if warmup != "auto":
        return min(int(warmup), len(compute) - 1)
    slow = compute > 2.0 * np.median(compute)
    return int(np.argmin(slow)) if not slow.all() else 0


def _windows(start: np.ndarray, width: float) -> list[np.ndarray] | None:
    """Sample indices per window ⌊start / width⌋; an empty window takes the nearest earlier
    window's samples (the first windows, before any sample, the first non-empty one's)."""
    if width <= 0.0:
        return None
    index = np.floor(np.maximum(start, 0.0) / width).astype(np.int64)
    order = np.argsort(index, kind="stable")
    bounds = np.searchsorted(index[order], np.arange(int(index.max()) + 2))
    bins = [order[bounds[k]:bounds[k + 1]] for k in range(len(bounds) - 1)]
    last = bins[int(index.min())]
    filled = []
    for samples in bins:
        last = samples if len(samples) else last
        filled.append(last)
    return filled
