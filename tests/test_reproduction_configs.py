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
