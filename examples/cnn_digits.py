"""A small CNN with BatchNorm on scikit-learn's 8×8 digits, trained by 8 asynchronous workers.

    python examples/cnn_digits.py                       # simulated workers of different speeds
    python examples/cnn_digits.py --runtime processes   # the same code on real processes

Your model, your loss, your Dataset: asyncopt splits the data across the workers, runs AMSGrad
under asynchronous SGD (APAM), evaluates on the held-out set, and gives back the trained module.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

import asyncopt


class DigitsCNN(nn.Module):
    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.MaxPool2d(2),  # 8×8 -> 4×4
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.BatchNorm2d(2 * channels),
            nn.ReLU(), nn.MaxPool2d(2))  # 4×4 -> 2×2
        self.head = nn.Linear(2 * channels * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def digits() -> tuple[TensorDataset, TensorDataset]:
    """Images scaled to [0, 1], shape (N, 1, 8, 8); 360 held out for testing."""
    data = load_digits()
    X = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    test, train = order[:360], order[360:]
    return TensorDataset(X[train], y[train]), TensorDataset(X[test], y[test])


def main(argv: list[str] | None = None) -> asyncopt.Result:
    parser = argparse.ArgumentParser(description="A CNN on 8×8 digits, trained asynchronously.")
    parser.add_argument("--steps", type=int, default=1500, help="server steps (budget)")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--runtime", default="sim", help="sim, or a real runtime")
    parser.add_argument("--out", default=None, help="run directory: history and model.pt")
    args = parser.parse_args(argv)

    train_set, test_set = digits()
    result = asyncopt.train(
        DigitsCNN, {"name": "amsgrad", "lr": 1e-3}, "asgd",
        loss=F.cross_entropy, data=train_set, eval_data=test_set, workers=args.workers,
        batch_size=32, speed={"profile": "linear"},  # worker i takes i + 1 seconds
        budget={"steps": args.steps}, evaluation={"every": max(args.steps // 10, 1)},
        runtime=args.runtime, run_dir=args.out)
    final = result.summary["final"]
    print(f"test accuracy {final['accuracy']:.3f}, loss {final['loss']:.4f}, "
          f"mean delay {result.summary['mean_delay']:.1f}")
    model = result.model  # a DigitsCNN in evaluation mode, BatchNorm statistics included
    with torch.no_grad():
        print("predictions for 8 test images:", model(test_set.tensors[0][:8]).argmax(1).tolist())
    return result


if __name__ == "__main__":
    main()
