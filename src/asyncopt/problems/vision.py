"""Convolutional networks of the papers' image experiments, as plain ``nn.Module`` factories.

* :func:`lenet5` — LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998): conv6–conv16–fc120–fc84–fc,
  the MNIST model of APAM's MPI code (Xu et al.), with ReLU and max pooling;
* :func:`resnet` — the CIFAR ResNet of He, Zhang, Ren & Sun 2016 (§4.2): depth 6n+2, a 3×3
  conv with 16 filters, three stages of n BasicBlocks with 16, 32, 64 filters (stride 2 at the
  start of stages 2 and 3), global average pooling, one linear layer; shortcuts are the
  parameter-free option A (subsample, zero-pad the new channels). ResNet-20 has 0.27M
  parameters, ResNet-56 0.85M (PASSM+'s ResNet-20, Kungurtsev et al.);
* :func:`wrn` — the Wide ResNet WRN-d-k of Zagoruyko & Komodakis 2016: pre-activation blocks,
  n = (d−4)/6 per stage with 16k, 32k, 64k filters, 1×1 projection shortcuts where the shape
  changes. WRN-28-10 has 36.5M parameters (the CIFAR-100 network of Liu et al. 2018);
* :func:`allcnn` — All-CNN-C of Springenberg, Dosovitskiy, Brox & Riedmiller 2015: only
  convolutions (stride-2 convolutions instead of pooling), dropout 0.2 on the input and 0.5
  after each stride-2 layer, 1.37M parameters (APAM's CIFAR-10 model).

Every factory takes the input ``channels``, the number of ``classes`` and, where the layer sizes
depend on it, the image ``size``; :func:`model_factory` turns a config's ``model`` name into a
picklable ``functools.partial`` of one of them. BatchNorm (in the ResNets, as in their papers)
gets its running statistics recomputed at evaluation (:mod:`asyncopt.problems.running_stats`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from asyncopt.errors import ConfigError

MODEL_NAMES = "lenet5, allcnn, resnet<6n+2> (resnet20, resnet56), wrn<6n+4>_<k> (wrn28_10)"


def lenet5(channels: int = 1, size: int = 28, classes: int = 10) -> nn.Module:
    """LeNet-5 on ``size``×``size`` images zero-padded to 32×32, as LeCun et al. padded the
    28×28 MNIST digits (no padding for inputs of 32 or more)."""
    pad = max(0, (32 - size + 1) // 2)
    side = ((size + 2 * pad - 4) // 2 - 4) // 2
    return nn.Sequential(
        nn.Conv2d(channels, 6, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * side * side, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, classes))


class BasicBlock(nn.Module):
    """He et al.'s two 3×3 conv–BN layers, y = ReLU(BN(W₂ ReLU(BN(W₁ x))) + shortcut(x)), the
    option-A shortcut: x subsampled by ``stride`` and its new channels zero."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.stride, self.extra = stride, outputs - inputs

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
        if self.extra:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        return F.relu(out + shortcut)


def resnet(depth: int = 20, channels: int = 3, classes: int = 10) -> nn.Module:
    """The CIFAR ResNet of depth 6n+2 (20, 32, 44, 56, 110; 8 is the smallest)."""
    if not _depth(depth, 2):
        raise ConfigError("model", f"resnet{depth}", "a CIFAR ResNet depth 6n+2 ≥ 8")
    n = (depth - 2) // 6
    layers: list[nn.Module] = [nn.Conv2d(channels, 16, 3, 1, 1, bias=False),
                               nn.BatchNorm2d(16), nn.ReLU()]
    inputs = 16
    for stage, width in enumerate((16, 32, 64)):
        for block in range(n):
            layers.append(BasicBlock(inputs, width, 2 if stage and not block else 1))
            inputs = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes)]
    return nn.Sequential(*layers)


class WideBlock(nn.Module):
    """Zagoruyko & Komodakis' pre-activation block: BN–ReLU–conv3×3–(dropout)–BN–ReLU–conv3×3,
    plus x, or a 1×1 conv of the first activation where the shape changes."""

    def __init__(self, inputs: int, outputs: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inputs)
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.shortcut = (nn.Conv2d(inputs, outputs, 1, stride, bias=False)
                         if stride > 1 or inputs != outputs else None)

    def forward(self, x: Tensor) -> Tensor:
        act = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.dropout(self.conv1(act)))))
        return out + (x if self.shortcut is None else self.shortcut(act))


def wrn(depth: int = 28, width: int = 10, channels: int = 3, classes: int = 100,
        dropout: float = 0.0) -> nn.Module:
    """WRN-``depth``-``width``: depth 6n+4 (16, 22, 28, 40), widening factor ``width`` ≥ 1."""
    if not _depth(depth, 4) or width < 1:
        raise ConfigError("model", f"wrn{depth}_{width}", "a Wide ResNet depth 6n+4 ≥ 10 and "
                          "width ≥ 1, e.g. wrn28_10")
    n = (depth - 4) // 6
    layers: list[nn.Module] = [nn.Conv2d(channels, 16, 3, 1, 1, bias=False)]
    inputs = 16
    for stage, base in enumerate((16, 32, 64)):
        for block in range(n):
            layers.append(WideBlock(inputs, base * width, 2 if stage and not block else 1,
                                    dropout))
            inputs = base * width
    layers += [nn.BatchNorm2d(inputs), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(inputs, classes)]
    return nn.Sequential(*layers)


def allcnn(channels: int = 3, classes: int = 10) -> nn.Module:
    """All-CNN-C (Springenberg et al. 2015, Table 2): 3×3 convs of 96, 96, 96/stride 2, 192,
    192, 192/stride 2, a valid 3×3 conv of 192, 1×1 convs of 192 and ``classes``, ReLU after
    each, then global average pooling."""

    def conv(inputs: int, outputs: int, kernel: int = 3, stride: int = 1,
             padding: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(inputs, outputs, kernel, stride, padding), nn.ReLU()]

    return nn.Sequential(
        nn.Dropout(0.2), *conv(channels, 96), *conv(96, 96), *conv(96, 96, stride=2),
        nn.Dropout(0.5), *conv(96, 192), *conv(192, 192), *conv(192, 192, stride=2),
        nn.Dropout(0.5), *conv(192, 192, padding=0), *conv(192, 192, 1, padding=0),
        *conv(192, classes, 1, padding=0), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def check_model(field: str, value: Any) -> str:
    """``value`` if it names a model :func:`model_factory` builds, else a ConfigError."""
    if not isinstance(value, str) or _parse(value) is None:
        raise ConfigError(field, value, MODEL_NAMES)
    return value


def model_factory(name: str, channels: int, size: int,
                  classes: int) -> Callable[[], nn.Module]:
    """A picklable factory building model ``name`` for ``channels``×``size``×``size`` inputs."""
    build = _parse(name)
    if build is None:
        raise ConfigError("model", name, MODEL_NAMES)
    return build(channels, size, classes)


def _parse(name: str) -> Callable[[int, int, int], Callable[[], nn.Module]] | None:
    """name → (channels, size, classes) → factory; None for an unknown name or bad depth."""
    if name == "lenet5":
        return lambda c, s, k: partial(lenet5, c, s, k)
    if name == "allcnn":
        return lambda c, s, k: partial(allcnn, c, k)
    if (match := re.fullmatch(r"resnet(\d+)", name)) and _depth(int(match[1]), 2):
        return lambda c, s, k: partial(resnet, int(match[1]), c, k)
    if ((match := re.fullmatch(r"wrn(\d+)_(\d+)", name)) and _depth(int(match[1]), 4)
            and int(match[2]) >= 1):
        return lambda c, s, k: partial(wrn, int(match[1]), int(match[2]), c, k)
    return None


def _depth(depth: int, offset: int) -> bool:
    """Whether ``depth`` = 6n + ``offset`` with n ≥ 1."""
    return depth > offset and (depth - offset) % 6 == 0
