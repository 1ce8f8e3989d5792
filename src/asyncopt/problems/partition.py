"""Splitting a dataset across workers: who holds which samples.

A partition is a list of ``num_workers`` integer index arrays into the training set; worker i's
objective f_i is the mean loss over its shard. Six schemes:

* ``"iid"`` — a seeded shuffle cut into near-equal shards (sizes differ by at most one), so every
  f_i is an unbiased sample of the same distribution (homogeneous data).
* ``"dirichlet"`` — label skew, as in the federated-learning literature and the Ringleader ASGD
  experiments (Maranjyan & Richtárik 2026): for each class c, proportions p_c ~ Dirichlet(α·1_n)
  over the n workers, and the shuffled samples of class c are cut at the cumulative proportions.
  Small α (0.1) gives each worker a few classes; large α tends to iid. Shard sizes vary.
* ``"dirichlet_equal"`` — label skew with **equal-size** shards, the clients of the Ringleader
  ASGD experiments, in the usual client-wise construction (written before the authors' code
  was found; ``"dirichlet_equal_rounded"`` is theirs): every worker takes m = ⌊N/n⌋ samples, the
  N − n·m left over are unused. Worker i, in a seeded random order of workers, draws its label
  proportions
  q_i ~ Dirichlet(α·1_C) over the C classes and takes its m samples class by class: counts
  ~ Multinomial(m, q_i restricted to the classes that still have samples, renormalized), each
  class's samples taken from its own shuffled pool; when a class runs out the draw is repeated
  for the missing samples (uniform over the remaining classes if q_i puts no mass on them).
  Every shard has exactly m samples; the last workers' label mix is what the others left.
* ``"dirichlet_equal_rounded"`` — the equal-size clients of the Ringleader ASGD authors'
  ``prep_data.py`` (vectozavr/ringmaster-lmo at d175d78, ``code/experiments/``; Maranjyan &
  Richtárik, ICLR 2026, "Experiment setup"), step for step, so that the same seed gives their
  partition.
  First the data are trimmed to a multiple of n (``reduce_dataset_to_multiple``, always with
  their seed :data:`TRIM_SEED`): the r = N mod n dropped samples are shared among the classes in
  proportion to their sizes, floor plus largest remainder, and drawn without replacement within
  each class. Then, with ``default_rng(seed)``, each class's pool is shuffled and the clients
  j = 0..n−1, in index order, draw p_j ~ Dirichlet(α·1_C) and take m = N/n samples: class c
  gives ⌊p_jc·m⌋ plus one for the m − Σ⌊p_j·m⌋ largest remainders, from the front of its pool;
  a class that runs short is topped up from the classes with the most samples left. Each
  shard is then shuffled and returned in that order (not sorted). Every sample is used once.
* ``"sorted"`` — samples sorted by label (ties in a seeded random order), cut into contiguous
  near-equal shards: the most heterogeneous split, each worker sees one or two classes.
* ``"given"`` — the user's own index lists, one per worker. They are checked to be in range and
  non-empty; overlaps (a sample on several workers) and samples on no worker are allowed, since
  shared or held-back data are legitimate experiment designs.

No worker is ever left without data. For ``"dirichlet"`` an empty worker can happen (a draw may
give every class's mass to other workers); each empty worker then receives one sample moved from
the currently largest shard, drawn with the same seeded generator. This changes at most
``num_workers`` samples and keeps the label skew otherwise untouched (resampling the whole draw
until no shard is empty can loop for a very long time when workers are many and α is small).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from asyncopt.errors import ConfigError, check, check_choice, check_float, check_int

SCHEMES = ("iid", "dirichlet", "dirichlet_equal", "dirichlet_equal_rounded", "sorted", "given")
TRIM_SEED = 123456
"""The seed of the authors' trim to a multiple of n (``tune_and_plot_single_seed.py``)."""


def partition(labels: np.ndarray | None, num_samples: int, num_workers: int, scheme: str, *,
              alpha: float = 0.5, seed: int,
              indices: Sequence[Sequence[int]] | None = None) -> list[np.ndarray]:
    """Split samples ``0..num_samples-1`` into ``num_workers`` shards by ``scheme``.

    ``labels`` (integer class of each sample) is needed by ``"dirichlet"`` and ``"sorted"``;
    ``indices`` (one index list per worker) by ``"given"``. Returns int64 arrays, each sorted
    for ``"iid"`` / ``"dirichlet"`` / ``"dirichlet_equal"`` / ``"sorted"``, in the authors'
    order for ``"dirichlet_equal_rounded"``, as given otherwise. Same seed, same shards.
    """
    scheme = check_choice("partition", scheme, SCHEMES)
    num_samples = check_int("num_samples", num_samples, 1)
    num_workers = check_int("num_workers", num_workers, 1)
    if scheme == "given":
        return _given(indices, num_samples, num_workers)
    equal = "equal-size clients of at least one sample" if scheme.startswith(
        "dirichlet_equal") else "no worker left without data"
    check(num_workers <= num_samples, "num_workers", num_workers,
          f"at most the number of training samples ({num_samples}), for {equal}")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        return [np.sort(s) for s in np.array_split(rng.permutation(num_samples), num_workers)]
    labels = _labels(labels, num_samples, scheme)
    if scheme == "sorted":
        shuffled = rng.permutation(num_samples)
        order = shuffled[np.argsort(labels[shuffled], kind="stable")]
        return [np.sort(s) for s in np.array_split(order, num_workers)]
    alpha = check_float("alpha", alpha, 0.0, strict_minimum=True)
    if scheme == "dirichlet_equal":
        return _dirichlet_equal(labels, num_workers, alpha, rng)
    if scheme == "dirichlet_equal_rounded":
        kept = _trim_to_multiple(labels, num_workers, np.random.default_rng(TRIM_SEED))
        return [kept[s] for s in _dirichlet_rounded(labels[kept], num_workers, alpha, rng)]
    return _dirichlet(labels, num_workers, alpha, rng)


def _dirichlet_equal(labels: np.ndarray, num_workers: int, alpha: float,
                     rng: np.random.Generator) -> list[np.ndarray]:
    classes = np.unique(labels)
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    taken = np.zeros(len(classes), dtype=np.int64)  # samples of each class already given out
    left = np.array([len(pool) for pool in pools]) - taken
    size = len(labels) // num_workers
    shards: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * num_workers
    for worker in rng.permutation(num_workers):
        proportions = rng.dirichlet(np.full(len(classes), alpha))
        pieces, need = [], size
        while need > 0:
            weights = np.where(left > 0, proportions, 0.0)
            if weights.sum() <= 0.0:
                weights = (left > 0).astype(float)
            counts = np.minimum(rng.multinomial(need, weights / weights.sum()), left)
            for c in np.flatnonzero(counts):
                pieces.append(pools[c][taken[c]:taken[c] + counts[c]])
            taken += counts
            left -= counts
            need -= int(counts.sum())
        shards[worker] = np.sort(np.concatenate(pieces)).astype(np.int64)
    return shards


def rounded_counts(proportions: np.ndarray, total: int) -> np.ndarray:
    """⌊p·total⌋, plus one for the total − Σ⌊p·total⌋ largest remainders (ties in numpy's
    ``argsort`` order, as the authors' ``rounded_counts``): integers summing to ``total``."""
    raw = proportions * total
    counts = np.floor(raw).astype(np.int64)
    short = total - int(counts.sum())
    if short > 0:
        counts[np.argsort(-(raw - counts))[:short]] += 1
    return counts


def _trim_to_multiple(labels: np.ndarray, num_workers: int,
                      rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of the samples kept after dropping N mod n of them, per class in
    proportion to the class sizes (the authors' ``reduce_dataset_to_multiple``)."""
    excess = len(labels) % num_workers
    if excess == 0:
        return np.arange(len(labels))
    members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    sizes = np.array([len(m) for m in members])
    drops = rounded_counts(sizes / sizes.sum(), excess)
    dropped = [rng.choice(m, size=k, replace=False)
               for m, k in zip(members, drops, strict=True) if k > 0]
    keep = np.ones(len(labels), dtype=bool)
    keep[np.concatenate(dropped)] = False
    return np.flatnonzero(keep)


def _dirichlet_rounded(labels: np.ndarray, num_workers: int, alpha: float,
                       rng: np.random.Generator) -> list[np.ndarray]:
    """The authors' ``dirichlet_partition_equal_size`` on data of a multiple of n samples."""
    classes = np.unique(labels)
    pools = [np.flatnonzero(labels == c) for c in classes]
    for pool in pools:
        rng.shuffle(pool)
    taken = np.zeros(len(classes), dtype=np.int64)  # each pool is used from the front
    size = len(labels) // num_workers
    shards = []
    for _ in range(num_workers):
        wanted = rounded_counts(rng.dirichlet(np.full(len(classes), alpha)), size)
        pieces = []
        for c, want in enumerate(wanted):
            take = min(int(want), len(pools[c]) - int(taken[c]))
            pieces.append(pools[c][taken[c]:taken[c] + take])
            taken[c] += take
            deficit = int(want) - take
            if deficit > 0:  # top up from the classes with the most samples left
                left = np.array([len(pool) for pool in pools]) - taken
                for donor in np.argsort(-left):
                    if deficit == 0:
                        break
                    give = min(deficit, len(pools[donor]) - int(taken[donor]))
                    pieces.append(pools[donor][taken[donor]:taken[donor] + give])
                    taken[donor] += give
                    deficit -= give
        shard = np.concatenate(pieces).astype(np.int64)
        rng.shuffle(shard)
        shards.append(shard)
    return shards


def _dirichlet(labels: np.ndarray, num_workers: int, alpha: float,
               rng: np.random.Generator) -> list[np.ndarray]:
    parts: list[list[np.ndarray]] = [[] for _ in range(num_workers)]
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        proportions = rng.dirichlet(np.full(num_workers, alpha))
        cuts = (np.cumsum(proportions)[:-1] * len(members)).astype(np.int64)
        for worker, piece in enumerate(np.split(members, cuts)):
            parts[worker].append(piece)
    shards = [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
    for worker in range(num_workers):
        if len(shards[worker]) == 0:
            donor = int(np.argmax([len(s) for s in shards]))
            taken = int(rng.integers(len(shards[donor])))
            shards[worker] = shards[donor][taken:taken + 1].copy()
            shards[donor] = np.delete(shards[donor], taken)
    return shards


def _labels(labels: np.ndarray | None, num_samples: int, scheme: str) -> np.ndarray:
    if labels is None:
        raise ConfigError("partition", scheme, "a label-based scheme needs class labels; use "
                          "'iid' for data without labels")
    labels = np.asarray(labels)
    check(labels.shape == (num_samples,), "labels", f"shape {labels.shape}",
          f"one label per sample, shape ({num_samples},)")
    check(np.issubdtype(labels.dtype, np.integer), "labels", f"dtype {labels.dtype}",
          "integer class labels")
    return labels


def _given(indices: Sequence[Sequence[int]] | None, num_samples: int,
           num_workers: int) -> list[np.ndarray]:
    if indices is None or len(indices) != num_workers:
        raise ConfigError("indices", None if indices is None else f"{len(indices)} lists",
                          f"one index list per worker ({num_workers} lists)")
    shards = []
    for worker, given in enumerate(indices):
        shard = np.asarray(given)
        field = f"indices[{worker}]"
        check(shard.ndim == 1 and shard.size > 0, field, f"shape {shard.shape}",
              "a non-empty list of sample indices (every worker needs data)")
        check(np.issubdtype(shard.dtype, np.integer), field, f"dtype {shard.dtype}",
              "integer sample indices")
        low, high = int(shard.min()), int(shard.max())
        check(low >= 0 and high < num_samples, field, f"indices in [{low}, {high}]",
              f"indices in [0, {num_samples - 1}]")
        shards.append(shard.astype(np.int64))
    return shards
