"""Configuration: overrides, validation messages, resolved round trip."""

from __future__ import annotations

import tomllib

import pytest

from asyncopt import config as configuration
from asyncopt.errors import ConfigError


def test_overrides_are_typed_toml_values():
    raw = configuration.apply_overrides(
        {"rule": {"name": "sgd"}},
        ["rule.lr=0.01", "workers=8", "protocol.name=minibatch", "speed.times=[1, 2]",
         "rule.nesterov=true"])
    assert raw["rule"] == {"name": "sgd", "lr": 0.01, "nesterov": True}
    assert raw["workers"] == 8 and raw["protocol"] == {"name": "minibatch"}
    assert raw["speed"]["times"] == [1, 2]


def test_resolved_config_round_trips_through_toml():
    resolved = configuration.resolve({"workers": 3, "rule": {"name": "adam", "lr": 1e-3},
                                      "problem": {"name": "quadratic"}})
    again = configuration.resolve(tomllib.loads(configuration.dumps(resolved)))
    assert again == configuration.resolve(again)
    assert again["rule"]["b1"] == 0.9 and again["workers"] == 3


@pytest.mark.parametrize("raw, pattern", [
    ({"wokers": 3}, r"config = 'wokers'.*known keys are"),
    ({"workers": 0}, r"workers = 0 .*>= 1"),
    ({"workers": 2.5}, r"workers = 2.5"),
    ({"runtime": "mpi"}, r"runtime = 'mpi'.*one of .*sim"),
    ({"protocol": {"name": "sync"}}, r"protocol\.name = 'sync'.*asgd"),
    ({"budget": {}}, r"budget.*at least one of"),
    ({"budget": {"steps": -1}}, r"budget\.steps = -1"),
    ({"eval": {"unit": "epochs"}}, r"eval\.unit = 'epochs'.*steps, time"),
    ({"rule": "sgd"}, r"rule = 'sgd'.*a table"),
    ({"rule": {"name": "sgdd"}}, r"rule\.name = 'sgdd'.*sgd"),
    ({"problem": {"name": "mnist9"}}, r"problem\.name = 'mnist9'"),
])
def test_bad_values_name_the_field_the_value_and_what_is_allowed(raw, pattern):
    with pytest.raises(ConfigError, match=pattern):
        configuration.resolve(raw)


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"--set = 'rule\.lr'.*KEY=VALUE"):
        configuration.apply_overrides({}, ["rule.lr"])
    with pytest.raises(ConfigError, match="an existing TOML file"):
        configuration.load(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("workers = = 3\n")
    with pytest.raises(ConfigError, match="valid TOML"):
        configuration.load(broken)
