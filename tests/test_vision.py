"""CNNs, CIFAR files and synthetic images: model shapes and sizes, the CIFAR reader on files the
test writes in the real format (and its errors), and a small CNN learning synthetic images."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from asyncopt import config as configuration
from asyncopt.api import run
from asyncopt.errors import ConfigError
from asyncopt.problems.datasets import load_dataset
from asyncopt.problems.images import ARCHIVE_FOLDERS, CIFAR
from asyncopt.problems.registry import make_problem, resolve_problem_spec
from asyncopt.problems.vision import model_factory

PAPER_SCALE = sorted((Path(__file__).parents[1] / "configs" / "paper-scale").glob("*.toml"))


def _size(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("name", "channels", "side", "classes", "millions"), [
    ("lenet5", 1, 28, 10, 0.0617),     # LeCun et al. 1998: about 60,000
    ("resnet20", 3, 32, 10, 0.27),     # He et al. 2016, Table 6: 0.27M
    ("resnet56", 3, 32, 10, 0.85),     # 0.85M
    ("allcnn", 3, 32, 10, 1.37),       # Springenberg et al. 2015: 1.3M
    ("wrn28_10", 3, 32, 100, 36.5),    # Zagoruyko & Komodakis 2016: 36.5M
])
def test_models_have_the_papers_sizes_and_output_one_score_per_class(name, channels, side,
                                                                       classes, millions):
    module = model_factory(name, channels, side, classes)()
    assert _size(module) / 1e6 == pytest.approx(millions, rel=5e-3)
    if name != "wrn28_10":  # 36M parameters: the size is the check, a forward pass is slow
        assert module(torch.randn(2, channels, side, side)).shape == (2, classes)


def test_bad_model_names_are_refused_with_the_names_that_exist():
    for bad in ("resnet21", "wrn27_10", "wrn28_0", "vgg16", 3):
        with pytest.raises(ConfigError, match=r"problem\.model = .*resnet<6n\+2>"):
            resolve_problem_spec({"name": "cnn", "model": bad})


def _write_cifar(directory: Path, name: str, per_file: int = 20) -> np.ndarray:
    """The real format: pickled dicts of a uint8 N × 3072 array and a list of labels."""
    train_files, test_file, label_key, classes = CIFAR[name]
    rng = np.random.default_rng(0)
    written = []
    for file in (*train_files, test_file):
        data = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, classes, per_file)]
        with (directory / file).open("wb") as handle:
            pickle.dump({b"batch_label": b"x", b"data": data, label_key: labels}, handle)
        written.append(data)
    return np.concatenate(written)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_files_are_read_with_their_split_and_standardized_per_channel(tmp_path, name):
    raw = _write_cifar(tmp_path, name)
    data = load_dataset(name, seed=0, path=str(tmp_path))
    train_count = 20 * len(CIFAR[name][0])
    assert data.X_train.shape == (train_count, 3, 32, 32) and data.X_test.shape == (20, 3, 32, 32)
    assert data.num_classes == CIFAR[name][3]
    means = data.X_train.mean(dim=(0, 2, 3))
    stds = data.X_train.std(dim=(0, 2, 3))
    assert torch.allclose(means, torch.zeros(3), atol=1e-5)
    assert torch.allclose(stds, torch.ones(3), atol=1e-3)
    images = raw[:train_count].reshape(-1, 3, 32, 32).astype(np.float64)
    red = images[:, 0]  # the first 1024 values of a row are the red channel
    expected = (red - red.mean()) / red.std()
    np.testing.assert_allclose(data.X_train[:, 0].numpy(), expected, atol=1e-4)


def test_bad_cifar_files_are_named_with_the_fault(tmp_path):
    with pytest.raises(ConfigError, match="a directory holding the cifar10 python-version"):
        load_dataset("cifar10", seed=0, path=str(tmp_path / "missing"))
    _write_cifar(tmp_path, "cifar10")
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(ConfigError, match=r"data_batch_3' .*an existing CIFAR batch file"):
        load_dataset("cifar10", seed=0, path=str(tmp_path))
    faults = {
        "a dict with keys b'data' and b'labels'": {b"data": np.zeros((2, 3072), np.uint8)},
        "uint8 array N × 3072": {b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]},
        "2 integer labels in 0..9": {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]},
    }
    for message, content in faults.items():
        (tmp_path / "data_batch_3").write_bytes(pickle.dumps(content))
        with pytest.raises(ConfigError, match=f"data_batch_3' .*{message}"):
            load_dataset("cifar10", seed=0, path=str(tmp_path))
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps({b"data": Path("x")}))
    with pytest.raises(ConfigError, match=r"unpickling failed: it refers to pathlib"):
        load_dataset("cifar10", seed=0, path=str(tmp_path))
    with pytest.raises(ConfigError, match=r"problem\.path = None .*cifar100"):
        resolve_problem_spec({"name": "cnn", "dataset": "cifar100"})


def test_flat_square_datasets_become_one_channel_images_and_others_are_refused():
    problem = make_problem({"name": "cnn", "model": "lenet5", "dataset": "digits"}, 2, 0)
    assert problem.X_train.shape[1:] == (1, 8, 8)
    with pytest.raises(ConfigError, match=r"problem\.dataset = 'iris' .*an image dataset"):
        make_problem({"name": "cnn", "model": "lenet5", "dataset": "iris"}, 2, 0)


def test_a_small_cnn_learns_synthetic_images_in_the_simulator():
    data = load_dataset("synthetic_images", seed=3, num_samples=200, num_classes=4)
    assert data.X_train.shape == (160, 3, 32, 32) and data.num_classes == 4
    result = run({"seed": 0, "workers": 2,
                  "problem": {"name": "cnn", "model": "resnet8", "dataset": "synthetic_images",
                              "num_samples": 200, "num_classes": 4, "batch_size": 8},
                  "rule": {"name": "momentum", "lr": 0.02, "momentum": 0.9},
                  "protocol": {"name": "asgd"}, "budget": {"steps": 150},
                  "eval": {"every": 150, "unit": "steps"}})
    losses = result.history.evaluations["loss"]
    assert losses[-1] < 0.3 * losses[0]
    assert result.history.final("accuracy") > 0.8


@pytest.mark.parametrize("path", PAPER_SCALE, ids=[p.stem for p in PAPER_SCALE])
def test_paper_scale_configs_resolve_without_their_data(path):
    methods = configuration.methods(configuration.read(path))
    assert methods
    for _, raw in methods:
        resolved = configuration.resolve(raw)
        assert resolved["problem"]["name"] == "cnn"
    assert "needs" in path.read_text().split("\n\n")[0].lower()  # the header says what it needs


@pytest.mark.parametrize("path", [p for p in PAPER_SCALE if "cifar" in p.stem],
                         ids=[p.stem for p in PAPER_SCALE if "cifar" in p.stem])
def test_paper_scale_cifar_configs_build_their_problem_on_cifar_files(tmp_path, path):
    raw = configuration.read(path)
    _write_cifar(tmp_path, raw["problem"]["dataset"], per_file=4)
    resolved = configuration.resolve(configuration.methods(raw)[0][1])
    problem = make_problem({**resolved["problem"], "path": str(tmp_path)}, 2, 0)
    assert problem.X_train.shape[1:] == (3, 32, 32)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_a_torchvision_download_root_holding_the_archive_folder_is_read(tmp_path, name):
    folder = tmp_path / ARCHIVE_FOLDERS[name]  # datasets.CIFAR10(root, download=True)'s layout
    folder.mkdir()
    raw = _write_cifar(folder, name)
    data = load_dataset(name, seed=0, path=str(tmp_path))
    assert len(data.X_train) + len(data.X_test) == len(raw)
