"""ASGD with an artificial delay: each gradient is evaluated at a model drawn from the last D.

APAM's delay study (Xu et al., *Parallel and distributed asynchronous adaptive stochastic
gradient methods*, §5.4) makes staleness a controlled
variable: the master keeps the last D iterates and hands each worker one of them, chosen uniformly,
while the step is applied to the newest iterate::

    x_{k+1} = x_k + rule(g(x_{k−δ_k}); δ_k),   δ_k ~ U{0, …, min(D, k + 1) − 1}   (one worker)

With several workers the real delay of the pipeline adds to the drawn one; every delay is still
measured (server version at arrival − version handed out) and recorded, never assumed.

The server steps out of place, so the window is D references to past versions' parameter dicts
(no copy). A worker is handed a past version through :meth:`Protocol.model_for`, which every
runtime should ask when it starts a worker; the simulator and Ray do. A runtime that does not
(today the real-process runtime) is refused before the run starts (``needs_model_for``), and at
the first arrival should one slip through, instead of silently running without the delay. The
draws come from their own generator: ``seed``, or, when left out, a seed derived from the
initial model, so that the draws follow the run's seed.
"""

from __future__ import annotations

import hashlib
from collections import deque
from typing import Any

import numpy as np

from asyncopt.errors import ConfigError, check_int, check_seed
from asyncopt.protocols import state as saved
from asyncopt.protocols.asgd import ASGD
from asyncopt.protocols.base import Arrival, Reply, Server
from asyncopt.tree import Params


class ArtificialDelayASGD(ASGD):
    """ASGD whose workers compute at a model drawn uniformly from the last ``window`` versions."""

    needs_model_for = True
    needs_server = True  # the server hands out older models: only a central one can
    held_field = "protocol.artificial_delay"

    def __init__(self, server: Server, num_workers: int, window: int,
                 seed: int | None = None) -> None:
        super().__init__(server, num_workers)
        # a window longer than any run's steps means nothing; past 2**31 it cannot be a deque
        self.window = check_int("protocol.artificial_delay", window, 1, 2**31 - 1)
        if seed is None:
            seed = _seed_of(server.params)
        self._rng = np.random.default_rng(check_seed("protocol.seed", seed))
        self._versions: deque[tuple[int, Params]] = deque(maxlen=self.window)
        self._versions.append((server.version, server.params))
        self._handed: set[int] = set()  # workers computing at a model from model_for

    def receive(self, arrival: Arrival, delay: int) -> Reply:
        if arrival.worker not in self._handed:
            raise ConfigError("protocol.artificial_delay", self.window,
                              "used with a runtime that asks the protocol which model a worker "
                              "starts at (runtime = 'sim'); this one does not")
        self._handed.discard(arrival.worker)
        before = self.server.version
        reply = super().receive(arrival, delay)
        if self.server.version != before:
            self._versions.append((self.server.version, self.server.params))
        return reply

    def proceed(self) -> None:
        super().proceed()
        self._handed = set(self.in_flight)  # the simulator restored their jobs as handed out

    def model_for(self, worker: int) -> tuple[int, Params]:
        version, params = self._versions[int(self._rng.integers(len(self._versions)))]
        self.in_flight[worker] = version
        self._handed.add(worker)
        return version, params

    def held_models(self) -> int:
        """The window of past models handed out."""
        return self.window

    def state_dict(self) -> dict[str, Any]:
        """Adds the window (its versions and models, copied) and the draws' generator state;
        which workers were handed a model is in-flight bookkeeping, rebuilt by ``begin``."""
        return {**super().state_dict(), "versions": [v for v, _ in self._versions],
                "models": [{k: t.detach().clone() for k, t in p.items()}
                           for _, p in self._versions],
                "rng": self._rng.bit_generator.state}

    def check_state(self, state: Any) -> None:
        super().check_state(state)
        versions = saved.entry(state, "versions", "")
        saved.need(isinstance(versions, list) and 1 <= len(versions) <= self.window and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in versions)
            and versions == sorted(set(versions)), "versions", versions,
            f"1 to artificial_delay = {self.window} increasing versions")
        models = saved.entry(state, "models", "")
        saved.need(isinstance(models, list) and len(models) == len(versions), "models", models,
                   f"one model per saved version ({len(versions)})")
        for i, model in enumerate(models):
            saved.params(model, f"models[{i}]", self.server.params)
        rng, kind = saved.entry(state, "rng", ""), type(self._rng.bit_generator)
        try:
            kind().state = rng
        except (TypeError, ValueError, KeyError) as error:
            saved.need(False, "rng", rng, f"a {kind.__name__} state ({error})")

    def _load_state(self, state: dict[str, Any]) -> None:
        super()._load_state(state)
        like = self.server.params
        self._versions.clear()
        for version, model in zip(state["versions"], state["models"], strict=True):
            # the newest is the server's own model: share it, as the uninterrupted run does
            same = version == self.server.version
            self._versions.append((version, like if same else saved.to_like(model, like)))
        self._rng.bit_generator.state = state["rng"]
        self._handed.clear()


def _seed_of(params: Params) -> int:
    digest = hashlib.blake2b(digest_size=8)
    for name in sorted(params):
        digest.update(name.encode())
        digest.update(params[name].detach().cpu().contiguous().numpy().tobytes())
    return int.from_bytes(digest.digest(), "little") >> 1
