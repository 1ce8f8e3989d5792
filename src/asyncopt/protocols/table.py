"""A per-worker gradient table whose average over workers is kept up to date in O(d) per arrival.

Malenia SGD, IA²SGD and Ringleader ASGD all step along the average, over the n workers, of each
worker's mean gradient (algorithms.md, paper 4):

    ḡ = (1/n) Σ_i m_i,    m_i = G_i / b_i  (the mean of the b_i gradients worker i sent),

where an empty entry (b_i = 0) counts as m_i = 0 (the protocols step only once every b_i ≥ 1).
Re-summing the table on every step costs O(n·d); with n = 100..1000 workers that dominates the
arrival. Instead both m_i and ḡ move by the same difference d_i = g − m_i (old m_i):

    add(i, g):      m_i ← m_i + d_i / (b_i + 1),   ḡ ← ḡ + d_i / (n (b_i + 1)),   b_i ← b_i + 1
    replace(i, g):  m_i ← g,                       ḡ ← ḡ + d_i / n,               b_i ← 1

Rounding errors of the running ḡ accumulate, so after every n updates ḡ is recomputed exactly
from the m_i: O(n·d) every n updates, O(d) amortized. Storage is one parameter-sized tree per
worker that has ever sent a gradient, reused after :meth:`GradientTable.clear`.
"""

from __future__ import annotations

import math

import torch

from asyncopt import tree
from asyncopt.tree import Params


class GradientTable:
    """Per-worker running means m_i and counts b_i, and their average ḡ over all n workers."""

    def __init__(self, num_workers: int) -> None:
        self.num_workers = num_workers
        self.counts = [0] * num_workers  # b_i
        self.filled = 0  # workers with b_i ≥ 1
        self.total = 0  # gradients held: Σ_i b_i
        self._means: list[Params | None] = [None] * num_workers
        self._average: Params | None = None
        self._since_exact = 0

    @property
    def full(self) -> bool:
        """Every worker has at least one gradient in the table."""
        return self.filled == self.num_workers

    @property
    def average(self) -> Params:
        """ḡ = (1/n) Σ_i m_i, maintained incrementally (read-only: do not write into it)."""
        if self._average is None:
            raise RuntimeError("the gradient table has never held a gradient")
        return self._average

    def mean(self, worker: int) -> Params | None:
        """m_i, or None while worker i has no gradient in the table."""
        return self._means[worker] if self.counts[worker] else None

    def add(self, worker: int, grads: Params) -> None:
        """Accumulate: worker i's entry becomes the mean of its b_i + 1 gradients."""
        count = self.counts[worker] + 1
        self._update(worker, grads, 1.0 / count, count)

    def replace(self, worker: int, grads: Params) -> None:
        """Overwrite: worker i's entry becomes its latest gradient alone (b_i = 1)."""
        self._update(worker, grads, 1.0, 1)

    def clear(self) -> None:
        """Empty every entry (the tensors are kept for reuse)."""
        self.counts = [0] * self.num_workers
        self.filled = self.total = 0
        self._since_exact = 0
        if self._average is not None:
            torch._foreach_zero_(list(self._average.values()))

    def harmonic_count(self) -> float:
        """((1/n) Σ_i 1/b_i)^{-1}, the harmonic mean of the counts (0 while an entry is empty)."""
        if not self.full:
            return 0.0
        return self.num_workers / math.fsum(1.0 / b for b in self.counts)

    def exact_average(self) -> Params:
        """ḡ recomputed from the entries, in O(n·d)."""
        if self._average is None:
            raise RuntimeError("the gradient table has never held a gradient")
        out = tree.zeros_like(self._average)
        for worker, mean in enumerate(self._means):
            if mean is not None and self.counts[worker]:
                tree.add_(out, mean, alpha=1.0 / self.num_workers)
        return out

    def _update(self, worker: int, grads: Params, weight: float, count: int) -> None:
        """m_i ← m_i + w·(g − m_i), ḡ ← ḡ + w·(g − m_i)/n (an empty m_i is 0), b_i ← count."""
        n = self.num_workers
        if self._average is None:
            self._average = tree.zeros_like(grads)
        mean = self._means[worker]
        if not self.counts[worker]:
            if mean is None:
                self._means[worker] = tree.clone(grads)
            else:
                tree.copy_(mean, grads)
            tree.add_(self._average, grads, alpha=1.0 / n)
            self.filled += 1
        else:
            assert mean is not None
            difference = tree.add(grads, mean, alpha=-1.0)
            if weight == 1.0:
                tree.copy_(mean, grads)  # exactly g, not m_i + (g − m_i)
            else:
                tree.add_(mean, difference, alpha=weight)
            tree.add_(self._average, difference, alpha=weight / n)
        self.total += count - self.counts[worker]
        self.counts[worker] = count
        self._since_exact += 1
        if self._since_exact >= n:
            self._average = self.exact_average()
            self._since_exact = 0
