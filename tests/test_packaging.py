"""The wheel as a user gets it: built from the sources, installed into a fresh virtual
environment that sees the already-installed torch (never downloaded), and ``asyncopt run
quickstart`` from an empty directory, away from the repository (about 10 s in all)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "src", "configs")


def _run(*command: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"{command}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel`` of a copy of the sources (the build never writes into the checkout)."""
    tree, out = tmp_path_factory.mktemp("tree"), tmp_path_factory.mktemp("dist")
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tree / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(source, tree / name)
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", out, tree, cwd=tree)
    (built,) = out.glob("asyncopt-*.whl")
    return built


def test_the_wheel_carries_the_configs_the_types_marker_and_the_license(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"asyncopt/configs/{p.relative_to(ROOT / 'configs').as_posix()}"
               for p in (ROOT / "configs").rglob("*.toml")}
    assert configs and configs <= names
    assert {n for n in names if n.startswith("asyncopt/configs/")} == configs
    assert "asyncopt/py.typed" in names and "asyncopt/__main__.py" in names
    assert any(n.endswith("/licenses/LICENSE") for n in names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("/METADATA")))
    assert b"License-Expression: MIT" in metadata and b"Classifier: Typing :: Typed" in metadata


def test_quickstart_runs_from_an_empty_directory_after_pip_install(wheel: Path,
                                                                   tmp_path: Path) -> None:
    env_dir, empty = tmp_path / "venv", tmp_path / "empty"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                     cwd=tmp_path).strip())
    (site / "present.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch & co.
    started = time.perf_counter()
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-index", "-q", wheel,
         cwd=tmp_path)
    print(f"pip install of the wheel: {time.perf_counter() - started:.1f} s")
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    asyncopt = env_dir / "bin" / "asyncopt"
    where = _run(python, "-c", "import asyncopt; print(asyncopt.__file__)", cwd=empty, env=env)
    assert where.startswith(str(site))  # the installed copy, not the checkout
    out = _run(asyncopt, "run", "quickstart", "--quiet", "--set", "budget.steps=30", cwd=empty,
               env=env)
    assert "status:   completed" in out
    (run_dir,) = (empty / "runs").iterdir()
    assert {"config.toml", "summary.json", "curves.png"} <= {p.name for p in run_dir.iterdir()}
    assert "quickstart" in _run(python, "-m", "asyncopt", "configs", cwd=empty, env=env)
    version = _run(asyncopt, "--version", cwd=empty, env=env).split()[1]
    assert version == _run(python, "-c", "import importlib.metadata as m; "
                           "print(m.version('asyncopt'))", cwd=empty, env=env).strip()
