"""Partitions: every sample once, seeded, label skew where asked, never an empty worker."""

from __future__ import annotations

import numpy as np
import pytest

from asyncopt.errors import ConfigError
from asyncopt.problems.partition import partition

LABELS = np.repeat(np.arange(10), 100)  # 10 classes × 100 samples
RNG_LABELS = np.random.default_rng(0).permutation(LABELS)


def _histograms(shards: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
    return np.stack([np.bincount(labels[s], minlength=10) for s in shards])


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "sorted"])
def test_every_sample_is_on_exactly_one_worker(scheme):
    shards = partition(RNG_LABELS, len(RNG_LABELS), 7, scheme, alpha=0.3, seed=1)
    assert len(shards) == 7
    assert all(len(s) > 0 and s.dtype == np.int64 for s in shards)
    assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(len(RNG_LABELS)))


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "sorted"])
def test_same_seed_same_shards_and_another_seed_differs(scheme):
    first = partition(RNG_LABELS, 1000, 7, scheme, seed=3)
    again = partition(RNG_LABELS, 1000, 7, scheme, seed=3)
    other = partition(RNG_LABELS, 1000, 7, scheme, seed=4)  # 7: cuts fall inside classes
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_iid_shards_are_near_equal_and_label_balanced():
    shards = partition(None, 1003, 10, "iid", seed=0)
    assert {len(s) for s in shards} <= {100, 101}
    hist = _histograms(partition(RNG_LABELS, 1000, 5, "iid", seed=0), RNG_LABELS)
    assert hist.min() >= 10  # 20 expected per class and worker


def test_dirichlet_small_alpha_is_visibly_skewed():
    """With α = 0.1 most of a worker's data comes from its top two classes; iid is flat."""
    def top2_share(scheme: str) -> float:
        hist = _histograms(partition(RNG_LABELS, 1000, 10, scheme, alpha=0.1, seed=0),
                           RNG_LABELS)
        top2 = np.sort(hist, axis=1)[:, -2:].sum(axis=1)
        return float(np.mean(top2 / hist.sum(axis=1)))

    assert top2_share("dirichlet") > 0.7
    assert top2_share("iid") < 0.35


def test_dirichlet_never_leaves_a_worker_empty():
    for seed in range(20):
        shards = partition(LABELS[:60], 60, 50, "dirichlet", alpha=0.05, seed=seed)
        assert min(len(s) for s in shards) >= 1
        assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(60))


def test_sorted_gives_each_worker_one_class():
    hist = _histograms(partition(RNG_LABELS, 1000, 10, "sorted", seed=0), RNG_LABELS)
    assert np.array_equal(hist, 100 * np.eye(10, dtype=int))


def test_given_lists_are_checked_and_may_overlap():
    shards = partition(None, 10, 2, "given", seed=0, indices=[[0, 1, 2], [2, 3]])
    assert [s.tolist() for s in shards] == [[0, 1, 2], [2, 3]]
    with pytest.raises(ConfigError, match=r"indices\[1\].*\[0, 9\]"):
        partition(None, 10, 2, "given", seed=0, indices=[[0], [3, 10]])
    with pytest.raises(ConfigError, match=r"indices\[0\].*non-empty"):
        partition(None, 10, 2, "given", seed=0, indices=[[], [1]])
    with pytest.raises(ConfigError, match="one index list per worker"):
        partition(None, 10, 3, "given", seed=0, indices=[[0], [1]])


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    ((LABELS, 1000, 0, "iid"), {}, r"num_workers = 0"),
    ((LABELS[:5], 5, 6, "iid"), {}, r"num_workers = 6 .*at most the number of training"),
    ((LABELS, 1000, 4, "dirichlet"), {"alpha": 0.0}, r"alpha = 0\.0 .*> 0"),
    ((LABELS, 1000, 4, "dirichlet"), {"alpha": -1}, r"alpha = -1"),
    ((LABELS, 1000, 4, "random"), {}, r"partition = 'random' .*dirichlet"),
    ((None, 1000, 4, "sorted"), {}, r"partition = 'sorted' .*labels"),
    ((LABELS[:10], 1000, 4, "dirichlet"), {}, r"labels = .*one label per sample"),
])
def test_bad_inputs_name_their_field(args, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        partition(*args, seed=0, **kwargs)


# --- the Ringleader authors' construction, against their prep_data.py (ringleader_reference) ---

@pytest.mark.parametrize(("count", "workers", "alpha"), [(1000, 10, 0.1), (1037, 10, 0.1),
                                                          (523, 7, 0.5), (300, 100, 0.1)])
def test_rounded_dirichlet_is_the_authors_trim_and_partition(count, workers, alpha):
    from ringleader_reference import dirichlet_partition_equal_size, reduce_dataset_to_multiple

    # unequal classes, so that the trim, the remainders and the top-ups all have work to do
    labels = np.random.default_rng(count).choice(10, size=count, p=np.linspace(1, 3, 10) / 20)
    features = np.arange(count)  # the authors' functions return features; ours index arrays
    kept, kept_labels, _, _ = reduce_dataset_to_multiple(features, labels, 10, workers,
                                                         seed=123456)
    _, _, expected = dirichlet_partition_equal_size(kept, kept_labels, 10, num_nodes=workers,
                                                    alpha=alpha, seed=654321)
    shards = partition(labels, count, workers, "dirichlet_equal_rounded", alpha=alpha,
                       seed=654321)
    assert len(shards) == workers
    for ours, theirs in zip(shards, expected, strict=True):
        assert ours.dtype == np.int64 and np.array_equal(ours, kept[theirs])
    assert len({len(s) for s in shards}) == 1


def test_rounded_dirichlet_needs_one_sample_per_client():
    with pytest.raises(ConfigError, match=r"num_workers = 11 .*equal-size clients of at least "
                       "one sample"):
        partition(LABELS[:10], 10, 11, "dirichlet_equal_rounded", alpha=0.1, seed=0)


def test_partition_seed_fixes_the_partition_whatever_the_run_seed():
    from asyncopt.problems.registry import make_problem

    def shards(seed: int, **keys: object) -> list[np.ndarray]:
        spec = {"name": "logistic", "dataset": "digits", "partition": "dirichlet",
                "test_fraction": 0.0, **keys}
        return make_problem(spec, 5, seed).shards

    fixed = [shards(seed, partition_seed=654321) for seed in (26, 27)]
    assert all(np.array_equal(a, b) for a, b in zip(*fixed, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(shards(26), shards(3, partition_seed=26),
                                                     strict=True))  # default: the run seed
    assert not all(np.array_equal(a, b) for a, b in zip(shards(26), shards(27), strict=True))
    for bad in (1.5, "654321", -1, True, 2**64):
        with pytest.raises(ConfigError, match=r"problem\.partition_seed = .* an integer in \[0, "):
            shards(0, partition_seed=bad)
    with pytest.raises(ConfigError, match=r"workers = 1001 .*equal-size clients"):
        make_problem({"name": "logistic", "dataset": "synthetic", "test_fraction": 0.0,
                      "partition": "dirichlet_equal_rounded"}, 1001, 0)
