"""Closed-form gradients for the built-in classifiers: Linear (– ReLU – Linear)* + cross-entropy.

The built-in ``logistic`` (one ``nn.Linear``) and ``mlp`` (``Linear – ReLU – Linear``) are chains
of L dense layers with ReLU between them, trained on the mean cross-entropy of a minibatch of B
samples. Forward, with h₀ = X (B × d) and one-hot targets Y (B × C):

    z_l = h_{l-1} W_lᵀ + b_l,   h_l = relu(z_l)  (l < L),   P = softmax(z_L),
    L(x) = -(1/B) Σ_j log P[j, y_j] = -(1/B) ⟨log P, Y⟩.

Backward, by hand (no autograd graph, a few matrix products):

    G_L = ∂L/∂z_L = (P − Y) / B,
    ∂L/∂W_l = G_lᵀ h_{l-1},   ∂L/∂b_l = Σ_j G_l[j, :],
    G_{l-1} = (G_l W_l) ⊙ 1[z_{l-1} > 0]        (1[z > 0] = 1[h > 0], ReLU's subgradient 0 at 0).

For the mlp that is ∂L/∂W2 = (P − Y)ᵀ h / B, ∂L/∂W1 = ((P − Y) W2 ⊙ 1[h > 0])ᵀ X / B. This is
what autograd computes for ``F.cross_entropy`` of ``functional_call(module, ...)``, in the same
floating-point operations up to summation order. :class:`ClosedFormProblem` is a
:class:`~asyncopt.problems.supervised.SupervisedProblem` whose ``loss_and_grad`` uses it, on the
same minibatches (the parent's sampling) and with the same l2 term; evaluation, metrics,
pickling and export are the parent's.

Several workers at one model (k minibatches of B samples, all at the same x) share every product
with a weight matrix: the forward pass and the G_l W_l of the backward pass run once on the k·B
stacked samples, and only the per-worker weight gradients G_lᵀ h_{l-1} are k small products
(one batched product). :func:`cross_entropy_grads` returns them as the rows of one k × d matrix.

One worker's gradient runs as one TorchScript function (:func:`chain_grad`, the same operations
as :func:`cross_entropy_grad`, bit for bit): called from Python, the whole graph runs with the
GIL released, so a second thread (the simulator's ``ahead`` option) is not held up by the GIL
at each of its ~20 small operations. Where TorchScript is unavailable the same function runs as
plain Python.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asyncopt import tree
from asyncopt.errors import ConfigError
from asyncopt.problems import sparse
from asyncopt.problems.base import Gradient
from asyncopt.problems.supervised import SupervisedProblem, _build
from asyncopt.tree import Params

Layers = list[tuple[str, str]]
# ReLU's own backward (what autograd runs): zero where the output is ≤ 0, in one kernel
_relu_backward = torch.ops.aten.threshold_backward.default
SUPPORTED = "nn.Linear layers with biases, separated by nn.ReLU (a Linear or a Sequential)"


def dense_relu_layers(module: nn.Module) -> Layers | None:
    """The (weight, bias) parameter names of each layer of a Linear (– ReLU – Linear)* chain,
    or None for a module of any other shape."""
    if isinstance(module, nn.Linear):
        return [("weight", "bias")] if module.bias is not None else None
    if not isinstance(module, nn.Sequential) or len(module) % 2 == 0:
        return None
    children = list(module.named_children())
    linears, relus = children[0::2], children[1::2]
    if not all(isinstance(m, nn.Linear) and m.bias is not None for _, m in linears):
        return None
    if not all(type(m) is nn.ReLU for _, m in relus):
        return None
    return [(f"{name}.weight", f"{name}.bias") for name, _ in linears]


def has_closed_form(model: Callable[[], nn.Module]) -> bool:
    """Whether the factory ``model`` builds a dense–ReLU chain (built on a private RNG: the
    global one is left as it was)."""
    return dense_relu_layers(_build(model)) is not None


def cross_entropy_grad(params: Mapping[str, Tensor], layers: Layers, X: Tensor,
                       T: Tensor, out: Params | None = None) -> tuple[float, dict[str, Tensor]]:
    """The mean cross-entropy of the dense–ReLU chain ``layers`` on inputs ``X`` (B × d) and its
    gradient by parameter name (see the module docstring). ``T = −Y/B`` holds the one-hot
    targets, negated and divided by the batch size, so that L = ⟨log P, T⟩ and
    G_L = P/B + T cost one operation each. ``out``: tensors to write the gradient into (e.g.
    the leaves of a :class:`~asyncopt.tree.FlatParams`), returned as the gradient."""
    inputs = [X]
    for weight, bias in layers[:-1]:
        inputs.append(torch.relu(F.linear(inputs[-1], params[weight], params[bias])))
    weight, bias = layers[-1]
    log_p = torch.log_softmax(F.linear(inputs[-1], params[weight], params[bias]), 1)
    loss = torch.dot(log_p.view(-1), T.view(-1)).item()
    G = torch.add(T, log_p.exp_(), alpha=1.0 / len(X))  # log P's storage is reused for P
    grads: dict[str, Tensor] = {}
    for index in range(len(layers) - 1, -1, -1):
        weight, bias = layers[index]
        h = inputs[index]
        if out is None:
            grads[weight], grads[bias] = G.t().mm(h), G.sum(0)
        else:
            grads[weight] = torch.mm(G.t(), h, out=out[weight])
            grads[bias] = torch.sum(G, 0, out=out[bias])
        if index > 0:
            G = _relu_backward(G.mm(params[weight]), h, 0)
    return loss, grads


def cross_entropy_grads(params: Mapping[str, Tensor], layers: Layers, X: Tensor,
                        T: Tensor, count: int) -> tuple[list[float], Tensor]:
    """:func:`cross_entropy_grad` for ``count`` workers at the same ``params``: ``X`` and ``T``
    stack their minibatches (``count`` blocks of B rows). Returns the ``count`` losses and a
    ``count`` × d matrix whose row j is worker j's gradient flattened in ``params``' key
    order."""
    batch = len(X) // count
    inputs = [X]
    for weight, bias in layers[:-1]:
        inputs.append(torch.relu(F.linear(inputs[-1], params[weight], params[bias])))
    weight, bias = layers[-1]
    log_p = torch.log_softmax(F.linear(inputs[-1], params[weight], params[bias]), 1)
    losses = (log_p * T).view(count, -1).sum(1).tolist()
    G = torch.add(T, log_p.exp_(), alpha=1.0 / batch)
    grads: dict[str, Tensor] = {}
    for index in range(len(layers) - 1, -1, -1):
        weight, bias = layers[index]
        h = inputs[index]
        blocks = G.view(count, batch, -1)
        grads[weight] = torch.einsum("kbo,kbi->koi", blocks, h.view(count, batch, -1))
        grads[bias] = blocks.sum(1)
        if index > 0:
            G = _relu_backward(G.mm(params[weight]), h, 0)
    return losses, torch.cat([grads[name].view(count, -1) for name in params], 1)


def chain_grad(weights: list[Tensor], biases: list[Tensor], X: Tensor, T: Tensor,
               picks: Tensor, sizes: list[int], shapes: list[list[int]], where: list[int],
               wanted: list[bool], lowest: int) -> tuple[Tensor, Tensor, list[Tensor]]:
    """:func:`cross_entropy_grad` of the chain with layer l's ``weights[l]``, ``biases[l]`` on
    the rows ``picks`` of ``X`` and ``T``, written into one flat vector: returns the loss (a
    0-d tensor), the vector and its leaves (``sizes``, ``shapes``, in the parameters' order;
    layer l's weight and bias gradients are leaves ``where[2l]`` and ``where[2l + 1]``).

    Only the leaves with ``wanted[leaf]`` are computed (the others are left unwritten), and
    the backward pass stops at layer ``lowest``, the lowest layer with a wanted leaf: a block
    of the last layers costs the forward pass and the backward products down to it only."""
    inputs = [X.index_select(0, picks)]
    T = T.index_select(0, picks)
    last = len(weights) - 1
    for index in range(last):
        inputs.append(torch.relu(F.linear(inputs[index], weights[index], biases[index])))
    log_p = torch.log_softmax(F.linear(inputs[last], weights[last], biases[last]), 1)
    loss = torch.dot(log_p.view(-1), T.view(-1))
    G = torch.add(T, log_p.exp_(), alpha=1.0 / inputs[0].shape[0])
    flat = torch.empty(sum(sizes), dtype=G.dtype, device=G.device)
    pieces = flat.split_with_sizes(sizes)
    leaves = [pieces[leaf].view(shapes[leaf]) for leaf in range(len(shapes))]
    for index in range(last, lowest - 1, -1):
        h = inputs[index]
        if wanted[where[2 * index]]:
            torch.mm(G.t(), h, out=leaves[where[2 * index]])
        if wanted[where[2 * index + 1]]:
            torch.sum(G, [0], out=leaves[where[2 * index + 1]])
        if index > lowest:
            G = torch.ops.aten.threshold_backward(G.mm(weights[index]), h, 0.0)
    return loss, flat, leaves


@functools.cache
def _scripted() -> Callable[..., tuple[Tensor, Tensor, list[Tensor]]]:
    """:func:`chain_grad` compiled by TorchScript (deprecated in favour of torch.compile, whose
    compiled code keeps the GIL), or the plain function where that fails."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.script(chain_grad)
    except Exception:  # no TorchScript in this torch build: same operations, GIL held
        return chain_grad


class ClosedFormProblem(SupervisedProblem):
    """A SupervisedProblem for a dense–ReLU chain and ``F.cross_entropy`` (class-index targets)
    whose stochastic gradients are computed in closed form; identical minibatches, loss and
    gradient to the autograd path (to float rounding), several times cheaper for small models.
    Raises a ConfigError naming ``model`` if the model is not such a chain."""

    concurrent_gradients = True
    """Two ``loss_and_grad`` calls may run at once on two threads (they only read the problem's
    tensors and write fresh ones): the simulator's ``ahead`` option then computes on two cores."""

    def __init__(self, model: Callable[[], nn.Module], X_train: Tensor, y_train: Tensor,
                 shards: Sequence[np.ndarray], **kwargs: Any) -> None:
        super().__init__(model, F.cross_entropy, X_train, y_train, shards, **kwargs)

    def _setup(self) -> None:
        super()._setup()
        layers = dense_relu_layers(self.module)
        if layers is None:
            shape = ", ".join(type(child).__name__ for child in self.module.children())
            raise ConfigError("model", f"{type(self.module).__name__}({shape})",
                              "for closed-form gradients, " + SUPPORTED)
        self.layers = layers
        classes = self.module.get_parameter(layers[-1][0]).shape[0]
        # the shards stacked, each worker's data a view: k workers' minibatches are one gather
        sizes = [len(y) for _, y in self._shard_data]
        self._X = sparse.cat([X for X, _ in self._shard_data])
        # −Y/B (see cross_entropy_grad): a minibatch's targets are one gather
        self._T = F.one_hot(torch.cat([y for _, y in self._shard_data]), classes).to(
            self._X.dtype).div_(-self.batch_size)
        self._shard_data = [(X, y) for X, (_, y) in zip(self._X.split(sizes),
                                                         self._shard_data, strict=True)]
        self._targets = list(self._T.split(sizes))
        self._offsets = torch.tensor([0, *np.cumsum(sizes)[:-1].tolist()], dtype=torch.int64)
        named = dict(self.module.named_parameters())
        names = list(named)
        self._layout = ([named[name].numel() for name in names],
                        [list(named[name].shape) for name in names],
                        [names.index(name) for layer in layers for name in layer])
        self._names = names
        self._everything = [True] * len(names)

    def _batch(self, worker: int, picks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The (X, T, picks) that :func:`chain_grad` gathers its minibatch from: the shard's own
        tensors and ``picks``, or for sparse inputs (which TorchScript cannot take) the
        minibatch's rows already densified, in order."""
        X, T = self._shard_data[worker][0], self._targets[worker]
        if not isinstance(X, sparse.SparseRows):
            return X, T, picks
        return (X.index_select(0, picks), T.index_select(0, picks),
                torch.arange(len(picks), device=picks.device))

    def loss_and_grad(self, params: Params, worker: int,
                      generator: torch.Generator) -> tuple[float, Params]:
        """∇ of the mean loss over ``batch_size`` samples drawn with replacement from shard i,
        the parent's minibatch and l2 term, with the backward pass in closed form. The gradient
        is one flat vector (a :class:`~asyncopt.tree.FlatParams`): checking it for NaN and adding
        it to a gradient table are then one operation each, not one per leaf."""
        picks = self._picks(worker, generator)
        if list(params) != self._names:  # keys in another order: the Python path
            X = self._shard_data[worker][0].index_select(0, picks)
            first = next(iter(params.values()))
            grads = tree.unflatten(first.new_empty(tree.numel(params)), params)
            loss, _ = cross_entropy_grad(params, self.layers, X,
                                         self._targets[worker].index_select(0, picks), out=grads)
            return self._add_l2(loss, list(grads.values()), params), grads
        loss_tensor, flat, leaves = _scripted()(
            [params[weight] for weight, _ in self.layers],
            [params[bias] for _, bias in self.layers], *self._batch(worker, picks),
            *self._layout, self._everything, 0)
        value = self._add_l2(loss_tensor.item(), leaves, params)
        return value, tree.FlatParams(flat, dict(zip(params, leaves, strict=True)))

    def gradient_at(self, params: Params, worker: int) -> Gradient:
        """:meth:`loss_and_grad` at ``params``; asked for a block of leaves (``only``), only
        their products are formed and the backward pass stops at the lowest layer that has
        one (:func:`chain_grad`), on the same minibatch: the block's numbers are those of the
        full gradient, bit for bit."""
        if self._on is not None or list(params) != self._names:
            return super().gradient_at(params, worker)  # a device, or keys in another order

        def gradient(generator: torch.Generator, only: Sequence[str] | None = None
                     ) -> tuple[float, Params]:
            if only is None:
                return self.loss_and_grad(params, worker, generator)
            return self._block_grad(params, worker, generator, list(only))

        return gradient

    def _block_grad(self, params: Params, worker: int, generator: torch.Generator,
                    only: list[str]) -> tuple[float, Params]:
        picks = self._picks(worker, generator)
        wanted = [name in only for name in self._names]
        lowest = min(index for index, layer in enumerate(self.layers)
                     if any(name in only for name in layer))
        loss_tensor, _, leaves = _scripted()(
            [params[weight] for weight, _ in self.layers],
            [params[bias] for _, bias in self.layers], *self._batch(worker, picks),
            *self._layout, wanted, lowest)
        grads = {name: leaves[self._names.index(name)] for name in only}
        value = self._add_l2(loss_tensor.item(), list(grads.values()), params, only)
        return value, grads

    def loss_and_grads(self, params: Params, workers: Sequence[int],
                       generators: Sequence[torch.Generator]) -> list[tuple[float, Params]]:
        """The same gradients as :meth:`loss_and_grad` (to float rounding), one batched pass for
        all ``workers`` at ``params``; each gradient is a row of one matrix (tree.FlatParams)."""
        if len(workers) == 1:
            return [self.loss_and_grad(params, workers[0], generators[0])]
        picks = torch.cat([self._picks(worker, generator)
                           for worker, generator in zip(workers, generators, strict=True)])
        index = picks.add_(self._offsets[list(workers)].repeat_interleave(self.batch_size))
        X, T = self._X.index_select(0, index), self._T.index_select(0, index)
        losses, rows = cross_entropy_grads(params, self.layers, X, T, len(workers))
        out = []
        for loss, row in zip(losses, rows, strict=True):
            grads = tree.unflatten(row, params)
            out.append((self._add_l2(loss, list(grads.values()), params), grads))
        return out
