"""The API reference builds from the docstrings (scripts/docs.sh, pdoc) and documents the API."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_api_reference_builds_with_every_module(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "scripts" / "docs.sh"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    pages = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.html")}
    for page in ("index.html", "asyncopt/api.html", "asyncopt/runtimes/driver.html",
                 "asyncopt/runtimes/source.html", "asyncopt/rules.html", "asyncopt/protocols.html",
                 "asyncopt/problems.html", "asyncopt/config.html"):
        assert page in pages, sorted(pages)
    api = (tmp_path / "asyncopt" / "api.html").read_text()
    for function in ("train", "run", "resume_run"):  # each with its own entry and docstring
        assert f'id="{function}"' in api and f'<span class="name">{function}</span>' in api
