"""How a model is cut into K blocks for K block servers, and a partition of tensors by size.

:func:`partition` splits whole tensors into contiguous runs balanced by element count (PASSM+'s
partitioning, Kungurtsev et al. 2021; the lock-free ``partition`` blocks use it too).
:class:`Layout` is the one cut of ``runtime_options.servers = K`` in every runtime, by
``runtime_options.layout``:

* ``"tensors"`` (the default): K contiguous runs of whole tensors, balanced by size. Every rule
  sees each tensor whole, so per-tensor rules (a normalization per tensor, Newton–Schulz) act as
  with one server; the balance is only as good as the tensors' sizes allow, and K is at most the
  number of tensors.
* ``"ranges"``: K contiguous ranges of the flat model of ⌊N/K⌋ or ⌈N/K⌉ elements, exactly
  balanced; a range may cut a tensor, whose pieces a rule then sees as flat vectors under the
  tensor's name (nothing changes for per-element rules; a per-tensor rule acts on each piece).

Either way whole-model rule state (step counters, AdaGrad-Norm's accumulator, a normalization's
norm) is kept per block.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from asyncopt import tree
from asyncopt.errors import check, check_choice
from asyncopt.tree import Params


def partition(sizes: Sequence[int], parts: int) -> list[range]:
    """Split leaves ``0..L−1`` (sizes ``s_j``) into ``parts`` contiguous non-empty runs that
    minimize the largest run's total size ``max_i Σ_{j∈run i} s_j`` (the linear partition problem,
    solved exactly by dynamic programming in O(parts · L²); L is the number of tensors)."""
    count = len(sizes)
    if not 1 <= parts <= count:
        raise ValueError(f"cannot split {count} tensors into {parts} non-empty parts")
    prefix = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
    # best[p][j]: the smallest largest-part size splitting the first j leaves into p parts
    best = np.full((parts + 1, count + 1), np.iinfo(np.int64).max, dtype=np.int64)
    cut = np.zeros((parts + 1, count + 1), dtype=np.int64)
    best[0][0] = 0
    for p in range(1, parts + 1):
        for j in range(p, count + 1):
            for i in range(p - 1, j):
                if best[p - 1][i] == np.iinfo(np.int64).max:
                    continue
                value = max(int(best[p - 1][i]), int(prefix[j] - prefix[i]))
                if value < best[p][j]:
                    best[p][j], cut[p][j] = value, i
    runs, end = [], count
    for p in range(parts, 0, -1):
        start = int(cut[p][end])
        runs.append(range(start, end))
        end = start
    return runs[::-1]


Shapes = dict[str, tuple[tuple[int, ...], torch.dtype]]


CUTS = ("tensors", "ranges")


class Layout:
    """The K contiguous ranges ``[bounds[b], bounds[b+1])`` of the flat model, cut by ``cut``
    (see the module docstring), and the pieces (name → shape) of the tensors each one holds."""

    def __init__(self, params: Params, servers: int, cut: str = "tensors") -> None:
        check_choice("runtime_options.layout", cut, CUTS)
        total = tree.numel(params)
        if cut == "tensors":
            check(servers <= len(params), "runtime_options.servers", servers,
                  f"at most the number of parameter tensors ({len(params)}) with "
                  f"runtime_options.layout = 'tensors' (each server owns whole tensors); "
                  f"layout = 'ranges' cuts the flat model into equal ranges instead")
            sizes = [leaf.numel() for leaf in params.values()]
            starts = np.cumsum([0, *sizes]).tolist()
            self.bounds = [starts[run.start] for run in partition(sizes, servers)] + [total]
        else:
            check(servers <= total, "runtime_options.servers", servers,
                  f"at most the number of parameters ({total}): each server owns at least one")
            self.bounds = [total * b // servers for b in range(servers + 1)]
        self.cut = cut
        self.dtype = next(iter(params.values())).dtype
        self.pieces: list[Shapes] = []
        for lo, hi in zip(self.bounds, self.bounds[1:], strict=False):
            pieces, start = {}, 0
            for name, leaf in params.items():
                end = start + leaf.numel()
                if start < hi and end > lo:  # the tensor overlaps the range
                    whole = lo <= start and end <= hi
                    shape = tuple(leaf.shape) if whole else (min(hi, end) - max(lo, start),)
                    pieces[name] = (shape, leaf.dtype)
                start = end
            self.pieces.append(pieces)

    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self.bounds, self.bounds[1:], strict=False))


def like(shapes: Shapes) -> Params:
    """Empty tensors of ``shapes``: the layout that :func:`asyncopt.tree.unflatten` cuts by."""
    return {k: torch.empty(shape, dtype=dtype) for k, (shape, dtype) in shapes.items()}
