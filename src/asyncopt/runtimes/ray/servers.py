"""``runtime_options.servers = K ≥ 2`` on Ray: K server actors, one per block of the model.

The model is cut into K blocks by the one layout of every runtime
(:class:`~asyncopt.runtimes.common.layout.Layout`: whole tensors by default, or K equal ranges
of the flat vector ``x ∈ ℝᴺ``); server actor b owns block b: its parameters ``x_b``, the rule's
state for them ``s_b = rule.init(x_b)`` and its version ``v_b`` (steps applied to the block).
These are the "concurrent parameter servers" of the common framework (Kungurtsev et al., AAAI
2021) and the multi-master layout of APAM (Xu et al.: the coordinates split among masters), with
actors: the server work of an arrival (rule,
in-place update, the transfers of the block) is split K ways and runs in parallel. On worker
i's block gradient ``g_b`` computed at the block's version ``r_b``, server b does

    δ_b = v_b − r_b ;  (u_b, s_b) = rule.update(g_b, s_b, x_b, delay=δ_b, worker=i) ;
    x_b += u_b (in place) ;  v_b += 1 ;  answer (x_b, v_b, δ_b)

(the one step path of every mode, :class:`~asyncopt.protocols.stepper.Stepper`, in place)

and its answer is the worker's next read of the block (as APAM's master sends the model back
after the step): one round trip per block and arrival, through the object store, read in place.

**Versions and delays**, as with the processes runtime's server processes: the model's version
is ``v = min_b v_b``; an arrival's recorded delay is ``max_b δ_b``, each ``δ_b`` measured by
block b's own counter. **Rule state is per block**: per-element state (moments, accumulators) is
the same as with one server; whole-model state (step counters, AdaGrad-Norm's accumulator, a
normalization's norm) becomes block-wise; with ``layout = "ranges"`` a range may cut a tensor,
whose pieces a rule sees as flat vectors under the tensor's name (the layout module says what
that means for per-tensor rules). A rule that drops a gradient decides per block; the row says
``drop`` only if every block dropped it.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from asyncopt import tree
from asyncopt.protocols.stepper import Counter, Stepper
from asyncopt.runtimes.common.layout import Shapes, like
from asyncopt.runtimes.snapshot import rule_leaves, with_rule_leaves


def view(array: np.ndarray) -> torch.Tensor:
    """A tensor on a (read-only) numpy array from the object store, without a copy: rules and
    problems never write into their inputs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


class BlockServer:
    """Server of one block; wrapped by ``ray.remote(num_cpus=0)`` (its processes are titled
    ``ray::BlockServer``). ``block`` is the block's initial values, ``pieces`` its layout."""

    def __init__(self, rule: Any, block: np.ndarray, pieces: Shapes) -> None:
        torch.set_num_threads(1)
        self.flat = torch.tensor(block)
        # the one step path, in place on the block (views of self.flat), on its own counter
        self.stepper = Stepper(tree.unflatten(self.flat, like(pieces)), rule, in_place=True)
        self.stopped = False

    def step(self, grad: np.ndarray, read: int, worker: int,
             ) -> tuple[np.ndarray, int, int, bool, bool]:
        """Apply worker ``worker``'s block gradient read at version ``read``; answer the block,
        its version, the delay, whether it stepped, and whether the run is stopping."""
        grads = tree.unflatten(view(grad), self.stepper.params)
        action, version, delay = self.stepper.arrive(grads, 0.0, read, worker)
        return self.flat.numpy(), version, delay, action == "step", self.stopped

    def pull(self) -> tuple[np.ndarray, int, int, bool, bool]:
        """The block and its version, as :meth:`step` answers them, without a step (Ray
        copies the answer into the object store)."""
        return self.flat.numpy(), self.stepper.version, 0, False, self.stopped

    def stop(self) -> None:
        """From now on every answer tells the worker to stop after this arrival."""
        self.stopped = True

    def snapshot(self) -> dict[str, Any]:
        """What a checkpoint saves of this server (copies): its block, the rule's state for it
        (leaves in pytree order) and its version."""
        return {"block": self.flat.clone(), "rule_state": rule_leaves(self.stepper.state),
                "version": self.stepper.version}

    def restore(self, saved: dict[str, Any]) -> None:
        """Go on from a :meth:`snapshot` (checked against this block by ``resume.check``)."""
        self.flat.copy_(saved["block"])  # in place: the stepper's params are views of it
        self.stepper.state = with_rule_leaves(self.stepper.state, saved["rule_state"])
        self.stepper.counter = Counter(int(saved["version"]))
