"""Logistic regression on a LIBSVM file with APAM (asynchronous AMSGrad, Xu et al.).

    python examples/logistic_libsvm.py path/to/data.svm   # e.g. a1a, w8a from the LIBSVM site
    python examples/logistic_libsvm.py                    # writes a small file first

Without a path, scikit-learn's breast-cancer set is standardized and written as a LIBSVM file
(LIBSVM's own sets come prescaled), so the example runs offline.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import dump_svmlight_file, load_breast_cancer
from torch import nn

import asyncopt
from asyncopt.problems import read_libsvm, stratified_split


def write_example_file(path: Path) -> Path:
    data = load_breast_cancer()
    X = (data.data - data.data.mean(0)) / data.data.std(0)
    dump_svmlight_file(X, np.where(data.target == 1, 1, -1), str(path), zero_based=False)
    return path


def main(argv: list[str] | None = None) -> asyncopt.Result:
    parser = argparse.ArgumentParser(description="Logistic regression on a LIBSVM file.")
    parser.add_argument("path", nargs="?", help="a LIBSVM file (default: write one)")
    parser.add_argument("--steps", type=int, default=2000, help="server steps (budget)")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--runtime", default="sim", help="sim, or a real runtime")
    parser.add_argument("--out", default=None, help="run directory: history and model.pt")
    args = parser.parse_args(argv)

    path = Path(args.path) if args.path else write_example_file(
        Path(tempfile.mkdtemp()) / "breast_cancer.svm")
    X, y, classes = read_libsvm(path)  # labels mapped to 0..C-1; classes[y] are the file's
    train, test = stratified_split(y, 0.2, seed=0)
    X, y = torch.from_numpy(X), torch.from_numpy(y)
    model = nn.Linear(X.shape[1], len(classes))
    result = asyncopt.train(
        model, {"name": "amsgrad", "lr": 1e-2}, "asgd",
        loss=F.cross_entropy, data=(X[train], y[train]), eval_data=(X[test], y[test]),
        workers=args.workers, batch_size=16, speed={"profile": "linear"},
        budget={"steps": args.steps}, evaluation={"every": max(args.steps // 10, 1)},
        runtime=args.runtime, run_dir=args.out)
    print(f"{path.name}: {len(y)} samples, {X.shape[1]} features; test accuracy "
          f"{result.summary['final']['accuracy']:.3f}, loss {result.summary['final']['loss']:.4f}")
    return result


if __name__ == "__main__":
    main()
