"""The README's and the docs' Python examples run as written (in a scratch directory, with the
configs), and their relative links point at files and headings that exist."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "docs/guide.md", "docs/cluster.md", "docs/robustness.md", "docs/tracking.md"]
# docs/tracking.md's MLflow and W&B blocks run in tests/test_callbacks.py (against stand-ins),
# and its fragments (a class and no call) print nothing
BLOCKS = [(name, index, block) for name in DOCS for index, block in enumerate(
    re.findall(r"```python\n(.*?)```", (ROOT / name).read_text(), re.DOTALL))
    if "print(" in block and not re.search(r"^import (mlflow|wandb)$", block, re.MULTILINE)]


def test_the_readme_and_the_guide_have_python_examples():
    assert sum(name == "README.md" for name, _, _ in BLOCKS) >= 2
    assert sum(name == "docs/guide.md" for name, _, _ in BLOCKS) >= 2


def test_the_readme_starts_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines[2:6] == ["```bash", lines[3], lines[4], "```"]
    assert lines[3].startswith("bash scripts/demo.sh ") and lines[4].startswith(
        "bash scripts/test.sh ")
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize(("name", "index"), [(name, index) for name, index, _ in BLOCKS])
def test_readme_python_example_runs(name, index, tmp_path, monkeypatch, capsys):
    block = next(b for n, i, b in BLOCKS if (n, i) == (name, index))
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    exec(compile(block, f"{name} python block {index}", "exec"), {})
    assert "loss" in capsys.readouterr().out


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#+ (.*)$", text, re.MULTILINE)}


@pytest.mark.parametrize("name", [*DOCS, "docs/reproductions.md"])
def test_relative_links_resolve(name):
    page = ROOT / name
    text = page.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"```.*?```", "", text, flags=re.DOTALL)):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{name}: {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked.read_text()), f"{name}: {target}"
