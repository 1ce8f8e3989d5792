"""Samples kept as CSR rows (LIBSVM data): a minibatch is densified, the whole set never is.

A wide sparse LIBSVM set (rcv1: 20k samples × 47k features at 0.16 % density) takes 3.8 GB
dense and about 12 MB as compressed sparse rows. :class:`SparseRows` holds such a matrix as
three plain tensors (row pointers, column indices, values), so it pickles, moves to a device
and travels to worker processes and Ray actors like any tensor, and it answers the few
operations :class:`~asyncopt.problems.supervised.SupervisedProblem` asks of its inputs, with
one convention that the problem code already follows:

* ``X[index]`` (a slice or an index tensor) is a *subset* that stays sparse: the shards, the
  evaluation chunks, the train/test split;
* ``X.index_select(0, picks)`` is a *minibatch*: a dense ``len(picks) × d`` tensor, exactly the
  rows of the dense matrix (the same float32 values, zeros where the file has no entry), so
  every model and every gradient path computes on it as on dense data, bit for bit.

torch's own sparse CSR tensors cannot do this (no ``index_select`` and no row slicing in torch
2.13, and a "beta" warning on creation), and a sparse product would change the numbers of the
closed-form and autograd paths; densifying B rows costs O(B·d), small beside the model's
O(B·d·C) forward product. :func:`dense` turns either kind into a dense tensor where a whole
(small) block is needed at once (an evaluation chunk, the dry run's samples).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor


@dataclass
class SparseRows:
    """``len(crow) - 1`` rows of width ``width`` in CSR form: row r's entries are
    ``col[crow[r]:crow[r+1]]`` (0-based, increasing) with ``values`` at the same positions."""

    crow: Tensor    # int64, n + 1 row pointers, crow[0] = 0
    col: Tensor     # int64, one per stored entry
    values: Tensor  # float32, one per stored entry
    width: int

    @classmethod
    def from_scipy(cls, matrix: Any) -> SparseRows:
        """From a ``scipy.sparse`` matrix (any format; converted to CSR with sorted indices)."""
        csr = matrix.tocsr()
        csr.sort_indices()
        return cls(torch.from_numpy(csr.indptr.astype(np.int64)),
                   torch.from_numpy(csr.indices.astype(np.int64)),
                   torch.from_numpy(np.ascontiguousarray(csr.data, dtype=np.float32)),
                   int(csr.shape[1]))

    def __len__(self) -> int:
        return len(self.crow) - 1

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), self.width))

    @property
    def ndim(self) -> int:
        return 2

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def nbytes(self) -> int:
        return self.crow.nbytes + self.col.nbytes + self.values.nbytes

    def __getitem__(self, index: slice | Tensor | np.ndarray | Sequence[int]) -> SparseRows:
        """The rows ``index`` (a slice, or 1-D integer indices, negative ones from the end),
        still sparse."""
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                stop = max(start, stop)
                first, last = int(self.crow[start]), int(self.crow[stop])
                return SparseRows(self.crow[start:stop + 1] - first, self.col[first:last],
                                  self.values[first:last], self.width)
            index = torch.arange(start, stop, step, device=self.crow.device)
        lengths, _, positions = self._entries(index)
        crow = torch.zeros(len(lengths) + 1, dtype=torch.int64, device=self.crow.device)
        torch.cumsum(lengths, 0, out=crow[1:])
        return SparseRows(crow, self.col[positions], self.values[positions], self.width)

    def index_select(self, dim: int, index: Tensor) -> Tensor:
        """The rows ``index`` as a dense ``len(index) × width`` tensor (a minibatch)."""
        if dim != 0:
            raise ValueError("SparseRows.index_select selects rows only (dim = 0)")
        lengths, rows, positions = self._entries(index)
        out = torch.zeros(len(lengths), self.width, dtype=self.dtype, device=self.device)
        out[rows, self.col[positions]] = self.values[positions]
        return out

    def to_dense(self) -> Tensor:
        """All rows, dense."""
        return self.index_select(0, torch.arange(len(self), device=self.crow.device))

    def split(self, size: int | Sequence[int]) -> list[SparseRows]:
        """Consecutive blocks of ``size`` rows (the last may be shorter), or of the given
        sizes, as ``Tensor.split`` cuts the first axis."""
        sizes = ([size] * (len(self) // size) + ([len(self) % size] if len(self) % size else [])
                 if isinstance(size, int) else list(size))
        bounds = np.cumsum([0, *sizes]).tolist()
        return [self[start:stop] for start, stop in itertools.pairwise(bounds)]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SparseRows:
        return SparseRows(*(t.to(device, non_blocking=non_blocking)
                            for t in (self.crow, self.col, self.values)), self.width)

    def _entries(self, index: Any) -> tuple[Tensor, Tensor, Tensor]:
        """For the rows ``index``: their lengths, and for each of their stored entries in order,
        its row among ``index`` and its position in ``col``/``values``."""
        index = torch.as_tensor(index, dtype=torch.int64, device=self.crow.device)
        if index.ndim != 1:
            raise IndexError(f"SparseRows takes 1-D row indices, not shape {tuple(index.shape)}")
        index = torch.where(index < 0, index + len(self), index)
        starts = self.crow[index]
        lengths = self.crow[index + 1] - starts
        total = int(lengths.sum())
        rows = torch.repeat_interleave(torch.arange(len(index), device=index.device), lengths,
                                       output_size=total)
        shift = starts - (torch.cumsum(lengths, 0) - lengths)  # entry j of row r: its position
        return lengths, rows, torch.arange(total, device=index.device) + shift[rows]


def dense(X: Tensor | SparseRows) -> Tensor:
    """``X`` as a dense tensor (unchanged when it is one)."""
    return X.to_dense() if isinstance(X, SparseRows) else X


def cat(parts: Sequence[Tensor | SparseRows]) -> Tensor | SparseRows:
    """``torch.cat`` along the rows, for dense tensors or for :class:`SparseRows` alike."""
    if not parts or not isinstance(parts[0], SparseRows):
        return torch.cat(list(parts))  # type: ignore[arg-type]
    offsets = np.cumsum([0, *(len(p.col) for p in parts)])[:-1].tolist()
    crow = torch.cat([parts[0].crow[:1], *(p.crow[1:] + offset
                                           for p, offset in zip(parts, offsets, strict=True))])
    return SparseRows(crow, torch.cat([p.col for p in parts]),
                      torch.cat([p.values for p in parts]), parts[0].width)
