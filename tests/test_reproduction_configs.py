"""Every shipped experiment file resolves, method by method, and names only keys that exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from asyncopt import config as configuration

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("**/*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_method_of_every_config_resolves(path: Path):
    methods = configuration.methods(configuration.read(path))
    assert methods
    for _, raw in methods:
        resolved = configuration.resolve(raw)
        assert resolved["workers"] >= 1


def test_the_pca_delay_config_is_async_msgd_with_fixed_delays():
    for label, raw in configuration.methods(configuration.read(
            Path(__file__).parents[1] / "configs" / "pca_delay.toml")):
        resolved = configuration.resolve(raw)
        assert resolved["protocol"]["name"] == "asgd"
        assert resolved["speed"]["profile"] == "constant" and resolved["speed"]["noise"] == "none"
        assert label == f"mu={resolved['rule']['momentum']:g}"


@pytest.mark.parametrize("name", ["ringleader_fashion", "ringleader_mnist_full"])
def test_the_full_data_ringleader_configs_select_the_authors_setting(name):
    path = Path(__file__).parents[1] / "configs" / f"{name}.toml"
    labels = []
    for label, raw in configuration.methods(configuration.read(path)):
        resolved = configuration.resolve(raw)
        problem, speed = resolved["problem"], resolved["speed"]
        assert (problem["partition"], problem["alpha"], problem["partition_seed"]) == (
            "dirichlet_equal_rounded", 0.1, 654321)
        assert problem["standardize"] and not problem["replacement"]
        assert (problem["hidden"], problem["batch_size"], resolved["workers"]) == (128, 4, 100)
        assert (speed["noise_index"], speed["seeding"], speed["profile"]) == (
            "worker", "offset", "linear")
        assert resolved["budget"]["time"] == 3e5 and resolved["eval"]["every"] == 2000.0
        if resolved["protocol"]["name"] == "ia2sgd":
            assert resolved["protocol"]["step_on_fill"] is False
        labels.append(label)
    assert labels[:3] == ["Ringleader", "Malenia", "IA2SGD"]
