"""Data with a NaN or an Inf in it is refused when a problem is built, not after the run.

A non-finite input makes every gradient that draws its sample non-finite: the run then rejects
gradients at random (one sample in a minibatch is enough) and ends "diverged" with advice about
the step size, or "completed" with a NaN gradient norm, neither of which points at the data.
So every dataset is checked once, in the order the user knows it (the file's, or the
``Dataset``'s): built-in and file datasets by :func:`~asyncopt.problems.datasets.load_dataset`,
your own ``data`` and ``eval_data`` by :func:`~asyncopt.problems.user.to_tensors`. Values beyond
float32's range count as non-finite too: they become Inf when the data is converted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from asyncopt.errors import ConfigError

_FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_finite(field: str, value: Any, what: str, data: Any, where: str) -> None:
    """Raise :class:`ConfigError` on ``field = value`` if ``data`` (samples along its first
    axis) holds a value that is NaN, Inf or beyond float32, naming how many there are and the
    first sample that has one; ``where`` says how samples are numbered."""
    bad = _bad_samples(data)
    if bad is None:
        return
    count, first = bad
    raise ConfigError(field, value, f"{what} with finite values only: {count} value(s) are NaN, "
                      f"Inf or beyond float32's range, the first in sample {first} ({where}); "
                      f"fix or drop those samples")


def _bad_samples(data: Any) -> tuple[int, int] | None:
    """(count of bad values, index of the first sample with one), or None when all are finite
    (integer data always is)."""
    if isinstance(data, torch.Tensor):
        if not torch.is_floating_point(data):
            return None
        bad = ~torch.isfinite(data) | (data.abs() > _FLOAT32_MAX)
        if not bool(bad.any()):
            return None
        rows = bad.reshape(len(data), -1).any(dim=1) if data.ndim else bad.reshape(1)
        return int(bad.sum()), int(torch.nonzero(rows)[0, 0])
    array = np.asarray(data)
    if not np.issubdtype(array.dtype, np.floating):
        return None
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(array) | (np.abs(array) > _FLOAT32_MAX)
    if not bad.any():
        return None
    rows = bad.reshape(len(array), -1).any(axis=1) if array.ndim else bad.reshape(1)
    return int(bad.sum()), int(np.flatnonzero(rows)[0])
