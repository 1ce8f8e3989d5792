"""The LIBSVM reader's speed: scikit-learn's parser (now) against the line scanner (before).

    .venv/bin/python benchmarks/libsvm_reader.py                     # writes its RESULTS.md section
    .venv/bin/python benchmarks/libsvm_reader.py --lines 2000 --smoke   # a quick check only

A generated classification file (``--lines`` samples, ``--features`` features, ``--density``
of them stored per line, 6 significant digits, labels ±1) is read, best of ``--repeats``
interleaved readings each, by

* the line scanner, ``datasets._scan`` and ``.toarray()``: the Python loop that
  ``read_libsvm`` was until scikit-learn took over (the same per-token checks; it now runs only
  to name the line of a file that scikit-learn's reading refuses);
* ``read_libsvm(path)``: scikit-learn's ``load_svmlight_file``, the value and label checks,
  then dense float32;
* ``read_libsvm(path, sparse=True)``: the same, left as a CSR matrix;
* ``load_dataset("libsvm", ...)``: the whole path to the problem's tensors (the split, and
  sparse kept where :data:`asyncopt.problems.datasets.SPARSE_ABOVE_BYTES` says).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse  # noqa: F401  (imported here, not inside the first timed reading)
import sklearn.datasets  # noqa: F401
from results import write_section

from asyncopt.problems import datasets


def write_file(path: Path, lines: int, features: int, density: float, seed: int = 0) -> int:
    """Write the file; return its size in bytes."""
    rng = np.random.default_rng(seed)
    per_line = max(1, round(density * features))
    with path.open("w") as file:
        for start in range(0, lines, 10_000):
            rows = []
            for _ in range(min(10_000, lines - start)):
                columns = np.sort(rng.choice(features, per_line, replace=False)) + 1
                values = rng.standard_normal(per_line)
                rows.append(" ".join(["+1" if rng.random() < 0.5 else "-1",
                                      *(f"{c}:{v:.6g}" for c, v in zip(columns, values,
                                                                      strict=True))]))
            file.write("\n".join(rows) + "\n")
    return path.stat().st_size


def best_seconds(readers: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Each reader's best wall time over ``repeats`` rounds, the readers interleaved."""
    best = dict.fromkeys(readers, float("inf"))
    for _ in range(repeats):
        for name, read in readers.items():
            start = time.perf_counter()
            read()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000, help="samples in the file")
    parser.add_argument("--features", type=int, default=300, help="the file's width")
    parser.add_argument("--density", type=float, default=0.05,
                        help="fraction of the features stored on each line")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved readings of each")
    parser.add_argument("--smoke", action="store_true", help="print only: no RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "data.svm"
        size = write_file(path, args.lines, args.features, args.density)
        readers: dict[str, Callable[[], object]] = {
            "line scanner (before)": lambda: datasets._scan(path, None)[0].toarray(),
            "read_libsvm, dense": lambda: datasets.read_libsvm(path),
            "read_libsvm, sparse": lambda: datasets.read_libsvm(path, sparse=True),
            "load_dataset": lambda: datasets.load_dataset("libsvm", seed=0, path=str(path)),
        }
        best = best_seconds(readers, args.repeats)
    before = best["line scanner (before)"]
    rows = [f"| {name} | {seconds:.3f} | {args.lines / seconds:,.0f} | {before / seconds:.1f}× |"
            for name, seconds in best.items()]
    body = ("| reader | seconds | lines/s | speed-up over the scanner |\n|---|---|---|---|\n"
            + "\n".join(rows) + f"\n\n{args.lines:,} lines × {args.features} features, "
            f"{args.density:g} of them per line ({size / 2**20:.1f} MiB); best of "
            f"{args.repeats} interleaved readings each.")
    print(body)
    if not args.smoke:
        write_section("LIBSVM reader", "python benchmarks/libsvm_reader.py", body)


if __name__ == "__main__":
    main()
