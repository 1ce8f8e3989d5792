"""Running statistics (BatchNorm buffers): recomputed from the data, never trained or averaged.

A BatchNorm layer normalizes with the *batch's* statistics in training mode and with its
running buffers ``running_mean`` / ``running_var`` in evaluation mode. Asynchronous training has
no single stream of batches to average them over (every worker sees its own shard, at its own
stale model), and the buffers are not parameters: no gradient, no rule moves them. So asyncopt
treats them as a *function of the parameters*:

* workers compute gradients in training mode (batch statistics); whatever the layers write into
  a worker's own module buffers is scratch, never sent and never read;
* the server's model is the parameters only (the rule, the protocol and the transport see
  nothing else); whenever the model is evaluated or handed to the user
  (``Result.model``, ``model.pt``), the buffers are recomputed at those parameters:

      μ = mean over batches b of  mean_b(h),   σ² = mean over batches b of  var_b(h)  (unbiased)

  where h is the layer's input over the training samples, cut into near-equal batches of a fixed
  random order — the cumulative average of ``torch.optim.swa_utils.update_bn``, and the exact
  population statistics when the training set fits in one batch. Every layer other than the
  normalization layers runs in evaluation mode meanwhile (no dropout noise in the statistics).

Recomputing is deterministic, costs one forward pass over the training set per evaluation, and
gives the model that a final ``update_bn`` would give, whatever the asynchrony was.

The other training-mode state of a forward pass is randomness: dropout draws from the global
RNG, so :func:`seeded` runs a worker's forward pass on a seed taken from the worker's own
generator (same seed, same masks, in the simulator and in worker processes alike).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.dropout import _DropoutNd

from asyncopt.tree import Params


def norm_layers(module: nn.Module) -> list[tuple[str, _NormBase]]:
    """The layers that keep running statistics (BatchNorm, InstanceNorm with tracking)."""
    return [(name, sub) for name, sub in module.named_modules()
            if isinstance(sub, _NormBase) and sub.track_running_stats]


def has_dropout(module: nn.Module) -> bool:
    """Whether a training-mode forward pass draws random numbers through dropout modules."""
    return any(isinstance(sub, _DropoutNd) for sub in module.modules())


@contextmanager
def seeded(generator: torch.Generator) -> Iterator[None]:
    """Run with the global CPU RNG seeded from ``generator`` (dropout draws from it), then put
    the global state back: the same worker stream gives the same masks, in every runtime."""
    state = torch.default_generator.get_state()
    torch.default_generator.manual_seed(int(torch.randint(2**62, (), generator=generator)))
    try:
        yield
    finally:
        torch.default_generator.set_state(state)


@torch.no_grad()
def recompute(module: nn.Module, params: Params, batches: Iterable[Tensor]) -> Params:
    """The running buffers of ``module``'s normalization layers at ``params``, from ``batches``.

    ``module`` is evaluated functionally, so its own buffers are left untouched; the answer maps
    buffer names (``"1.running_mean"``, ...) to fresh tensors, empty when there is no such layer.
    """
    layers = norm_layers(module)
    if not layers:
        return {}
    buffers: Params = {}
    for name, layer in layers:
        prefix = f"{name}." if name else ""
        buffers[prefix + "running_mean"] = torch.zeros_like(layer.running_mean)
        buffers[prefix + "running_var"] = torch.ones_like(layer.running_var)
        buffers[prefix + "num_batches_tracked"] = torch.zeros_like(layer.num_batches_tracked)
    saved = [(layer, layer.momentum, layer.training) for _, layer in layers]
    mode = module.training
    try:
        module.eval()
        for _, layer in layers:
            layer.momentum = None  # cumulative average over the batches
            layer.train()
        state = {**params, **buffers}
        for X in batches:
            functional_call(module, state, (X,))
    finally:
        module.train(mode)
        for layer, momentum, training in saved:
            layer.momentum = momentum
            layer.train(training)
    return buffers
