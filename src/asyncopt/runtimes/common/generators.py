"""The workers' minibatch generators, the same in every runtime: worker i draws the same stream
of minibatches in the simulator, in a worker process and in a Ray actor."""

from __future__ import annotations

import numpy as np
import torch


def worker_generators(seed: int, num_workers: int) -> list[torch.Generator]:
    """One torch generator per worker (minibatch sampling), seeded from (seed, worker)."""
    generators = []
    for worker in range(num_workers):
        generator = torch.Generator()
        state = np.random.SeedSequence([seed, worker]).generate_state(2, dtype=np.uint32)
        generator.manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
        generators.append(generator)
    return generators
