"""Image datasets: the user's CIFAR-10/100 files, and seeded synthetic CIFAR-sized images.

* ``"cifar10"`` / ``"cifar100"`` (Krizhevsky 2009): the "CIFAR-10 python version" and
  "CIFAR-100 python version" archives, unpacked by the user; ``path`` is the directory holding
  ``data_batch_1`` … ``data_batch_5`` and ``test_batch`` (CIFAR-10, the
  ``cifar-10-batches-py`` folder), or ``train`` and ``test`` (CIFAR-100, ``cifar-100-python``).
  Nothing is downloaded. Each file is a pickled dict with ``b"data"``, a uint8 array N × 3072
  (the 1024 red, then green, then blue pixels of a 32×32 image, row-major), and ``b"labels"``
  (CIFAR-10, 0..9) or ``b"fine_labels"`` (CIFAR-100, 0..99). The files' own train/test split
  is kept (``test_fraction`` does not apply). :func:`read_batch` checks each file and raises a
  :class:`~asyncopt.errors.ConfigError` naming the file and the fault. The files are unpickled
  with only plain containers and numpy arrays allowed, so a file holding anything else is
  refused, not run.
* ``"synthetic_images"``: ``num_samples`` images 3×32×32 in ``num_classes`` classes, seeded.
  Class c has a template T_c, a smooth random pattern (N(0, 1) on a 4×4 grid per channel,
  each cell blown up to 8×8 pixels); an image of class y is x = ½ T_y + ε, ε ~ N(0, I): a
  learnable signal under heavy pixel noise, for throughput runs and tests.

Both give float32 tensors N × 3 × 32 × 32, standardized per channel with the training set's
mean and standard deviation (the usual CIFAR normalization; no augmentation).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from asyncopt.errors import ConfigError

CIFAR: dict[str, tuple[tuple[str, ...], str, bytes, int]] = {
    "cifar10": (tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", b"labels", 10),
    "cifar100": (("train",), "test", b"fine_labels", 100),
}
"""name → (training files, test file, label key, number of classes)."""
ARCHIVE_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
"""The folder the python-version archive unpacks into (torchvision's download root holds it)."""
IMAGE_DATASETS = (*CIFAR, "synthetic_images")
FLAT_IMAGES = ("digits", "fashion_mnist", "mnist_idx", "mnist_subset")
"""Datasets of square images stored flat, one row of s² pixels per image."""
_ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}


class _Unpickler(pickle.Unpickler):
    """Plain containers and numpy arrays only: any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}")
        return super().find_class(module, name)


def read_batch(path: str | Path, label_key: bytes,
               num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` from one CIFAR python-version file: uint8 N × 3 × 32 × 32 and
    int64 N in 0..num_classes−1."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            batch = _Unpickler(file, encoding="bytes").load()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as error:
        raise ConfigError("path", str(path), "an existing CIFAR batch file") from error
    except Exception as error:  # any unpickling fault is the file's
        raise ConfigError("path", str(path), "a CIFAR batch: a pickled dict of numpy arrays and "
                          f"lists (unpickling failed: {error})") from error
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ConfigError("path", str(path), f"a CIFAR batch: a dict with keys b'data' and "
                          f"{label_key!r}, not {keys}")
    data, labels = batch[b"data"], np.asarray(batch[label_key])
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3072 and len(data) > 0):
        shape = (getattr(data, "dtype", type(data).__name__), getattr(data, "shape", None))
        raise ConfigError("path", str(path), f"b'data' a uint8 array N × 3072 (N ≥ 1), not "
                          f"{shape[0]} of shape {shape[1]}")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer) or (
            labels.min() < 0 or labels.max() >= num_classes):
        raise ConfigError("path", str(path), f"{label_key!r} {len(data)} integer labels in "
                          f"0..{num_classes - 1}, one per image")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar(directory: str | Path, name: str,
               ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """``(X, y, (train, test))``: the training then the test images of CIFAR ``name`` from
    ``directory`` (uint8 N × 3 × 32 × 32), with the index arrays of the files' split;
    ``directory`` may also be the folder that holds the unpacked archive's own folder
    (``cifar-10-batches-py``, ``cifar-100-python``), as torchvision's download root does."""
    train_files, test_file, label_key, classes = CIFAR[name]
    directory = Path(directory)
    if (directory / ARCHIVE_FOLDERS[name] / test_file).is_file():
        directory = directory / ARCHIVE_FOLDERS[name]  # the archive's parent: a download root
    if not directory.is_dir():
        raise ConfigError("path", str(directory), f"a directory holding the {name} python-"
                          f"version files {', '.join((*train_files, test_file))}")
    parts = [read_batch(directory / file, label_key, classes)
             for file in (*train_files, test_file)]
    X = np.concatenate([images for images, _ in parts])
    y = np.concatenate([labels for _, labels in parts])
    count = len(X) - len(parts[-1][0])
    return X, y, (np.arange(count), np.arange(count, len(X)))


def synthetic_images(seed: int, num_samples: int, num_classes: int,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)``: float32 N × 3 × 32 × 32 images x = ½ T_y + ε with balanced random labels."""
    rng = np.random.default_rng([seed, 2])
    coarse = rng.standard_normal((num_classes, 3, 4, 4)).astype(np.float32)
    templates = coarse.repeat(8, axis=2).repeat(8, axis=3)
    y = rng.permutation(np.arange(num_samples) % num_classes)
    X = rng.standard_normal((num_samples, 3, 32, 32), dtype=np.float32)
    X += 0.5 * templates[y]
    return X, y.astype(np.int64)


def standardize_channels(X_train: np.ndarray,
                         X_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(X − μ_c) / σ_c per channel c, with the training images' mean and standard deviation."""
    X_train = X_train.astype(np.float32)
    mean = X_train.mean(axis=(0, 2, 3), keepdims=True, dtype=np.float64).astype(np.float32)
    std = X_train.std(axis=(0, 2, 3), keepdims=True, dtype=np.float64).astype(np.float32)
    std[std < 1e-12] = 1.0
    X_train -= mean
    X_train /= std
    return X_train, (X_test.astype(np.float32) - mean) / std


def as_images(X: Any, dataset: str) -> Any:
    """``X`` as N × C × H × W: the image datasets' tensors unchanged, the flat square images of
    :data:`FLAT_IMAGES` (digits' 64 = 8², MNIST's 784 = 28²) as one-channel s × s images; any
    other dataset is a ConfigError."""
    if dataset in IMAGE_DATASETS:
        return X
    if dataset not in FLAT_IMAGES:
        raise ConfigError("dataset", dataset, "an image dataset: "
                          + ", ".join((*IMAGE_DATASETS, *FLAT_IMAGES)))
    side = round(X.shape[1] ** 0.5)
    return X.reshape(len(X), 1, side, side)
