"""Every protocol's state through a checkpoint, without Ray: run in the simulator to an arrival
in the middle of its buffering, save, restore into a fresh coordinator, and check that tables,
buffers and counters are identical and go on identically; what a resume does with the
computations in flight; and checkpoints that do not fit are refused before anything is written.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch

from asyncopt import config as configuration
from asyncopt import resume
from asyncopt.api import resume_run
from asyncopt.config import Evaluation
from asyncopt.errors import ConfigError
from asyncopt.problems.registry import make_problem
from asyncopt.protocols.base import Action, Arrival, Protocol, Server
from asyncopt.protocols.minibatch import Minibatch
from asyncopt.protocols.registry import make_protocol, protocol_names
from asyncopt.record import Recorder
from asyncopt.rules.registry import make_rule
from asyncopt.runtimes.coordinator import Coordinator
from asyncopt.runtimes.registry import make_runtime
from asyncopt.runtimes.sim.speed import make_speed_model

WORKERS = 4
VARIANTS: dict[str, dict[str, Any]] = {
    "asgd": {"name": "asgd"},
    "asgd-artificial-delay": {"name": "asgd", "artificial_delay": 4},
    "minibatch": {"name": "minibatch"},
    "minibatch-m-synchronous": {"name": "minibatch", "wait_for": 3},
    "rennala": {"name": "rennala", "batch_size": 6},
    "malenia": {"name": "malenia"},
    "malenia-batch-size": {"name": "malenia", "batch_size": 5},
    "ia2sgd": {"name": "ia2sgd"},
    "ringmaster": {"name": "ringmaster", "max_delay": 2},
    "ringmaster-no-stops": {"name": "ringmaster", "max_delay": 2, "stops": False},
    "ringleader": {"name": "ringleader"},
}


def _config(tmp_path: Path, protocol: dict[str, Any], arrivals: int) -> dict[str, Any]:
    return configuration.resolve({
        "problem": {"name": "quadratic", "dim": 6, "noise": 0.1, "heterogeneity": 1.0},
        "workers": WORKERS, "rule": {"name": "adam", "lr": 0.05}, "protocol": protocol,
        "speed": {"times": [1.0, 1.7, 2.9, 6.1]}, "budget": {"arrivals": arrivals},
        "eval": {"every": 5}, "output": {"dir": str(tmp_path), "name": "run"}})


def _coordinator(resolved: dict[str, Any], run_dir: Path | None) -> Coordinator:
    """The server side of a run as ``api.train`` assembles it."""
    seed, n = resolved["seed"], resolved["workers"]
    problem = make_problem(resolved["problem"], n, seed)
    server = Server(problem.init_params(torch.Generator().manual_seed(seed)),
                    make_rule(resolved["rule"], n))
    protocol = make_protocol(resolved["protocol"], server, n)
    return Coordinator(problem, protocol, Recorder(run_dir), configuration.budget_of(resolved),
                       Evaluation(5))


def _checkpointed(tmp_path: Path, protocol: dict[str, Any], arrivals: int = 23,
                  ) -> tuple[Coordinator, Path]:
    """A simulated run stopped after ``arrivals`` arrivals, its checkpoint and config.toml
    written into its run directory, as a Ray run with ``checkpoint_every`` leaves it."""
    resolved = _config(tmp_path, protocol, arrivals)
    run_dir = tmp_path / "run"
    coordinator = _coordinator(resolved, run_dir)
    problem = coordinator.problem
    engine = make_runtime("sim", problem, make_speed_model(resolved["speed"], WORKERS, 0), 0)
    engine.run(coordinator)
    resume.save(coordinator, run_dir / resume.CHECKPOINT)
    (run_dir / "config.toml").write_text(configuration.dumps(resolved))
    return coordinator, run_dir


def _restored(tmp_path: Path, run_dir: Path) -> Coordinator:
    state, history = resume.read(run_dir)
    resolved = configuration.load(run_dir / "config.toml")
    fresh = _coordinator(resolved, tmp_path / "restored")
    resume.restore(fresh, state, history)
    return fresh


def _same(a: Any, b: Any, path: str = "") -> None:
    """Equal structures, with bit-identical tensors."""
    assert type(a) is type(b), path
    if isinstance(a, torch.Tensor):
        assert a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for key in a:
            _same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def _without_in_flight(protocol: Protocol) -> dict[str, Any]:
    """The state less what records the computations in flight (``in_flight``, and Ringmaster's
    queue of them), which a resume restarts."""
    return {k: v for k, v in protocol.state_dict().items() if k not in ("in_flight", "started")}


def test_the_variants_cover_every_registered_protocol():
    assert {spec["name"] for spec in VARIANTS.values()} == set(protocol_names())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_protocol_state_survives_a_checkpoint_and_goes_on_identically(tmp_path, variant):
    original, run_dir = _checkpointed(tmp_path, VARIANTS[variant])
    fresh = _restored(tmp_path, run_dir)
    old, new = original.protocol, fresh.protocol
    assert type(new) is type(old) and new.version == old.version > 0
    _same(new.state_dict(), old.state_dict())  # tables, buffers, counters, in-flight record
    blank = make_protocol(VARIANTS[variant], Server(dict(old.server.params), old.server.rule),
                          WORKERS).state_dict()
    assert any(k != "in_flight" and not _equal(old.state_dict()[k], blank[k])
               for k in blank) or variant.startswith(("asgd", "ringmaster")), \
        "the checkpoint was taken where this protocol holds something of its own"

    # the workers computing at the checkpoint restart at the restored version, and only those
    reply = new.begin()
    assert reply.start == tuple(sorted(old.in_flight)) and reply.cancel == ()
    assert set(new.in_flight.values()) == {new.version}
    # the same arrivals from here on: identical steps, actions, delays and state
    started: dict[int, int] = {}
    for worker in reply.start:
        started[worker] = new.model_for(worker)[0]
        assert old.model_for(worker)[0] == started[worker]  # the artificial delay's draws too
    generator = torch.Generator().manual_seed(1)
    for _ in range(5 * WORKERS):
        worker = min(started)  # any order will do; the same one for both
        grads = {k: torch.randn(v.shape, generator=generator) for k, v in
                 new.server.params.items()}
        arrival = Arrival(worker, started.pop(worker), grads, 1.0)
        a, b = old.handle(arrival), new.handle(arrival)
        assert (a.action, a.delay) == (b.action, b.delay)
        _same(new.server.params, old.server.params)
        _same(_without_in_flight(new), _without_in_flight(old))
        for w in b.cancel:
            started.pop(w, None)
        for w in b.start:
            started[w] = new.model_for(w)[0]
            assert old.model_for(w)[0] == started[w]
        if not started:
            break


def _equal(a: Any, b: Any) -> bool:
    try:
        _same(a, b)
    except AssertionError:
        return False
    return True


def test_workers_idle_at_the_checkpoint_stay_idle_and_delays_count_from_the_resumed_version(
        tmp_path):
    # synchronous minibatch, times 1, 1.7, 2.9, 6.1: after 3 arrivals three gradients wait in
    # the batch and only the slowest worker computes
    original, run_dir = _checkpointed(tmp_path, {"name": "minibatch"}, arrivals=3)
    assert original.protocol.in_flight == {3: 0} and len(original.protocol.batch) == 3
    fresh = _restored(tmp_path, run_dir)
    assert fresh.protocol.begin().start == (3,)
    # asgd: every worker was computing, most at an older version than the checkpoint's
    original, run_dir = _checkpointed(tmp_path / "asgd", {"name": "asgd"}, arrivals=10)
    v = original.version
    assert min(original.protocol.in_flight.values()) < v
    fresh = _restored(tmp_path / "asgd", run_dir)
    assert fresh.protocol.begin().start == (0, 1, 2, 3)
    assert fresh.protocol.in_flight == dict.fromkeys(range(WORKERS), v)
    reply = fresh.protocol.handle(Arrival(3, v, dict(fresh.protocol.server.params), 1.0))
    assert reply.action is Action.STEP and reply.delay == 0  # it would have been older


def test_a_lost_worker_stays_lost_and_minibatch_waits_for_the_live_ones():
    def fresh() -> Minibatch:
        rule = make_rule({"name": "sgd", "lr": 0.1}, WORKERS)
        return Minibatch(Server({"x": torch.zeros(2)}, rule), WORKERS)

    old = fresh()
    old.begin()
    old.handle(Arrival(0, 0, {"x": torch.ones(2)}, 1.0))
    old.lose(3)
    assert old.wait_for == 3
    new = fresh()
    new.load_state_dict(old.state_dict())
    assert new.alive == {0, 1, 2} and new.wait_for == 3 and len(new.batch) == 1
    assert new.begin().start == (1, 2)  # 0 waits in the batch, 3 is gone
    assert new.handle(Arrival(1, 0, {"x": torch.ones(2)}, 1.0)).action is Action.BUFFER
    reply = new.handle(Arrival(2, 0, {"x": torch.ones(2)}, 1.0))
    assert reply.action is Action.STEP and reply.start == (0, 1, 2)


def test_the_resumed_coordinator_keeps_the_initial_loss_and_evaluates_nothing_twice(tmp_path):
    # asgd steps on every arrival: the 10th is version 10, evaluated (every 5) before the save
    original, run_dir = _checkpointed(tmp_path, {"name": "asgd"}, arrivals=10)
    fresh = _restored(tmp_path, run_dir)
    rows = len(fresh.recorder._evaluations)
    assert fresh.recorder._evaluations[-1][1:3] == (10, 10)
    fresh.begin(fresh.now)
    assert len(fresh.recorder._evaluations) == rows  # not a second row at version 10
    # divergence is judged against the first run's initial loss, not the loss at the resume
    initial = original.divergence.initial_loss
    assert fresh.divergence.initial_loss == initial > fresh._last_metrics["loss"]


def _corrupt(run_dir: Path, change: Any) -> None:
    path = run_dir / resume.CHECKPOINT
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)


def _resized(key: str):
    def change(state: dict[str, Any]) -> None:
        table = state["protocol_state"][key]
        table["means"] = table["means"][:, :-1].clone()
    return change


@pytest.mark.parametrize(("protocol", "change", "match"), [
    ({"name": "ringleader"}, _resized("current"),
     r"protocol_state\.current\.means = tensor \(4, 5\).*shape \(4, 6\)"),
    ({"name": "ia2sgd"}, lambda s: s["protocol_state"].update(kind="Malenia"),
     r"protocol_state\.kind = 'Malenia'.*'IA2SGD'"),
    ({"name": "minibatch"}, lambda s: s["protocol_state"]["batch"].append(
        {"x": torch.zeros(3)}), r"protocol_state\.batch"),
    ({"name": "rennala", "batch_size": 6}, lambda s: s["protocol_state"].pop("sum"),
     r"protocol_state\.sum = missing"),
    ({"name": "asgd", "artificial_delay": 4}, lambda s: s["protocol_state"].update(
        rng={"bit_generator": "MT19937"}), r"protocol_state\.rng"),
    ({"name": "ringleader"}, lambda s: s.update(format=1), r"checkpoint format = 1.*2"),
])
def test_a_checkpoint_that_does_not_fit_is_refused_and_no_directory_is_created(
        tmp_path, protocol, change, match):
    _, run_dir = _checkpointed(tmp_path, protocol)
    _corrupt(run_dir, change)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ConfigError, match=match):
        resume_run(run_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == before == ["run"]


def test_a_checkpoint_of_another_protocol_or_worker_count_is_refused(tmp_path):
    _, run_dir = _checkpointed(tmp_path / "minibatch", {"name": "minibatch"}, arrivals=3)
    with pytest.raises(ConfigError, match=r"protocol_state\.batch = \[.*\(3 items\).*"
                                          r"fewer than wait_for = 2"):
        resume_run(run_dir, overrides=["protocol.wait_for=2"])  # 3 gradients already wait
    _, run_dir = _checkpointed(tmp_path, {"name": "ringleader"})
    with pytest.raises(ConfigError, match=r"checkpoint protocol ringleader"):
        resume_run(run_dir, overrides=["protocol.name=ia2sgd"])
    with pytest.raises(ConfigError, match=r"protocol_state\.num_workers = 4.*3"):
        resume_run(run_dir, overrides=["workers=3", "speed.times=[1.0, 2.0, 3.0]"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["minibatch", "run"]
    assert sorted(p.name for p in (tmp_path / "minibatch").iterdir()) == ["run"]


def test_a_block_server_goes_on_from_its_snapshot_exactly():
    # the K >= 2 block servers of the Ray runtime (plain objects here): block, rule state, version
    from asyncopt.runtimes.common.layout import Layout
    from asyncopt.runtimes.ray.servers import BlockServer

    params = {"w": torch.linspace(-1, 1, 12).reshape(3, 4), "b": torch.ones(3)}
    layout = Layout(params, 2, "ranges")
    rule = make_rule({"name": "amsgrad", "lr": 0.1}, 2)
    flat = torch.cat([v.reshape(-1) for v in params.values()]).numpy()
    lo, hi = layout.ranges()[1]
    server = BlockServer(rule, flat[lo:hi], layout.pieces[1])
    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(hi - lo, generator=generator).numpy() for _ in range(10)]
    for k, g in enumerate(grads[:5]):
        server.step(g, max(0, k - 1), k % 2)
    snapshot = torch.load(_saved(server.snapshot()), weights_only=True)
    assert snapshot["version"] == 5
    again = BlockServer(rule, flat[lo:hi], layout.pieces[1])
    again.restore(snapshot)
    for k, g in enumerate(grads[5:], start=5):
        a, b = server.step(g, k - 2, k % 2), again.step(g, k - 2, k % 2)
        assert (a[1], a[2]) == (b[1], b[2]) and (a[0] == b[0]).all()


def _saved(value: Any) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    return buffer
