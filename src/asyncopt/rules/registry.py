"""Rules by name, for configuration files and the command line.

A spec is a table ``{"name": ..., **options}``, e.g. ``{"name": "amsgrad", "lr": 1e-3}``. Every
rule takes its alias's options (:mod:`asyncopt.rules.aliases`, defaults read from the alias's
signature) plus four generic ones:

* ``schedule`` ("constant" | "inverse_sqrt" | "capped_inverse_sqrt" | "cosine") turns ``lr``
  into ``α_k = lr``, ``lr/√k``, ``min(lr/√k, lr_max)`` (``lr_max`` only with the capped one) or
  a cosine decay to ``final_lr`` (default 0) over ``decay_steps`` steps (both only with it);
* ``warmup_steps`` (integer ≥ 0, 0 = none): a linear warmup over that many steps before the
  schedule (:func:`~asyncopt.rules.schedules.linear_warmup`, torch's LinearLR defaults);
* ``max_delay`` (integer ≥ 0, or absent): prepend ``drop_if_stale(max_delay)``, so gradients with
  delay δ > max_delay are dropped before any state is touched;
* ``delay_adaptive`` (bool): append ``scale_by_delay(num_workers)``, so the final step is scaled
  by ``n / max(n, δ)``.

Each name is also a function of :mod:`asyncopt.rules` (``rules.momentum(lr=0.05)``).

Every value is validated here, once, with errors naming ``rule.<key>``, the value and what is
allowed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from asyncopt.errors import check, check_choice, check_float, check_int, check_keys
from asyncopt.rules import aliases
from asyncopt.rules.base import Rule, Schedule, chain
from asyncopt.rules.delay import drop_if_stale, scale_by_delay
from asyncopt.rules.schedules import (
    SCHEDULES,
    capped_inverse_sqrt,
    cosine,
    inverse_sqrt,
    linear_warmup,
)

Validator = Callable[[str, Any], Any]


def _defaults(builder: Callable[..., Rule], **overrides: Any) -> dict[str, Any]:
    signature = inspect.signature(builder)
    return {**{k: p.default for k, p in signature.parameters.items()}, **overrides}


RULES: dict[str, tuple[Callable[..., Rule], dict[str, Any]]] = {
    "sgd": (aliases.sgd, _defaults(aliases.sgd)),
    "momentum": (aliases.momentum, _defaults(aliases.momentum)),
    "nesterov": (aliases.nesterov, _defaults(aliases.nesterov)),
    "adagrad": (aliases.adagrad, _defaults(aliases.adagrad)),
    "adagrad_norm": (aliases.adagrad_norm, _defaults(aliases.adagrad_norm)),
    "rmsprop": (aliases.rmsprop, _defaults(aliases.rmsprop)),
    "adam": (aliases.adam, _defaults(aliases.adam)),
    "adamw": (aliases.adamw, _defaults(aliases.adamw)),
    "amsgrad": (aliases.amsgrad, _defaults(aliases.amsgrad)),
    "normalized_sgd": (aliases.normalized_sgd, _defaults(aliases.normalized_sgd)),
}
"""name -> (alias, its options with their defaults)."""

GENERIC: dict[str, Any] = {"schedule": "constant", "lr_max": None, "decay_steps": None,
                           "final_lr": None, "warmup_steps": 0, "max_delay": None,
                           "delay_adaptive": False}
"""Options every rule accepts (``None`` = off)."""


def _positive(field: str, value: Any) -> float:
    return check_float(field, value, 0.0, strict_minimum=True)


def _nonnegative(field: str, value: Any) -> float:
    return check_float(field, value, 0.0)


def _fraction(field: str, value: Any) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1
    check(ok, field, value, "a number in [0, 1)")
    return float(value)


def _flag(field: str, value: Any) -> bool:
    check(isinstance(value, bool), field, value, "true or false")
    return bool(value)


def _optional(validator: Validator) -> Validator:
    return lambda field, value: None if value is None else validator(field, value)


def _choice(choices: tuple[str, ...]) -> Validator:
    return lambda field, value: check_choice(field, value, choices)


VALIDATORS: dict[str, Validator] = {
    "lr": _positive, "lr_max": _optional(_positive), "seed_value": _positive,
    "final_lr": _optional(_nonnegative),
    "decay_steps": _optional(lambda field, value: check_int(field, value, 1)),
    "warmup_steps": lambda field, value: check_int(field, value, 0),
    "momentum": _fraction, "alpha": _fraction, "b1": _fraction, "b2": _fraction,
    "beta": _fraction, "weight_decay": _nonnegative, "initial_accumulator_value": _nonnegative,
    "eps": _nonnegative, "nesterov": _flag, "amsgrad": _flag,
    "bias_correction": _flag, "delay_adaptive": _flag,
    "kind": _choice(aliases.NORMALIZATIONS), "schedule": _choice(SCHEDULES),
    "steps": lambda field, value: check_int(field, value, 1),
    "max_delay": _optional(lambda field, value: check_int(field, value, 0)),
}
"""key -> check returning the normalized value (raises ConfigError naming ``field``)."""


def rule_names() -> list[str]:
    return sorted(RULES)


def resolve_rule_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec with the name checked, unknown keys refused, every value validated and every
    default filled in (the form a run directory records). Idempotent."""
    check(isinstance(spec, Mapping), "rule", spec, "a table, e.g. {name = 'sgd', lr = 0.01}")
    name = check_choice("rule.name", spec.get("name", "sgd"), RULES)
    defaults = {**RULES[name][1], **GENERIC}
    options = {k: v for k, v in spec.items() if k != "name"}
    check_keys("rule", options, defaults)
    merged = {**defaults, **options}
    if name == "amsgrad" and merged["eps"] is None:
        merged["eps"] = aliases.default_amsgrad_eps(
            _flag("rule.bias_correction", merged["bias_correction"]))
    resolved = {k: VALIDATORS[k](f"rule.{k}", v) for k, v in merged.items()}
    if resolved.get("nesterov"):
        check(resolved["momentum"] > 0, "rule.nesterov", True,
              f"true only with rule.momentum > 0 (got {resolved['momentum']})")
    capped = resolved["schedule"] == "capped_inverse_sqrt"
    check((resolved["lr_max"] is not None) == capped, "rule.lr_max", resolved["lr_max"],
          "a number > 0 with rule.schedule = 'capped_inverse_sqrt', absent otherwise")
    decaying = resolved["schedule"] == "cosine"
    check((resolved["decay_steps"] is not None) == decaying, "rule.decay_steps",
          resolved["decay_steps"], "an integer >= 1 with rule.schedule = 'cosine' (the steps "
          "from lr down to final_lr), absent otherwise")
    check(resolved["final_lr"] is None or decaying, "rule.final_lr", resolved["final_lr"],
          "absent unless rule.schedule = 'cosine'")
    if decaying and resolved["final_lr"] is None:
        resolved["final_lr"] = 0.0
    return {"name": name, **resolved}


RULE_DEFAULTS: dict[str, dict[str, Any]] = {name: resolve_rule_spec({"name": name})
                                            for name in RULES}
"""name -> its resolved spec with every default (what ``{"name": name}`` resolves to)."""


def make_rule(spec: Mapping[str, Any], num_workers: int) -> Rule:
    """The rule a spec names, wrapped in the generic delay blocks it asks for."""
    options = resolve_rule_spec(spec)
    num_workers = check_int("workers", num_workers, 1)
    builder = RULES[options.pop("name")][0]
    generic = {k: options.pop(k) for k in GENERIC}
    options["lr"] = _schedule(options["lr"], generic)
    rule = builder(**options)
    if generic["max_delay"] is not None:
        rule = chain(drop_if_stale(generic["max_delay"]), rule)
    if generic["delay_adaptive"]:
        rule = chain(rule, scale_by_delay(num_workers))
    return rule


def _schedule(lr: float, generic: dict[str, Any]) -> float | Schedule:
    name, lr_max = generic["schedule"], generic["lr_max"]
    schedule: float | Schedule = lr
    if name == "inverse_sqrt":
        schedule = inverse_sqrt(lr)
    elif name == "capped_inverse_sqrt" and lr_max is not None:  # resolve requires lr_max here
        schedule = capped_inverse_sqrt(lr, lr_max)
    elif name == "cosine":
        schedule = cosine(lr, generic["decay_steps"], generic["final_lr"])
    if generic["warmup_steps"]:
        schedule = linear_warmup(schedule, generic["warmup_steps"])
    return schedule
