"""Which parameter tensors a lock-free step updates: the whole model, a partition, a random subset.

A *block* is a list of parameter names (leaves of the params dict). A lock-free worker computes
the full stochastic gradient ``g`` and steps only on its block ``B``:

    x_B ← x_B + u_B,   (u_B, state) = rule.update(g_B, state, x)

where ``g_B`` is the sub-dict of ``g`` on ``B``; per-leaf rule state is looked up by the keys of
``g_B``, so only the block's part of it changes, while whole-rule state (step counters,
AdaGrad-Norm's scalar accumulator, the norm estimate of inexact normalization) is shared by every
block of every worker.

* ``"whole"``: ``B`` = every leaf — Hogwild! (Niu, Recht, Ré & Wright, NeurIPS 2011).
* ``"partition"``: PASSM+ (Kungurtsev, Egan, Chatterjee & Alistarh, AAAI 2021). Worker i owns the
  i-th of ``n`` contiguous runs of leaves, balanced by element count (:func:`partition`); while the
  shared version is below ``warmup_steps`` it takes full-model steps, then it alternates a full
  step and a step on its own partition.
* ``"random"``: Gratton & Toint (2026), random block-coordinate steps. Each step draws
  ``max(1, round(block_fraction · L))`` of the ``L`` leaves without replacement from the worker's
  own seeded generator; blocks of different workers overlap by construction.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from asyncopt.errors import check
from asyncopt.runtimes.common.layout import partition

BLOCKS = ("whole", "partition", "random")


def check_blocks(blocks: str, num_leaves: int, num_workers: int) -> None:
    """Refuse a partition with fewer tensors than workers (a worker would own nothing)."""
    check(blocks != "partition" or num_workers <= num_leaves, "runtime_options.blocks", blocks,
          f"'partition' needs at least as many parameter tensors as workers (the model has "
          f"{num_leaves}, there are {num_workers} workers); use 'whole' or 'random'")


def block_generator(seed: int, worker: int) -> torch.Generator:
    """The worker's generator for random blocks, independent of its minibatch generator."""
    state = np.random.SeedSequence([seed, worker, 1]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


class BlockChooser:
    """Answers, step after step, the block (kind, leaf names) of one worker."""

    def __init__(self, blocks: str, names: Sequence[str], sizes: Sequence[int], worker: int,
                 num_workers: int, *, seed: int, block_fraction: float,
                 warmup_steps: int) -> None:
        self.blocks, self.names = blocks, list(names)
        self.warmup_steps = warmup_steps
        self._alternate = False
        if blocks == "partition":
            self.own = [self.names[j] for j in partition(sizes, num_workers)[worker]]
        if blocks == "random":
            self.size = max(1, round(block_fraction * len(self.names)))
            self.generator = block_generator(seed, worker)

    def next(self, version: int) -> tuple[str, list[str]]:
        """The block of the next step, taken at shared ``version``."""
        if self.blocks == "random":
            picks = torch.randperm(len(self.names), generator=self.generator)[:self.size]
            return "random", [self.names[j] for j in sorted(picks.tolist())]
        if self.blocks == "partition" and version >= self.warmup_steps:
            self._alternate = not self._alternate
            if not self._alternate:
                return "partition", self.own
        return "whole", self.names
