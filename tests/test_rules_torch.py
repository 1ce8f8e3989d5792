"""``rules.from_torch``: torch.optim on the server, out of place, checkpointed like every rule.

Parity with the optimizers it wraps is in ``tests/test_rules_parity.py``; here: in-flight
snapshots stay untouched, a simulated run equals the built-in rule's, the state survives a
checkpoint and the run goes on identically, the capability flag, and the errors.
"""

from __future__ import annotations

import pickle
from functools import partial
from pathlib import Path

import cloudpickle
import pytest
import torch
from torch.optim import lr_scheduler

import asyncopt
from asyncopt import resume, rules
from asyncopt.config import Budget, Evaluation
from asyncopt.errors import ConfigError
from asyncopt.problems.registry import make_problem
from asyncopt.protocols.base import Arrival, Server
from asyncopt.protocols.registry import make_protocol
from asyncopt.record import Recorder
from asyncopt.rules.base import Rule
from asyncopt.runtimes.coordinator import Coordinator
from asyncopt.runtimes.registry import make_runtime
from asyncopt.runtimes.sim.speed import make_speed_model

WORKERS = 4
PROBLEM = {"name": "quadratic", "dim": 6, "noise": 0.1, "heterogeneity": 1.0}
SPEED = {"times": [1.0, 1.7, 2.9, 6.1]}


def _adamw_cosine() -> Rule:
    return rules.from_torch(torch.optim.AdamW, lr=0.05, weight_decay=0.1,
                            scheduler=partial(lr_scheduler.CosineAnnealingLR, T_max=40))


def _tree(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 3, generator=gen), "b": torch.randn(3, generator=gen)}


def test_the_server_publishes_a_new_model_and_never_writes_an_old_one() -> None:
    server = Server(_tree(0), rules.from_torch(torch.optim.SGD, lr=0.1, momentum=0.9))
    snapshots = []
    for step in range(4):
        snapshots.append((server.params, {k: v.clone() for k, v in server.params.items()}))
        grads = _tree(10 + step)
        before = {k: v.clone() for k, v in grads.items()}
        assert server.step(grads, delay=step, worker=0)
        assert all(torch.equal(grads[k], before[k]) for k in grads)
    for held, copy in snapshots:  # what in-flight workers were handed
        assert all(torch.equal(held[k], copy[k]) for k in copy)
    assert not torch.equal(server.params["w"], snapshots[0][1]["w"])


def _train(rule: Rule) -> asyncopt.Result:
    problem = make_problem(PROBLEM, WORKERS, 0)
    return asyncopt.train(problem, rule, "asgd", speed=SPEED, budget={"arrivals": 200}, seed=0)


def test_a_simulated_run_with_delays_equals_the_built_in_rule() -> None:
    ours = _train(rules.adamw(lr=0.05, weight_decay=0.1))
    theirs = _train(rules.from_torch(torch.optim.AdamW, lr=0.05, weight_decay=0.1))
    assert max(theirs.history.arrivals["delay"]) >= 3  # stale gradients were applied
    assert list(theirs.history.arrivals["delay"]) == list(ours.history.arrivals["delay"])
    for key, value in ours.params.items():
        torch.testing.assert_close(theirs.params[key], value, rtol=0, atol=1e-5)
    assert theirs.summary["final"]["loss"] < 0.5 * theirs.history.evaluations["loss"][0]


def _coordinator(rule: Rule, run_dir: Path, arrivals: int) -> Coordinator:
    problem = make_problem(PROBLEM, WORKERS, 0)
    server = Server(problem.init_params(torch.Generator().manual_seed(0)), rule)
    protocol = make_protocol({"name": "asgd"}, server, WORKERS)
    return Coordinator(problem, protocol, Recorder(run_dir), Budget(arrivals=arrivals),
                       Evaluation(5))


def test_its_state_survives_a_checkpoint_and_the_run_goes_on_identically(tmp_path) -> None:
    original = _coordinator(_adamw_cosine(), tmp_path / "run", arrivals=23)
    speed = make_speed_model(SPEED, WORKERS, 0)
    make_runtime("sim", original.problem, speed, 0).run(original)
    state = original.protocol.server.state
    assert int(state.count) == original.protocol.version > 0
    assert set(state.slots["x"]) == {"step", "exp_avg", "exp_avg_sq"}
    assert float(state.slots["x"]["exp_avg_sq"].abs().sum()) > 0
    resume.save(original, tmp_path / "run" / resume.CHECKPOINT)

    saved, history = resume.read(tmp_path / "run")
    fresh = _coordinator(_adamw_cosine(), tmp_path / "restored", arrivals=23)  # a new rule object
    resume.restore(fresh, saved, history)
    old, new = original.protocol, fresh.protocol
    generator = torch.Generator().manual_seed(1)
    for step in range(30):  # past T_max: the scheduler's position came back too
        grads = {k: torch.randn(v.shape, generator=generator) for k, v in old.server.params.items()}
        arrival = Arrival(step % WORKERS, old.version - step % 3, grads, 1.0)
        assert old.handle(arrival).action == new.handle(arrival).action
        assert all(torch.equal(new.server.params[k], v) for k, v in old.server.params.items())
    for a, b in zip(resume.rule_leaves(old.server.state), resume.rule_leaves(new.server.state),
                    strict=True):
        assert torch.equal(a, b)


def test_a_copy_in_another_process_rebuilds_the_optimizer_from_the_state() -> None:
    rule = _adamw_cosine()
    params, state = _tree(0), None
    state = rule.init(params)
    for step in range(3):
        updates, state = rule.update(_tree(step + 1), state, params, delay=0, worker=0)
        params = {k: params[k] + updates[k] for k in params}
    twin, twin_state = pickle.loads(cloudpickle.dumps((rule, state)))  # fresh tensors, no live one
    for step in range(5):
        grads = _tree(10 + step)
        updates, state = rule.update(grads, state, params, delay=0, worker=0)
        theirs, twin_state = twin.update(grads, twin_state, params, delay=0, worker=0)
        assert all(torch.equal(updates[k], theirs[k]) for k in updates)
        params = {k: params[k] + updates[k] for k in params}


def test_it_needs_a_central_server_and_so_does_a_chain_holding_it() -> None:
    rule = rules.from_torch(torch.optim.SGD, lr=0.1)
    assert rule.needs_central_server
    assert rules.chain(rules.drop_if_stale(3), rule, rules.scale_by_delay(4)).needs_central_server
    assert not rules.adam().needs_central_server
    assert not rules.chain(rules.drop_if_stale(3), rules.adam()).needs_central_server


@pytest.mark.parametrize("call, pattern", [
    (lambda: rules.from_torch(torch.optim.Adam(_tree(0).values())),
     r"optimizer = 'an instance of Adam' .*pass the class, not an instance"),
    (lambda: rules.from_torch(torch.optim.Adam, betas=0.9),
     r"torch\.optim\.Adam options = \{'betas': 0\.9\} .*what torch\.optim\.Adam accepts"),
    (lambda: rules.from_torch(torch.optim.SGD, learning_rate=0.1),
     r"torch\.optim\.SGD options .*learning_rate"),
    (lambda: rules.from_torch(torch.optim.LBFGS).init(_tree(0)),
     r"optimizer = 'torch\.optim\.LBFGS' .*needs no closure"),
    (lambda: rules.from_torch(torch.optim.SGD, lr=0.1,
                              scheduler=lr_scheduler.ReduceLROnPlateau).init(_tree(0)),
     r"scheduler = 'ReduceLROnPlateau' .*needs the loss"),
    (lambda: rules.from_torch(torch.optim.SGD, lr=0.1, scheduler=lambda o: 0.1),
     r"scheduler = 'float' .*LRScheduler"),
])
def test_what_it_cannot_run_is_refused_with_the_reason(call, pattern) -> None:
    with pytest.raises(ConfigError, match=pattern):
        call()


@pytest.mark.parametrize("given", [torch.optim.AdamW, torch.optim.AdamW(_tree(0).values())])
def test_a_torch_optimizer_where_a_rule_is_expected_gets_the_hint(given) -> None:
    hint = r"rule = 'torch\.optim\.AdamW' .*rules\.from_torch\(torch\.optim\.AdamW, lr=\.\.\.\)"
    with pytest.raises(ConfigError, match=hint):
        _train(given)
    with pytest.raises(ConfigError, match=r"chain argument 1 = 'torch\.optim\.AdamW'"):
        rules.chain(rules.drop_if_stale(3), given)
    with pytest.raises(ConfigError, match=r"rule\.name = 'adamm' .*did you mean 'adam'"):
        _train("adamm")  # a name is a rule's spec, as a protocol's name is


@pytest.mark.parametrize("options", [{"mode": "lockfree"}, {"servers": 2}])
def test_modes_without_a_central_server_refuse_it_before_any_process_starts(options):
    problem = make_problem(PROBLEM, 2, 0)
    with pytest.raises(ConfigError, match="only one central server owns"):
        asyncopt.train(problem, _adamw_cosine(), "asgd", budget={"steps": 5},
                       runtime="processes", runtime_options=options)
