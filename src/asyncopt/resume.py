"""Checkpoints of the server's state, and resuming a run from one.

A checkpoint (``RUN_DIR/checkpoint.pt``, written atomically by the driver every
``runtime_options.checkpoint_every`` steps, :mod:`asyncopt.runtimes.snapshot`) holds what the
server owns:

* the parameters, and the rule's state (its tensors in ``torch.utils._pytree`` order, restored
  into the structure ``rule.init`` builds);
* the protocol's state (:meth:`~asyncopt.protocols.base.Protocol.state_dict`): which workers
  are alive and which were computing, and each protocol's own buffers, tables and counters:
  minibatch's waiting gradients, Rennala's running sum and count, the gradient tables of
  Malenia and IA²SGD, Ringleader's current and buffer tables, round position and counters, the
  artificial delay's window of past models and its generator (a protocol's options come from
  the configuration, so ``--set protocol.…`` may change them, within what the state allows);
* the version, the clock, the budget counters, the history position (how many arrival and
  evaluation rows were recorded) and the initial loss that divergence is judged against;
* in lock-free mode, the shared model and rule state copied under the version lock, with a
  history row for every version counted before the copy
  (:meth:`~asyncopt.runtimes.processes.lockfree.LockFreeRuntime.snapshot`);
* with ``runtime_options.momentum = "per_worker"`` (lock-free), ``worker_states``: each worker's
  own heavy-ball buffers (:mod:`asyncopt.runtimes.processes.momentum`), copied with the model;
* with K ≥ 2 block servers (``runtime_options.servers``, processes or Ray), instead of the rule's
  state, ``blocks``: each server's block, rule state and version, read at its own moment
  (:mod:`asyncopt.runtimes.processes.servers`, :mod:`asyncopt.runtimes.ray.sharded`); such a
  checkpoint resumes only with the same K and layout;
* ``source``: for the simulator, its work in flight (pending jobs with their finish times and
  start order, the snapshots they read, every worker's minibatch generator, the speed model's
  streams) and the driver's job table, so that a resumed simulation continues exactly.

It is a dict of tensors, numbers, strings and lists, saved by ``torch.save`` and read with
``torch.load(weights_only=True)``: loading never runs pickled code.

    asyncopt run --resume runs/<run>      # continues in runs/<run>-resumed

Resuming never writes into the old run directory. It reads ``config.toml`` and the checkpoint,
checks both against the problem, rule and protocol they build (format, names, worker count,
every saved shape and kind), and only then creates a new run directory that starts with the old
history up to the checkpoint and goes on from there. A checkpoint that does not fit is a
:class:`~asyncopt.errors.ConfigError` naming the field, its value and what is allowed, before
any directory is created.

The real runtimes do not restore what the server does not own: the gradients in flight (they are
the workers', and the workers restart). The workers that were computing at the checkpoint restart
at the checkpoint's version v, exactly those (a worker idle then, such as one whose gradient
waits in a minibatch, stays idle); so each one's next delay counts from v, not from the older
version its lost computation had started at, and no ``cancel`` row records the lost work. The
workers' minibatch streams restart from their seeds. The model at the checkpoint is evaluated
again at the start only when no evaluation row was recorded at its version just before it. The
simulator instead goes on with its pending jobs, evaluates nothing at the start, and gives the
uninterrupted run's history bit for bit (with ``runtime_options.batch = 1``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from asyncopt import tree
from asyncopt.checkpoint import load_failure
from asyncopt.errors import ConfigError
from asyncopt.protocols.base import Protocol
from asyncopt.protocols.stepper import Counter
from asyncopt.record import History, load
from asyncopt.runtimes.common.layout import Layout, like
from asyncopt.runtimes.coordinator import Coordinator
from asyncopt.runtimes.snapshot import CHECKPOINT, FORMAT, KEYS, rule_leaves, save, with_rule_leaves

__all__ = ["CHECKPOINT", "check", "read", "restore", "resumed_dir", "rule_leaves", "save",
           "with_rule_leaves"]

def read(run_dir: Path) -> tuple[dict[str, Any], History]:
    """The checkpoint and the recorded history of ``run_dir``, or a ConfigError saying what is
    wrong with them (nothing is written)."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise ConfigError("--resume", str(run_dir), f"a run directory with {CHECKPOINT} (a run "
                          f"with runtime_options.checkpoint_every > 0)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for a damaged file
        raise ConfigError("--resume", str(path), f"a readable checkpoint; loading it failed: "
                          f"{load_failure(error)}") from error
    if not isinstance(state, dict):
        raise ConfigError("--resume", str(path), "a checkpoint: a dict of the server's state")
    if state.get("format") == 2:  # before the source's state was saved: workers restart
        state["source"] = None
    state.setdefault("worker_states", None)  # only lock-free runs with per-worker momentum
    if state.get("format") not in (2, FORMAT):
        raise ConfigError("checkpoint format", state.get("format"),
                          f"{FORMAT} or 2, the formats this asyncopt writes and resumes (with "
                          f"the protocol's state); {path} was written by another version: "
                          f"resume it with that version, or start a new run")
    missing = [k for k in KEYS if k not in state]
    if missing:
        raise ConfigError("checkpoint keys", sorted(state), f"a checkpoint of format {FORMAT} "
                          f"with {', '.join(KEYS)} (missing: {', '.join(missing)})")
    history = load(run_dir)
    rows = len(history.arrivals.get("now", ()))
    if rows < state["arrival_rows"]:
        raise ConfigError("--resume", str(run_dir), f"an arrivals.csv with at least "
                          f"{state['arrival_rows']} rows (the checkpoint's position); it has "
                          f"{rows}")
    return state, history


def check(state: dict[str, Any], protocol: Protocol, servers: int = 1,
          layout: str = "tensors") -> None:
    """Refuse a checkpoint that does not belong to this protocol, model, rule, number of block
    servers and their layout (ConfigError)."""
    server, blocks = protocol.server, state["blocks"]
    saved_servers = 1 if blocks is None else len(blocks) if isinstance(blocks, list) else blocks
    if saved_servers != servers:
        raise ConfigError("runtime_options.servers", servers, f"{saved_servers}, the checkpoint's "
                          f"number of servers (a block's rule state cannot be cut again)")
    if isinstance(blocks, list) and blocks and isinstance(blocks[0], dict):
        saved_layout = _layout(blocks)
        if saved_layout != layout:
            raise ConfigError("runtime_options.layout", layout, f"{saved_layout!r}, the "
                              f"checkpoint's layout (a block's rule state cannot be cut again)")
    _check(protocol.name == state["protocol"], "protocol", state["protocol"], protocol.name)
    params = state["params"]
    _check(isinstance(params, dict) and list(params) == list(server.params) and all(
        isinstance(v, torch.Tensor) and v.shape == server.params[k].shape
        and v.dtype == server.params[k].dtype for k, v in params.items()), "parameters",
        {k: tuple(getattr(v, "shape", ())) for k, v in params.items()}
        if isinstance(params, dict) else params,
        {k: tuple(v.shape) for k, v in server.params.items()})
    if blocks is None:
        _check_rule_state(server.state, state["rule_state"], "rule state")
    else:
        _check_blocks(blocks, server, layout)
    protocol.check_state(state["protocol_state"])
    _check_source(state["source"], protocol.num_workers)
    _check_worker_states(state["worker_states"], server.state, protocol.num_workers)


def _check_worker_states(saved: Any, fresh: Any, num_workers: int) -> None:
    """Per-worker heavy-ball buffers, when the checkpoint has them: one set per worker, each
    shaped as the rule's own buffers."""
    if saved is None:
        return
    from asyncopt.runtimes.processes.momentum import traces

    _check(isinstance(saved, list) and len(saved) == num_workers, "worker states",
           len(saved) if isinstance(saved, list) else saved,
           f"one set of heavy-ball buffers per worker ({num_workers})")
    for leaves in saved:
        _check_rule_state(traces(fresh), leaves, "worker heavy-ball buffers")


def _check_source(source: Any, num_workers: int) -> None:
    """The driver's job table and the source's state, when the checkpoint has them."""
    if source is None:
        return
    _check(isinstance(source, dict) and isinstance(source.get("runtime"), str)
           and isinstance(source.get("job_counter"), int), "source state",
           type(source).__name__, "a dict with runtime, job_counter and jobs")
    jobs = source.get("jobs")
    _check(isinstance(jobs, list) and all(
        isinstance(j, list) and len(j) == 3 and all(isinstance(x, int) for x in j)
        and 0 <= j[0] < num_workers for j in jobs), "source jobs", jobs,
        f"[worker, job, version] triples with workers in 0..{num_workers - 1}")
    generators = source.get("generators")
    if generators is not None:
        _check(isinstance(generators, list) and len(generators) == num_workers,
               "source generators", len(generators) if isinstance(generators, list)
               else generators, f"one generator state per worker ({num_workers})")


def _check_rule_state(fresh: Any, saved: Any, what: str) -> None:
    leaves, _ = pytree.tree_flatten(fresh)
    _check(isinstance(saved, list) and len(saved) == len(leaves) and all(
        isinstance(a, torch.Tensor) == isinstance(b, torch.Tensor)
        and (not isinstance(a, torch.Tensor) or a.shape == b.shape)
        for a, b in zip(leaves, saved, strict=True)), what,
        f"{len(saved) if isinstance(saved, list) else saved} leaves",
        f"{len(leaves)} leaves shaped as rule.init builds them")


def _layout(blocks: Any) -> str:
    """The layout of a checkpoint's block servers (before layouts were saved: Ray's ranges)."""
    if isinstance(blocks, list) and blocks and isinstance(blocks[0], dict):
        return str(blocks[0].get("layout", "ranges"))
    return "tensors"


def _check_blocks(blocks: list[Any], server: Any, cut: str) -> None:
    """Each block server's snapshot against the block that ``Layout`` gives it."""
    layout = Layout(server.params, len(blocks), cut)
    for b, (saved, (lo, hi), pieces) in enumerate(zip(blocks, layout.ranges(), layout.pieces,
                                                       strict=True)):
        block = saved.get("block") if isinstance(saved, dict) else None
        _check(isinstance(block, torch.Tensor) and tuple(block.shape) == (hi - lo,)
               and block.dtype == layout.dtype, f"block {b}",
               getattr(block, "shape", block), f"a {layout.dtype} vector of {hi - lo}")
        version = saved.get("version")
        _check(isinstance(version, int) and version >= 0, f"block {b} version", version,
               "an integer >= 0")
        fresh = server.rule.init(tree.unflatten(block.clone(), like(pieces)))
        _check_rule_state(fresh, saved.get("rule_state"), f"block {b} rule state")


def restore(coordinator: Coordinator, state: dict[str, Any], history: History) -> None:
    """Put a checked checkpoint's server state into a fresh coordinator (its recorder empty),
    and replay the history up to the checkpoint into its recorder."""
    server, blocks = coordinator.protocol.server, state["blocks"]
    check(state, coordinator.protocol, 1 if blocks is None else len(blocks), _layout(blocks))
    if blocks is None:
        server.state = with_rule_leaves(server.state, state["rule_state"])
    else:  # the block servers hold the rule's state: they start from these
        coordinator.blocks = blocks
    coordinator.source_state = state["source"]
    coordinator.worker_states = state["worker_states"]
    server.params = {k: v.clone() for k, v in state["params"].items()}
    server.counter = Counter(int(state["version"]))
    coordinator.protocol.load_state_dict(state["protocol_state"])  # after the model: it uses it
    _replay(coordinator, history, int(state["arrival_rows"]), int(state["evaluation_rows"]))
    coordinator.arrivals = int(state["arrival_budget_count"])
    coordinator.now = float(state["now"])
    coordinator._next_eval = float(state["next_eval"])
    coordinator.divergence.initial_loss = float(state["initial_loss"])
    e, last = history.evaluations, int(state["evaluation_rows"]) - 1
    if 0 <= last < len(e.get("now", ())) and (int(e["version"][last]), int(
            e["arrivals"][last])) == (server.version, coordinator.arrivals):
        # the checkpoint's model was evaluated just before it: begin() need not repeat the row
        coordinator._last_eval_key = (server.version, coordinator.arrivals)
        coordinator._last_metrics = {m: float(e[m][last]) for m in e
                                     if m not in ("now", "version", "arrivals")}


def _replay(coordinator: Coordinator, history: History, rows: int, evaluations: int) -> None:
    recorder, a = coordinator.recorder, history.arrivals
    missing = np.full(rows, math.nan)  # histories written before these columns existed
    latency, server = a.get("latency", missing), a.get("server_time", missing)
    for i in range(rows):
        loss = float(a["loss"][i])
        recorder.arrival(float(a["now"][i]), int(a["worker"][i]), int(a["version"][i]),
                         int(a["delay"][i]), loss, str(a["action"][i]),
                         float(a["compute_time"][i]), float(latency[i]), float(server[i]))
    e = history.evaluations
    metrics = [k for k in e if k not in ("now", "version", "arrivals")]
    for i in range(min(evaluations, len(e.get("now", ())))):
        recorder.evaluation(float(e["now"][i]), int(e["version"][i]), int(e["arrivals"][i]),
                            {m: float(e[m][i]) for m in metrics})
    recorder.flush()


def _check(ok: bool, what: str, saved: Any, expected: Any) -> None:
    if not ok:
        raise ConfigError("--resume", f"checkpoint {what} {saved}",
                          f"the {what} of the run's config ({expected}): the checkpoint does not "
                          f"belong to this configuration")


def resumed_dir(run_dir: Path) -> Path:
    """A fresh directory beside ``run_dir`` for the continued run (never an existing one)."""
    base = run_dir.with_name(run_dir.name + "-resumed")
    path, suffix = base, 1
    while path.exists():
        path = base.with_name(f"{base.name}-{suffix}")
        suffix += 1
    return path

