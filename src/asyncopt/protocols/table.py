"""A per-worker gradient table whose average over workers is kept up to date in O(d) per arrival.

Malenia SGD, IA²SGD and Ringleader ASGD all step along the average, over the n workers, of each
worker's mean gradient (Maranjyan & Richtárik, ICLR 2026, arXiv:2509.22860):

    ḡ = (1/n) Σ_i m_i,    m_i = G_i / b_i  (the mean of the b_i gradients worker i sent),

where an empty entry (b_i = 0) counts as m_i = 0 (the protocols step only once every b_i ≥ 1).
Re-summing the table on every step costs O(n·d); with n = 100..1000 workers that dominates the
arrival. Instead both m_i and ḡ move by the same difference d_i = g − m_i (old m_i):

    add(i, g):      m_i ← m_i + d_i / (b_i + 1),   ḡ ← ḡ + d_i / (n (b_i + 1)),   b_i ← b_i + 1
    replace(i, g):  m_i ← g,                       ḡ ← ḡ + d_i / n,               b_i ← 1

Rounding errors of the running ḡ accumulate, so after every n updates ḡ is recomputed exactly
from the m_i: O(n·d) every n updates, O(d) amortized.

Storage is flat: one n × d matrix whose row i is m_i (allocated on the first gradient, its pages
touched only as workers fill their rows; an emptied row is overwritten, never zeroed) and one
d-vector ḡ: the exact re-sum is one matrix reduction, and a flat gradient (a row of a batched
evaluation, :class:`~asyncopt.tree.FlatParams`) updates the table in three vector operations.
:attr:`GradientTable.average` and :meth:`GradientTable.mean` are trees of views into it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from asyncopt import tree
from asyncopt.protocols.base import Protocol
from asyncopt.protocols.state import entry, integer, need
from asyncopt.tree import Params

_CHUNK = 32  # rows summed at a time while the table is not full


class GradientTable:
    """Per-worker running means m_i and counts b_i, and their average ḡ over all n workers."""

    def __init__(self, num_workers: int) -> None:
        self.num_workers = num_workers
        self.counts = [0] * num_workers  # b_i
        self.filled = 0  # workers with b_i ≥ 1
        self.total = 0  # gradients held: Σ_i b_i
        self._rows: Tensor | None = None  # n × d, row i = m_i (0 while b_i = 0)
        self._vector: Tensor | None = None  # ḡ, d
        self._average: Params | None = None  # ḡ as views shaped like the gradients
        self._like: Params | None = None
        self._row_views: list[list[Tensor] | None] = [None] * num_workers  # row i as leaves
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
        """m_i (views into the table), or None while worker i has no gradient in the table."""
        if not self.counts[worker] or self._rows is None or self._like is None:
            return None
        return tree.unflatten(self._rows[worker], self._like)

    def add(self, worker: int, grads: Params) -> None:
        """Accumulate: worker i's entry becomes the mean of its b_i + 1 gradients."""
        count = self.counts[worker] + 1
        self._update(worker, grads, 1.0 / count, count)

    def replace(self, worker: int, grads: Params) -> None:
        """Overwrite: worker i's entry becomes its latest gradient alone (b_i = 1)."""
        self._update(worker, grads, 1.0, 1)

    def clear(self) -> None:
        """Empty every entry (the storage is kept for reuse)."""
        if self._vector is not None:
            self._vector.zero_()
        self.counts = [0] * self.num_workers
        self.filled = self.total = 0
        self._since_exact = 0

    def harmonic_count(self) -> float:
        """((1/n) Σ_i 1/b_i)^{-1}, the harmonic mean of the counts (0 while an entry is empty)."""
        if not self.full:
            return 0.0
        return self.num_workers / math.fsum(1.0 / b for b in self.counts)

    def exact_average(self) -> Params:
        """ḡ recomputed from the entries, in O(n·d) (a new tree)."""
        if self._rows is None or self._like is None:
            raise RuntimeError("the gradient table has never held a gradient")
        return tree.unflatten(self._exact_sum().div_(self.num_workers), self._like)

    def state_dict(self) -> dict[str, Any]:
        """The entries as tensors (copies): ``counts`` b_i, ``means`` the n × d rows m_i (an
        empty entry's row saved as zeros; None before the first gradient), ``average`` the
        running ḡ as it is (its rounding included, so a restored table steps exactly as the
        saved one would) and ``since_exact``, the updates since ḡ was last re-summed."""
        means = average = None
        if self._rows is not None and self._vector is not None:
            means = self._rows.detach().clone()
            empty = torch.tensor([b == 0 for b in self.counts], device=means.device)
            means[empty] = 0  # never read (an empty row is overwritten), saved clean
            average = self._vector.detach().clone()
        return {"counts": torch.tensor(self.counts, dtype=torch.int64), "means": means,
                "average": average, "since_exact": self._since_exact}

    def check_state(self, state: Any, like: Params, path: str) -> None:
        """ConfigError naming the first field of a saved table that does not fit n workers and
        gradients shaped like ``like`` (the model)."""
        n, size = self.num_workers, tree.numel(like)
        dtype = next(iter(like.values())).dtype
        counts = entry(state, "counts", path)
        need(isinstance(counts, Tensor) and counts.shape == (n,)
             and counts.dtype == torch.int64 and bool((counts >= 0).all()),
             f"{path}.counts", counts, f"an int64 tensor of {n} counts >= 0")
        means, average = entry(state, "means", path), entry(state, "average", path)
        if means is None and average is None:
            need(not bool(counts.any()), f"{path}.means", means,
                 "a tensor: the counts say the table holds gradients")
        else:
            for key, value, shape in (("means", means, (n, size)), ("average", average, (size,))):
                need(isinstance(value, Tensor) and tuple(value.shape) == shape
                     and value.dtype == dtype, f"{path}.{key}", value,
                     f"a tensor of shape {shape} and dtype {dtype} ({n} workers, a model of "
                     f"{size} numbers)")
        integer(entry(state, "since_exact", path), f"{path}.since_exact", 0, n - 1)

    def load_state_dict(self, state: dict[str, Any], like: Params) -> None:
        """Restore a checked :meth:`state_dict` into this table (gradients shaped like
        ``like``, on its device)."""
        self.counts = [int(b) for b in state["counts"].tolist()]
        self.filled = sum(1 for b in self.counts if b)
        self.total = sum(self.counts)
        self._since_exact = int(state["since_exact"])
        self._row_views = [None] * self.num_workers
        if state["means"] is None:
            self._rows = self._vector = self._average = self._like = None
            return
        # shapes only: expanded scalars, so that the table keeps no model alive
        self._allocate({k: torch.empty((), dtype=v.dtype, device=v.device).expand(v.shape)
                        for k, v in like.items()})
        assert self._rows is not None and self._vector is not None
        self._rows.copy_(state["means"])
        self._vector.copy_(state["average"])

    def _exact_sum(self, out: Tensor | None = None) -> Tensor:
        """Σ_i m_i over the filled rows (an empty row holds stale values or none at all), as
        1ᵀ·rows: a matrix product, several times faster than ``sum(0)`` on CPU."""
        assert self._rows is not None
        total = torch.empty_like(self._rows[0]) if out is None else out
        if self.full:
            ones = self._rows.new_ones(1, len(self._rows))
            return torch.mm(ones, self._rows, out=total.view(1, -1)).view(-1)
        filled = torch.tensor([i for i, b in enumerate(self.counts) if b], dtype=torch.int64)
        total.zero_()
        for chunk in filled.split(_CHUNK):  # a bounded copy, not one of the whole table
            rows = self._rows.index_select(0, chunk)
            total.add_(torch.mm(rows.new_ones(1, len(rows)), rows).view(-1))
        return total

    def _allocate(self, grads: Params) -> None:
        size = tree.numel(grads)
        first = next(iter(grads.values()))
        self._rows = torch.empty(self.num_workers, size, dtype=first.dtype, device=first.device)
        self._vector = torch.zeros(size, dtype=first.dtype, device=first.device)
        self._like = {k: v.detach() for k, v in grads.items()}
        self._average = tree.unflatten(self._vector, self._like)

    def _update(self, worker: int, grads: Params, weight: float, count: int) -> None:
        """m_i ← m_i + w·(g − m_i), ḡ ← ḡ + w·(g − m_i)/n (an empty m_i is 0), b_i ← count."""
        if self._rows is None:
            self._allocate(grads)
        assert self._rows is not None and self._vector is not None
        n, row = self.num_workers, self._rows[worker]
        # a flat gradient (a batched evaluation's row) is one vector; otherwise go leaf by
        # leaf into views of the row, which spares flattening (one more pass over d)
        if isinstance(grads, tree.FlatParams):
            g, mean, average = [grads.vector], [row], [self._vector]
        else:
            assert self._like is not None and self._average is not None
            g = list(grads.values())
            mean = self._row_views[worker]
            if mean is None:
                mean = self._row_views[worker] = list(tree.unflatten(row, self._like).values())
            average = list(self._average.values())
        if not self.counts[worker]:
            torch._foreach_copy_(mean, g)
            torch._foreach_add_(average, g, alpha=1.0 / n)
            self.filled += 1
        else:
            difference = torch._foreach_sub(g, mean)
            if weight == 1.0:
                torch._foreach_copy_(mean, g)  # exactly g, not m_i + (g − m_i)
            else:
                torch._foreach_add_(mean, difference, alpha=weight)
            torch._foreach_add_(average, difference, alpha=weight / n)
        self.total += count - self.counts[worker]
        self.counts[worker] = count
        self._since_exact += 1
        if self._since_exact >= n:
            self._exact_sum(out=self._vector).div_(n)
            self._since_exact = 0


class TableProtocol(Protocol):
    """A protocol that keeps one :class:`GradientTable` in ``self.table`` (IA²SGD, Malenia):
    its checkpoint state is the base protocol's plus the table's."""

    table: GradientTable

    def held_models(self) -> int:
        """The table: one row per worker, and its average."""
        return self.num_workers + 1

    def state_dict(self) -> dict[str, Any]:
        """Adds the gradient table (:meth:`GradientTable.state_dict`)."""
        return {**super().state_dict(), "table": self.table.state_dict()}

    def check_state(self, state: Any) -> None:
        super().check_state(state)
        self.table.check_state(entry(state, "table", ""), self.server.params, "table")

    def _load_state(self, state: dict[str, Any]) -> None:
        super()._load_state(state)
        self.table.load_state_dict(state["table"], self.server.params)
