"""Speed models: profiles, permutation, noise, slowdowns, stragglers, determinism, bad input."""

from __future__ import annotations

import math
import pickle
import tomllib

import numpy as np
import pytest
import tomli_w

from asyncopt.errors import ConfigError
from asyncopt.runtimes.sim.speed import SpeedModel, make_speed_model
from asyncopt.runtimes.sim.speed_spec import resolve_speed_spec

NOISY = {"profile": "sqrt", "permute": True, "noise": "half_normal", "noise_grows": True,
         "straggler_probability": 0.1, "straggler_factor": 3.0,
         "periodic": [{"workers": [1], "period": 7.0, "amplitude": 0.5}]}


def times(model: SpeedModel, worker: int, count: int, now: float = 0.0) -> np.ndarray:
    return np.array([model.compute_time(worker, now) for _ in range(count)])


def test_default_is_one_second_for_everyone():
    model = make_speed_model({}, 3, 0)
    assert model.base_times() == [1.0, 1.0, 1.0]
    assert [model.compute_time(w, 5.0) for w in range(3)] == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("profile, expected", [
    ("constant", [2.0, 2.0, 2.0, 2.0]),
    ("linear", [2.0, 4.0, 6.0, 8.0]),
    ("sqrt", [2.0 * (1 + math.sqrt(i)) for i in range(4)]),
])
def test_profiles(profile, expected):
    model = make_speed_model({"profile": profile, "scale": 2.0}, 4, 0)
    assert model.base_times() == pytest.approx(expected)
    assert [model.compute_time(w, 0.0) for w in range(4)] == pytest.approx(expected)


def test_explicit_times_and_factors():
    model = make_speed_model({"times": [1, 2, 4], "factors": [3, 1, 0.5]}, 3, 0)
    assert model.base_times() == [1.0, 2.0, 4.0]
    assert [model.compute_time(w, 0.0) for w in range(3)] == [3.0, 2.0, 2.0]


def test_permutation_is_a_seeded_permutation_of_the_profile():
    spec = {"profile": "linear", "permute": True}
    first = make_speed_model(spec, 50, 1).base_times()
    assert sorted(first) == [float(i) for i in range(1, 51)]
    assert first != sorted(first)
    assert make_speed_model(spec, 50, 1).base_times() == first
    assert make_speed_model(spec, 50, 2).base_times() != first


def test_same_seed_same_sequences_whatever_the_interleaving():
    one, two = make_speed_model(NOISY, 4, 7), make_speed_model(NOISY, 4, 7)
    rng = np.random.default_rng(0)
    order = rng.integers(0, 4, size=2000)
    per_worker_one: list[list[float]] = [[] for _ in range(4)]
    for worker in order:
        per_worker_one[worker].append(one.compute_time(int(worker), 3.0))
    for worker in range(4):  # worker by worker: a different interleaving
        count = len(per_worker_one[worker])
        assert times(two, worker, count, 3.0).tolist() == per_worker_one[worker]
    other = make_speed_model(NOISY, 4, 8)
    assert times(other, 0, 20).tolist() != per_worker_one[0][:20]


def test_pickle_round_trip_continues_the_same_sequence():
    model = make_speed_model(NOISY, 3, 0)
    times(model, 0, 13)  # mid-block
    copy = pickle.loads(pickle.dumps(model))
    for worker in range(3):
        assert times(copy, worker, 300).tolist() == times(model, worker, 300).tolist()


@pytest.mark.parametrize("noise, mean", [
    ("half_normal", math.sqrt(2 / math.pi)),
    ("exponential", 1.0),
    ("lognormal", math.exp(0.5)),
])
def test_noise_distributions(noise, mean):
    sigma, base = 0.5, 2.0
    model = make_speed_model({"times": [base], "noise": noise, "noise_scale": sigma}, 1, 3)
    noise_values = times(model, 0, 20_000) - base
    assert noise_values.min() >= 0.0
    assert noise_values.mean() == pytest.approx(sigma * mean, rel=0.05)
    assert len(np.unique(noise_values)) > 19_000


def test_zero_noise_scale_means_no_noise():
    model = make_speed_model({"noise": "half_normal", "noise_scale": 0.0}, 2, 0)
    assert times(model, 1, 10).tolist() == [1.0] * 10


def test_noise_grows_with_the_profile_index():
    spec = {"profile": "constant", "noise": "half_normal", "noise_grows": True}
    model = make_speed_model(spec, 10, 0)
    spreads = [times(model, w, 4000).mean() - 1.0 for w in (0, 3, 8)]
    expected = [math.sqrt(2 / math.pi) * math.sqrt(i + 1) for i in (0, 3, 8)]
    assert spreads == pytest.approx(expected, rel=0.1)
    flat = make_speed_model({**spec, "noise_grows": False}, 10, 0)
    assert times(flat, 8, 4000).mean() - 1.0 == pytest.approx(math.sqrt(2 / math.pi), rel=0.1)


def test_permutation_moves_the_noise_spread_with_the_base_time():
    spec = {"profile": "linear", "permute": True, "noise": "exponential", "noise_grows": True}
    model = make_speed_model(spec, 6, 4)
    for worker, base in enumerate(model.base_times()):  # linear: profile index = base - 1
        assert times(model, worker, 4000).mean() - base == pytest.approx(math.sqrt(base), rel=0.1)


AUTHORS = {"profile": "linear", "permute": True, "noise": "half_normal", "noise_grows": True,
           "noise_index": "worker", "seeding": "offset"}


@pytest.mark.parametrize(("workers", "seed"), [(5, 26), (100, 30)])
def test_authors_time_model_gives_their_base_times_and_noise_draws(workers, seed):
    from ringleader_reference import make_delays, make_noise_function

    model = make_speed_model(AUTHORS, workers, seed)
    assert model.base_times() == make_delays(workers, seed).astype(float).tolist()
    noise = make_noise_function(workers, seed)
    order = np.random.default_rng(0).permutation(np.repeat(np.arange(workers), 20))
    base = model.base_times()
    for worker in order:  # interleaved calls: each worker's own stream, one draw per call
        drawn = model.compute_time(int(worker), 0.0) - base[worker]
        assert drawn == pytest.approx(noise(int(worker)), rel=1e-12, abs=1e-12)


def test_noise_index_worker_ties_the_spread_to_the_worker_not_its_base_time():
    spec = {"profile": "linear", "permute": True, "noise": "exponential", "noise_grows": True,
            "noise_index": "worker"}
    model = make_speed_model(spec, 6, 4)
    assert model.base_times() != sorted(model.base_times())  # the permutation moved them
    for worker, base in enumerate(model.base_times()):
        mean_noise = times(model, worker, 4000).mean() - base
        assert mean_noise == pytest.approx(math.sqrt(worker + 1), rel=0.1)
    default = make_speed_model({**spec, "noise_index": "profile"}, 6, 4)
    assert default.base_times() == model.base_times()  # the option moves spreads only
    assert "w the worker" in model.describe() and "base time's index" in default.describe()


def test_slowdowns_apply_inside_their_window_to_their_workers_only():
    spec = {"times": [1.0, 2.0, 4.0], "slowdowns": [
        {"workers": [0, 2], "start": 10.0, "end": 20.0, "factor": 3.0},
        {"workers": "all", "start": 15.0, "factor": 0.5}]}
    model = make_speed_model(spec, 3, 0)
    at = {now: [model.compute_time(w, now) for w in range(3)]
          for now in (0.0, 9.99, 10.0, 15.0, 19.99, 20.0, 1e6)}
    assert at[0.0] == at[9.99] == [1.0, 2.0, 4.0]
    assert at[10.0] == [3.0, 2.0, 12.0]
    assert at[15.0] == at[19.99] == [1.5, 1.0, 6.0]
    assert at[20.0] == at[1e6] == [0.5, 1.0, 2.0]


def test_periodic_factor_stays_within_its_bounds():
    spec = {"periodic": [{"workers": [0], "period": 10.0, "amplitude": 2.0, "phase": 0.25}]}
    model = make_speed_model(spec, 2, 0)
    values = np.array([model.compute_time(0, now) for now in np.linspace(0, 50, 2001)])
    assert values.min() == pytest.approx(1.0) and values.max() == pytest.approx(3.0)
    assert model.compute_time(0, 0.0) == pytest.approx(2.0)  # quarter period in
    assert model.compute_time(0, 7.5) == pytest.approx(1.0)
    assert model.compute_time(1, 2.5) == 1.0


def test_straggler_frequency_and_factor():
    spec = {"straggler_probability": 0.2, "straggler_factor": 5.0}
    values = times(make_speed_model(spec, 1, 0), 0, 20_000)
    assert set(values.tolist()) == {1.0, 5.0}
    assert (values == 5.0).mean() == pytest.approx(0.2, abs=0.015)


def test_resolved_spec_has_every_default_and_round_trips_through_toml():
    resolved = resolve_speed_spec({"times": [1, 2], "slowdowns": [{"factor": 2, "end": math.inf}]})
    assert resolved["times"] == [1.0, 2.0] and resolved["noise"] == "none"
    assert resolved["slowdowns"] == [{"workers": "all", "start": 0.0, "factor": 2.0}]
    full = resolve_speed_spec(NOISY)
    assert full["scale"] == 1.0 and full["periodic"][0]["phase"] == 0.0
    for spec in (resolved, full):
        assert resolve_speed_spec(tomllib.loads(tomli_w.dumps(spec))) == spec
    assert "half-normal" in make_speed_model(NOISY, 4, 0).describe()


@pytest.mark.parametrize("spec, pattern", [
    ({"nosie": "half_normal"}, r"speed = 'nosie'.*known keys are"),
    ({"profile": "cubic"}, r"speed\.profile = 'cubic'.*constant, linear, sqrt"),
    ({"scale": 0}, r"speed\.scale = 0 .*> 0"),
    ({"times": [1.0, 2.0], "profile": "sqrt"}, r"speed\.profile = 'sqrt'.*left out"),
    ({"times": [1.0, 0.0]}, r"speed\.times\[1\] = 0\.0 .*> 0"),
    ({"times": [1.0, math.inf]}, r"speed\.times\[1\] = inf .*finite"),
    ({"times": []}, r"speed\.times = \[\] .*non-empty"),
    ({"times": [1.0, 2.0]}, r"speed\.times = \[1\.0, 2\.0\] .*3 numbers.*workers = 3"),
    ({"factors": [1.0]}, r"speed\.factors = \[1\.0\] .*3 numbers"),
    ({"factors": [1.0, -1.0, 1.0]}, r"speed\.factors\[1\] = -1\.0"),
    ({"permute": "yes"}, r"speed\.permute = 'yes'.*true or false"),
    ({"noise": "gaussian"}, r"speed\.noise = 'gaussian'.*exponential, half_normal"),
    ({"noise_scale": -1}, r"speed\.noise_scale = -1 .*>= 0"),
    ({"noise_grows": 1}, r"speed\.noise_grows = 1 .*true or false"),
    ({"noise_index": "base"}, r"speed\.noise_index = 'base' .*profile, worker"),
    ({"seeding": "numpy"}, r"speed\.seeding = 'numpy' .*offset, spawn"),
    ({"straggler_probability": 1.5}, r"speed\.straggler_probability = 1\.5 .*<= 1"),
    ({"straggler_factor": 0.5}, r"speed\.straggler_factor = 0\.5 .*>= 1"),
    ({"slowdowns": {"factor": 2}}, r"speed\.slowdowns = .*a list of tables"),
    ({"slowdowns": [{"workers": [0]}]}, r"speed\.slowdowns\[0\] = .*a factor"),
    ({"slowdowns": [{"factor": math.inf}]}, r"speed\.slowdowns\[0\]\.factor = inf"),
    ({"slowdowns": [{"factor": 0}]}, r"speed\.slowdowns\[0\]\.factor = 0 .*> 0"),
    ({"slowdowns": [{"factor": 2, "start": 5, "end": 5}]}, r"slowdowns\[0\]\.end = 5 .*> 5"),
    ({"slowdowns": [{"factor": 2, "start": -1}]}, r"slowdowns\[0\]\.start = -1 .*>= 0"),
    ({"slowdowns": [{"factor": 2, "workers": [3]}]}, r"slowdowns\[0\]\.workers = \[3\].*0\.\.2"),
    ({"slowdowns": [{"factor": 2, "workers": []}]}, r"slowdowns\[0\]\.workers = \[\].*\"all\""),
    ({"slowdowns": [{"factor": 2, "until": 3}]}, r"slowdowns\[0\] = 'until'.*known keys"),
    ({"periodic": [{"period": 0, "amplitude": 1}]}, r"periodic\[0\]\.period = 0 .*> 0"),
    ({"periodic": [{"period": 1, "amplitude": -1}]}, r"periodic\[0\]\.amplitude = -1"),
    ({"periodic": [{"period": 1}]}, r"speed\.periodic\[0\] = .*an amplitude"),
    ({"factors": [1e300, 1, 1], "slowdowns": [{"factor": 1e10}]}, r"speed = 'worker 0.*finite"),
    ({"times": [1e-300, 1, 1], "slowdowns": [{"factor": 1e-30}]}, r"speed = 'worker 0.*> 0"),
])
def test_bad_specs_name_the_field(spec, pattern):
    with pytest.raises(ConfigError, match=pattern):
        make_speed_model(spec, 3, 0)


def test_bad_worker_count_and_seed():
    with pytest.raises(ConfigError, match=r"workers = 0 "):
        make_speed_model({}, 0, 0)
    with pytest.raises(ConfigError, match=r"seed = -1 "):
        make_speed_model({}, 2, -1)
    with pytest.raises(ConfigError, match=r"speed = 'fast' .*a table"):
        resolve_speed_spec("fast")  # type: ignore[arg-type]


def test_a_time_that_leaves_the_finite_range_at_run_time_names_the_worker():
    model = make_speed_model({"noise": "lognormal", "noise_scale": 1e307,
                              "factors": [1.0, 10.0]}, 2, 0)
    with np.errstate(over="ignore"), pytest.raises(ConfigError, match=r"speed \(worker 1 at now"):
        for _ in range(100):
            model.compute_time(1, 0.0)
