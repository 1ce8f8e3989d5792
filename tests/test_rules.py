"""Rules: every registered rule through shared property checks, then block-specific behaviour."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.utils._pytree as pytree

import asyncopt.rules
from asyncopt.errors import ConfigError
from asyncopt.rules import (
    RULE_DEFAULTS,
    aliases,
    apply_updates,
    capped_inverse_sqrt,
    chain,
    constant,
    cosine,
    drop_if_stale,
    from_torch,
    inverse_sqrt,
    linear_warmup,
    make_rule,
    newton_schulz,
    normalize,
    orthogonalize,
    resolve_rule_spec,
    rule_names,
    scale_by_amsgrad,
    scale_by_delay,
)
from asyncopt.rules.base import Rule
from asyncopt.rules.normalize import CUBIC_COEFFICIENTS
from asyncopt.rules.transforms import AdamState
from asyncopt.tree import Params, clone, norm

WORKERS = 4
LR = {"sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "adagrad": 0.5, "adagrad_norm": 1.0,
      "rmsprop": 0.02, "adam": 0.05, "adamw": 0.05, "amsgrad": 0.05, "normalized_sgd": 0.05}
DELAYED = {"max_delay": 3, "delay_adaptive": True}


def _state_tensors(state: object) -> list[torch.Tensor]:
    """Every tensor in a rule state (NamedTuples, dicts), in pytree order."""
    return [t for t in pytree.tree_leaves(state) if isinstance(t, torch.Tensor)]


def _tree(seed: int, scale: float = 1.0) -> Params:
    gen = torch.Generator().manual_seed(seed)
    return {"w": scale * torch.randn(4, 3, generator=gen),
            "b": scale * torch.randn(3, generator=gen)}


def _quadratic() -> tuple[Params, Params]:
    """f(x) = ½ Σ a ⊙ (x − c)² over a two-leaf tree: curvatures a in [0.5, 2], minimizer c."""
    gen = torch.Generator().manual_seed(1)
    curv = {k: 0.5 + 1.5 * torch.rand(v.shape, generator=gen) for k, v in _tree(0).items()}
    return curv, _tree(2, scale=2.0)


def _f(x: Params, curv: Params, center: Params) -> float:
    return sum(float((0.5 * curv[k] * (x[k] - center[k]) ** 2).sum()) for k in x)


def _grad(x: Params, curv: Params, center: Params) -> Params:
    return {k: curv[k] * (x[k] - center[k]) for k in x}


TORCH_RULES = {  # rules.from_torch through the same checks as the registry's rules
    "from_torch-Adam": lambda: from_torch(torch.optim.Adam, lr=0.05),
    "from_torch-SGD-delayed": lambda: chain(
        drop_if_stale(3), from_torch(torch.optim.SGD, lr=0.1, momentum=0.5), scale_by_delay(2)),
}
SPECS = ([pytest.param({"name": n}, id=n) for n in rule_names()]
         + [pytest.param({"name": n, "schedule": "inverse_sqrt", **DELAYED}, id=f"{n}-delayed")
            for n in rule_names()]
         + [pytest.param(name, id=name) for name in TORCH_RULES])


def _rule(spec: dict[str, Any] | str, workers: int = WORKERS) -> Rule:
    return TORCH_RULES[spec]() if isinstance(spec, str) else make_rule(spec, workers)


@pytest.mark.parametrize("spec", SPECS)
def test_property_update_is_pure_finite_and_keeps_state_in_place(spec: dict[str, Any]) -> None:
    rule = _rule(spec)
    params = _tree(0)
    state = rule.init(params)
    tensors = _state_tensors(state)
    assert tensors, "every rule has at least a step counter"
    for t in tensors:
        t.share_memory_()
    with pytest.raises(TypeError):
        rule.update(_tree(1), state, params, 0, 0)  # delay and worker are keyword-only
    for step in range(5):
        grads, before_params = _tree(10 + step), clone(params)
        before_grads, before_state = clone(grads), [t.clone() for t in tensors]
        updates, state = rule.update(grads, state, params, delay=step % 3, worker=step % WORKERS)
        assert updates is not None and list(updates) == list(params)
        assert all(updates[k].shape == params[k].shape for k in params)
        assert all(bool(torch.isfinite(u).all()) for u in updates.values())
        assert all(torch.equal(grads[k], before_grads[k]) for k in grads)
        assert all(torch.equal(params[k], before_params[k]) for k in params)
        after = _state_tensors(state)
        assert [id(t) for t in after] == [id(t) for t in tensors]
        assert all(t.is_shared() for t in after)
        assert any(not torch.equal(t, b) for t, b in zip(after, before_state, strict=True))
        apply_updates(params, updates)


@pytest.mark.parametrize("extra", [{}, DELAYED], ids=["plain", "delayed"])
@pytest.mark.parametrize("name", [*rule_names(), "normalized_sgd:stale", "normalized_sgd:ema",
                                  "normalized_sgd:newton_schulz", *TORCH_RULES])
def test_property_decreases_a_convex_quadratic(name: str, extra: dict[str, Any]) -> None:
    curv, center = _quadratic()
    name, _, kind = name.partition(":")
    options = {"kind": kind, "momentum": 0.5} if kind else {}
    # 2 workers: delays 4..6 are dropped (max_delay 3), delay 3 is scaled by 2/3
    spec = name if name in TORCH_RULES else {"name": name, "lr": LR[name], **options, **extra}
    rule = _rule(spec, 2)
    x = {k: torch.zeros_like(v) for k, v in center.items()}
    state, start = rule.init(x), _f(x, curv, center)
    for step in range(300):
        updates, state = rule.update(_grad(x, curv, center), state, x, delay=step % 7,
                                     worker=step % 2)
        if updates is not None:
            apply_updates(x, updates)
    assert _f(x, curv, center) < 0.05 * start


@pytest.mark.parametrize("delay, factor", [(0, 1.0), (3, 1.0), (4, 1.0), (5, 0.8), (8, 0.5),
                                           (100, 0.04)])
def test_scale_by_delay_is_n_over_max_n_delay(delay: int, factor: float) -> None:
    grads = _tree(0)
    rule = scale_by_delay(WORKERS)
    updates, _ = rule.update(grads, rule.init(grads), grads, delay=delay, worker=0)
    assert updates is not None
    for k in grads:
        torch.testing.assert_close(updates[k], factor * grads[k], rtol=1e-7, atol=0)


def test_delay_adaptive_scales_the_final_step_not_the_momentum_buffer() -> None:
    rule = make_rule({"name": "momentum", "lr": 1.0, "delay_adaptive": True}, WORKERS)
    grads = _tree(0)
    state = rule.init(grads)
    updates, state = rule.update(grads, state, grads, delay=8, worker=0)
    assert updates is not None
    torch.testing.assert_close(updates["w"], -0.5 * grads["w"])
    buffers = [t for t in _state_tensors(state) if t.shape == grads["w"].shape]
    assert len(buffers) == 1 and torch.equal(buffers[0], grads["w"])


def test_drop_if_stale_drops_above_max_delay_and_leaves_later_state_untouched() -> None:
    rule = make_rule({"name": "momentum", "max_delay": 2}, WORKERS)
    params = _tree(0)
    state = rule.init(params)
    updates, state = rule.update(_tree(1), state, params, delay=0, worker=0)
    assert updates is not None
    snapshot = [t.clone() for t in _state_tensors(state)]
    dropped, state = rule.update(_tree(2), state, params, delay=3, worker=1)
    assert dropped is None
    assert all(torch.equal(t, s) for t, s in zip(_state_tensors(state), snapshot, strict=True))
    kept, state = rule.update(_tree(2), state, params, delay=2, worker=1)
    assert kept is not None
    assert not all(torch.equal(t, s) for t, s in zip(_state_tensors(state), snapshot, strict=True))
    gate = drop_if_stale(0)
    assert gate.update(params, gate.init(params), params, delay=1, worker=0)[0] is None


def test_paper_amsgrad_vhat_never_decreases_and_zero_vhat_gives_zero_step() -> None:
    rule = aliases.amsgrad(lr=0.1, b2=0.5)  # the paper's form: no bias correction, ε = 0
    params = {"w": torch.zeros(5)}
    state = rule.init(params)
    v, v_hat = state.states[0].nu["w"], state.states[0].nu_max["w"]
    previous, running_max = v_hat.clone(), v.clone()
    for step in range(20):
        g = torch.randn(5, generator=torch.Generator().manual_seed(step)) * (10.0 if step < 3
                                                                              else 0.01)
        g[0] = 0.0  # coordinate 0 never sees a gradient: v̂ stays 0
        updates, state = rule.update({"w": g}, state, params, delay=0, worker=0)
        assert updates is not None and bool(torch.isfinite(updates["w"]).all())
        assert bool((v_hat >= previous).all())
        running_max = torch.maximum(running_max, v)
        assert torch.equal(v_hat, running_max)
        assert updates["w"][0] == 0.0 and v_hat[0] == 0.0
        if step == 0:  # no bias correction: −lr (1−b1) g / √((1−b2) g²)
            expected = -0.1 * 0.1 / math.sqrt(0.5) * torch.sign(g)
            torch.testing.assert_close(updates["w"], expected)
        previous = v_hat.clone()
    assert bool((v[1:] < 1e-3 * v_hat[1:]).all()), "v forgot the large early gradients, v̂ did not"


def test_amsgrad_with_eps_adds_eps_to_the_root() -> None:
    rule = scale_by_amsgrad(b1=0.0, b2=0.0, eps=0.5)
    g = {"w": torch.tensor([0.0, 2.0])}
    updates, _ = rule.update(g, rule.init(g), g, delay=0, worker=0)
    assert updates is not None
    torch.testing.assert_close(updates["w"], torch.tensor([0.0, 2.0 / 2.5]))


@pytest.mark.parametrize("spec", [{"name": "adam", "lr": 0.1},
                                  {"name": "amsgrad", "lr": 0.1, "bias_correction": True}])
def test_adam_family_counts_steps_per_leaf_for_block_steps(spec: dict[str, Any]) -> None:
    # a block-coordinate step (lock-free PASSM+ / Gratton–Toint) advances only its leaves'
    # counters: a leaf's first step gets the first-step bias correction, |u| = lr·|g|/(|g| + ε),
    # however many steps the other leaves took (with one shared k it would be ~(1 − β1) lr)
    rule = make_rule(spec, 1)
    params = {"a": torch.zeros(3, dtype=torch.float64), "b": torch.zeros(2, dtype=torch.float64)}
    state = rule.init(params)
    for _ in range(50):
        _, state = rule.update({"a": torch.ones(3, dtype=torch.float64)}, state, params,
                               delay=0, worker=0)
    updates, state = rule.update({"b": torch.full((2,), 2.0, dtype=torch.float64)}, state,
                                 params, delay=0, worker=0)
    assert set(updates) == {"b"}
    torch.testing.assert_close(updates["b"].abs(), torch.full((2,), 0.1, dtype=torch.float64),
                               atol=1e-6, rtol=0)
    moments = next(s for s in state.states if isinstance(s, AdamState))
    assert {k: int(c) for k, c in moments.count.items()} == {"a": 50, "b": 1}


def test_adagrad_norm_uses_one_scalar_weight_including_the_current_gradient() -> None:
    rule = aliases.adagrad_norm(lr=1.0, seed_value=1e-2)
    g1, g2 = _tree(0), _tree(1)
    state = rule.init(g1)
    u1, state = rule.update(g1, state, g1, delay=0, worker=0)
    u2, state = rule.update(g2, state, g1, delay=0, worker=0)
    assert u1 is not None and u2 is not None
    w1 = math.sqrt(1e-2 + norm(g1) ** 2)
    w2 = math.sqrt(1e-2 + norm(g1) ** 2 + norm(g2) ** 2)
    for k in g1:
        torch.testing.assert_close(u1[k], -g1[k] / w1)
        torch.testing.assert_close(u2[k], -g2[k] / w2)


def _run(rule: Rule, grads: list[Params]) -> list[Params]:
    state, out = rule.init(grads[0]), []
    for g in grads:
        updates, state = rule.update(g, state, grads[0], delay=0, worker=0)
        assert updates is not None
        out.append(updates)
    return out


def test_exact_normalization_gives_steps_of_length_lr() -> None:
    grads = [_tree(s, scale=10.0 ** (s - 2)) for s in range(5)]
    for updates in _run(aliases.normalized_sgd(lr=0.3, momentum=0.5), grads):
        assert norm(updates) == pytest.approx(0.3, rel=1e-6)
    zero = {"w": torch.zeros(3)}
    assert torch.equal(_run(normalize(), [zero])[0]["w"], torch.zeros(3))


def test_stale_normalization_divides_by_the_previous_norm() -> None:
    g1, g2, g3 = _tree(0), _tree(1, scale=3.0), _tree(2, scale=0.5)
    u1, u2, u3 = _run(normalize("stale"), [g1, g2, g3])
    assert norm(u1) == pytest.approx(1.0, rel=1e-6)
    assert norm(u2) == pytest.approx(norm(g2) / norm(g1), rel=1e-6)
    assert norm(u3) == pytest.approx(norm(g3) / norm(g2), rel=1e-6)


def test_ema_normalization_divides_by_the_bias_corrected_average_norm() -> None:
    beta = 0.8
    g1, g2 = _tree(0), _tree(1, scale=3.0)
    u1, u2 = _run(normalize("ema", beta=beta), [g1, g2])
    estimate = (beta * (1 - beta) * norm(g1) + (1 - beta) * norm(g2)) / (1 - beta**2)
    assert norm(u1) == pytest.approx(1.0, rel=1e-6)
    assert norm(u2) == pytest.approx(norm(g2) / estimate, rel=1e-6)
    assert 1.0 < norm(u2) < norm(g2) / norm(g1)


def test_newton_schulz_approximates_the_polar_factor() -> None:
    gen = torch.Generator().manual_seed(0)
    matrix = torch.randn(16, 8, generator=gen, dtype=torch.float64)
    muon = torch.linalg.svdvals(newton_schulz(matrix, steps=5))
    assert bool((muon > 0.6).all()) and bool((muon < 1.3).all())
    u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    exact = newton_schulz(matrix, steps=40, coefficients=CUBIC_COEFFICIENTS)
    torch.testing.assert_close(exact, u @ vh, rtol=0, atol=1e-6)
    torch.testing.assert_close(newton_schulz(matrix.T, steps=40, coefficients=CUBIC_COEFFICIENTS),
                               (u @ vh).T, rtol=0, atol=1e-6)


def test_orthogonalize_handles_matrices_tensors_and_vectors() -> None:
    gen = torch.Generator().manual_seed(0)
    grads = {"conv": torch.randn(6, 3, 2, 2, generator=gen), "w": torch.randn(5, 7, generator=gen),
             "b": torch.randn(5, generator=gen), "zero": torch.zeros(4, 4)}
    (updates,) = _run(orthogonalize(steps=5), [grads])
    assert all(updates[k].shape == grads[k].shape for k in grads)
    for key in ("conv", "w"):
        sv = torch.linalg.svdvals(updates[key].reshape(grads[key].shape[0], -1))
        assert bool((sv > 0.6).all()) and bool((sv < 1.3).all())
    assert float(updates["b"].norm()) == pytest.approx(1.0, rel=1e-6)
    assert torch.equal(updates["zero"], torch.zeros(4, 4))


def test_schedules() -> None:
    assert [constant(0.1)(k) for k in (1, 100)] == [0.1, 0.1]
    assert [inverse_sqrt(1.0)(k) for k in (1, 4, 100)] == [1.0, 0.5, 0.1]
    capped = capped_inverse_sqrt(10.0, 0.01)
    assert capped(1) == 0.01 and capped(10**6) == 0.01 and capped(4 * 10**6) == 0.005
    rule = make_rule({"name": "sgd", "lr": 1.0, "schedule": "inverse_sqrt"}, WORKERS)
    ones = {"x": torch.ones(1)}
    steps = [float(u["x"]) for u in _run(rule, [ones] * 4)]
    assert steps == pytest.approx([-1.0, -1 / math.sqrt(2), -1 / math.sqrt(3), -0.5])


def test_cosine_decays_to_its_final_value_and_stays_there() -> None:
    schedule = cosine(1.0, decay_steps=4, final_lr=0.2)
    assert [schedule(k) for k in (1, 3, 5, 6, 100)] == pytest.approx([1.0, 0.6, 0.2, 0.2, 0.2])


def test_linear_warmup_ramps_up_to_the_schedule_then_starts_it() -> None:
    assert [linear_warmup(0.4, 4, start_factor=0.0)(k) for k in range(1, 7)] == \
        pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.4])
    after = linear_warmup(inverse_sqrt(1.0), 2, start_factor=0.5)
    assert [after(k) for k in (1, 2, 3, 6)] == pytest.approx([0.5, 0.75, 1.0, 0.5])
    with pytest.raises(ConfigError, match=r"warmup_steps = 0 .*>= 1"):
        linear_warmup(0.1, 0)


def test_registry_schedules_cosine_with_warmup_and_any_callable_is_a_schedule() -> None:
    spec = {"name": "sgd", "lr": 1.0, "schedule": "cosine", "decay_steps": 4, "final_lr": 0.2,
            "warmup_steps": 2}
    ones = {"x": torch.ones(1)}
    steps = [-float(u["x"]) for u in _run(make_rule(spec, WORKERS), [ones] * 8)]
    warm, decay = linear_warmup(cosine(1.0, 4, 0.2), 2), cosine(1.0, 4, 0.2)
    assert steps == pytest.approx([warm(k) for k in range(1, 9)])
    assert steps[2:] == pytest.approx([decay(k) for k in range(1, 7)])
    assert resolve_rule_spec({"name": "adamw", "schedule": "cosine",
                              "decay_steps": 9})["final_lr"] == 0.0
    halving = [-float(u["x"]) for u in _run(asyncopt.rules.sgd(lambda k: 0.5**k), [ones] * 3)]
    assert halving == [0.5, 0.25, 0.125]


def test_every_registered_rule_is_a_function_of_the_package_with_the_same_defaults() -> None:
    grads = [_tree(10 + step) for step in range(5)]
    for name in rule_names():
        assert name in asyncopt.rules.__all__, name
        alias = getattr(asyncopt.rules, name)()
        ours, registered = _run(alias, grads), _run(make_rule({"name": name}, WORKERS), grads)
        for a, b in zip(ours, registered, strict=True):
            assert all(torch.equal(a[k], b[k]) for k in a), name


def test_resolved_spec_has_every_default_and_is_idempotent() -> None:
    resolved = resolve_rule_spec({"name": "amsgrad", "bias_correction": True, "lr": 1})
    assert resolved["eps"] == 1e-8 and resolved["lr"] == 1.0 and isinstance(resolved["lr"], float)
    assert resolve_rule_spec(resolved) == resolved
    assert RULE_DEFAULTS["amsgrad"]["eps"] == 0.0 and RULE_DEFAULTS["momentum"]["momentum"] == 0.9
    assert resolve_rule_spec({"lr": 0.5})["name"] == "sgd"
    assert set(RULE_DEFAULTS) == set(rule_names()) and "normalized_sgd" in rule_names()
    assert {"schedule", "lr_max", "max_delay", "delay_adaptive"} <= set(RULE_DEFAULTS["adam"])


@pytest.mark.parametrize("spec, pattern", [
    ({"name": "sgdd"}, r"rule\.name = 'sgdd' .*one of adagrad, .*normalized_sgd, .*sgd"),
    ({"name": "adam", "beta1": 0.9}, r"rule = 'beta1' .*known keys are .*b1, b2"),
    ({"name": "adam", "lr": -1}, r"rule\.lr = -1 .*> 0"),
    ({"name": "adam", "lr": "fast"}, r"rule\.lr = 'fast' .*finite number"),
    ({"name": "adam", "b1": 1.0}, r"rule\.b1 = 1\.0 .*\[0, 1\)"),
    ({"name": "momentum", "momentum": -0.1}, r"rule\.momentum = -0\.1 .*\[0, 1\)"),
    ({"name": "adagrad", "eps": -1e-3}, r"rule\.eps = -0\.001 .*>= 0"),
    ({"name": "adagrad_norm", "seed_value": 0}, r"rule\.seed_value = 0 .*> 0"),
    ({"name": "sgd", "nesterov": True}, r"rule\.nesterov = True .*momentum > 0"),
    ({"name": "adam", "amsgrad": "yes"}, r"rule\.amsgrad = 'yes' .*true or false"),
    ({"name": "normalized_sgd", "kind": "approx"}, r"rule\.kind = 'approx' .*ema, exact"),
    ({"name": "normalized_sgd", "steps": 0}, r"rule\.steps = 0 .*>= 1"),
    ({"name": "sgd", "schedule": "step"},
     r"rule\.schedule = 'step' .*capped_inverse_sqrt, constant, cosine"),
    ({"name": "sgd", "schedule": "cosine"}, r"rule\.decay_steps = None .*>= 1 with .*cosine"),
    ({"name": "sgd", "decay_steps": 10}, r"rule\.decay_steps = 10 .*absent otherwise"),
    ({"name": "sgd", "final_lr": 0.0}, r"rule\.final_lr = 0\.0 .*absent unless"),
    ({"name": "sgd", "schedule": "cosine", "decay_steps": 0}, r"rule\.decay_steps = 0 .*>= 1"),
    ({"name": "adamw", "warmup_steps": 1.5}, r"rule\.warmup_steps = 1\.5 .*integer >= 0"),
    ({"name": "momentum", "nesterov": True}, r"rule = 'nesterov' .*known keys"),
    ({"name": "sgd", "schedule": "capped_inverse_sqrt"}, r"rule\.lr_max = None .*capped"),
    ({"name": "sgd", "lr_max": 0.1}, r"rule\.lr_max = 0\.1 .*absent otherwise"),
    ({"name": "sgd", "max_delay": -1}, r"rule\.max_delay = -1 .*>= 0"),
    ({"name": "sgd", "delay_adaptive": 1}, r"rule\.delay_adaptive = 1 .*true or false"),
    ("sgd", r"rule = 'sgd' .*a table"),
])
def test_registry_errors_name_the_field_the_value_and_what_is_allowed(spec: Any,
                                                                      pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        make_rule(spec, WORKERS)


def test_make_rule_checks_the_number_of_workers() -> None:
    with pytest.raises(ConfigError, match=r"workers = 0 .*>= 1"):
        make_rule({"name": "sgd", "delay_adaptive": True}, 0)
