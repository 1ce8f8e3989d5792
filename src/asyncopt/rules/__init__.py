"""Rules: how a gradient becomes a step (optax-style init/update pairs)."""

from asyncopt.rules.aliases import (
    adagrad,
    adagrad_norm,
    adam,
    adamw,
    amsgrad,
    momentum,
    nesterov,
    normalized_sgd,
    rmsprop,
    sgd,
)
from asyncopt.rules.base import Rule, Schedule, apply_updates, as_rule, chain, stateless
from asyncopt.rules.delay import drop_if_stale, scale_by_delay
from asyncopt.rules.normalize import newton_schulz, normalize, orthogonalize
from asyncopt.rules.registry import RULE_DEFAULTS, make_rule, resolve_rule_spec, rule_names
from asyncopt.rules.schedules import (
    capped_inverse_sqrt,
    constant,
    cosine,
    inverse_sqrt,
    linear_warmup,
)
from asyncopt.rules.torch_optim import from_torch
from asyncopt.rules.transforms import (
    add_decayed_weights,
    scale,
    scale_by_adagrad,
    scale_by_adagrad_norm,
    scale_by_adam,
    scale_by_amsgrad,
    scale_by_learning_rate,
    scale_by_rms,
    trace,
)

__all__ = [
    "RULE_DEFAULTS", "Rule", "Schedule", "adagrad", "adagrad_norm", "adam", "adamw",
    "add_decayed_weights", "amsgrad", "apply_updates", "as_rule", "capped_inverse_sqrt", "chain",
    "constant", "cosine", "drop_if_stale", "from_torch", "inverse_sqrt", "linear_warmup",
    "make_rule", "momentum", "nesterov", "newton_schulz", "normalize", "normalized_sgd",
    "orthogonalize", "resolve_rule_spec", "rmsprop", "rule_names", "scale", "scale_by_adagrad",
    "scale_by_adagrad_norm", "scale_by_adam", "scale_by_amsgrad", "scale_by_delay",
    "scale_by_learning_rate", "scale_by_rms", "sgd", "stateless", "trace",
]
