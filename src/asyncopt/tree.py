"""Parameters as a flat, ordered ``dict[str, Tensor]`` and the few operations on them.

Every part of asyncopt (rules, protocols, runtimes, problems) passes parameters, gradients and
updates in this one form: the keys are the names of ``nn.Module.named_parameters()`` (or any
names a problem chooses), the order is the insertion order and is the same for all three trees
of one model. The helpers below use ``torch._foreach_*`` kernels, which keep the per-tensor
Python overhead low for models with many small tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

Params = dict[str, Tensor]


class FlatParams(dict):
    """A Params whose leaves are consecutive views, in key order, of one 1-D ``vector`` (what
    :func:`unflatten` returns): :func:`flatten` and :func:`all_finite` then cost one operation.
    Its leaves may be changed in place, never replaced."""

    __slots__ = ("vector",)

    def __init__(self, vector: Tensor, leaves: Params) -> None:
        super().__init__(leaves)
        self.vector = vector

    def __reduce__(self) -> tuple:
        # unpickled leaves must be views of the unpickled vector again, not copies
        return _unflatten_shapes, (self.vector, [(k, v.shape) for k, v in self.items()])


def map_tree(fn: Callable[..., Tensor], tree: Params, *rest: Params) -> Params:
    """Apply ``fn`` leaf by leaf: ``{k: fn(tree[k], rest[0][k], ...)}``."""
    return {k: fn(v, *(r[k] for r in rest)) for k, v in tree.items()}


def zeros_like(tree: Params) -> Params:
    return {k: torch.zeros_like(v) for k, v in tree.items()}


def clone(tree: Params) -> Params:
    """A detached copy that later in-place changes of ``tree`` do not reach."""
    return {k: v.detach().clone() for k, v in tree.items()}


def add(a: Params, b: Params, alpha: float = 1.0) -> Params:
    """``a + alpha * b`` as a new tree."""
    return dict(zip(a, torch._foreach_add(list(a.values()), list(b.values()), alpha=alpha),
                    strict=True))


def scale(tree: Params, factor: float) -> Params:
    """``factor * tree`` as a new tree."""
    return dict(zip(tree, torch._foreach_mul(list(tree.values()), factor), strict=True))


def add_(target: Params, other: Params, alpha: float = 1.0) -> None:
    """In place: ``target += alpha * other``."""
    torch._foreach_add_(list(target.values()), list(other.values()), alpha=alpha)


def copy_(target: Params, source: Params) -> None:
    """In place: overwrite every leaf of ``target`` with ``source`` (shapes must match)."""
    for k, v in target.items():
        v.copy_(source[k])


def mean(trees: Sequence[Params], weights: Sequence[float] | None = None) -> Params:
    """The (weighted) average ``Σ w_j tree_j / Σ w_j`` of several trees with the same keys."""
    if not trees:
        raise ValueError("mean of an empty list of trees")
    weights = [1.0] * len(trees) if weights is None else list(weights)
    total = float(sum(weights))
    out = scale(trees[0], weights[0] / total)
    for tree, w in zip(trees[1:], weights[1:], strict=True):
        add_(out, tree, alpha=w / total)
    return out


def sq_norm(tree: Params) -> float:
    """``‖tree‖²`` summed over all leaves."""
    if not tree:
        return 0.0
    norms = torch._foreach_norm(list(tree.values()))
    return float(torch.stack(norms).square().sum())


def norm(tree: Params) -> float:
    return sq_norm(tree) ** 0.5


def all_finite(tree: Params) -> bool:
    """True when no leaf holds NaN or ±Inf.

    Checked through one sum per leaf (NaN and ±Inf propagate through sums), about 4× cheaper
    than ``isfinite().all()`` on small tensors; a leaf whose sum overflows counts as not finite.
    """
    if isinstance(tree, FlatParams):
        return math.isfinite(float(tree.vector.sum()))
    return all(math.isfinite(float(v.sum())) for v in tree.values())


def numel(tree: Params) -> int:
    return sum(v.numel() for v in tree.values())


def flatten(tree: Params) -> Tensor:
    """All leaves concatenated into one 1-D tensor, in key order (a FlatParams' own vector)."""
    if isinstance(tree, FlatParams):
        return tree.vector
    return torch.cat([v.reshape(-1) for v in tree.values()])


def unflatten(vector: Tensor, like: Params) -> FlatParams:
    """Inverse of :func:`flatten`: cut ``vector`` into leaves (views) shaped like ``like``."""
    sizes = [v.numel() for v in like.values()]
    if sum(sizes) != vector.numel():
        raise ValueError(f"vector has {vector.numel()} elements, the tree needs {sum(sizes)}")
    return FlatParams(vector, {k: piece.view(v.shape) for (k, v), piece
                               in zip(like.items(), vector.split_with_sizes(sizes), strict=True)})


def _unflatten_shapes(vector: Tensor, shapes: list[tuple[str, torch.Size]]) -> FlatParams:
    return unflatten(vector, {k: vector.new_empty(()).expand(shape) for k, shape in shapes})


def same_structure(a: Params, b: Params) -> bool:
    return list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)


def stack(trees: Iterable[Params]) -> Params:
    """Stack leaf by leaf along a new leading dimension (for batched evaluation)."""
    trees = list(trees)
    return {k: torch.stack([t[k] for t in trees]) for k in trees[0]}
