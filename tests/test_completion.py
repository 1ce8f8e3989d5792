"""Shell completion through argcomplete's protocol, as the shell hook that
``register-python-argcomplete asyncopt`` installs drives it: the command runs with
``_ARGCOMPLETE``, ``COMP_LINE`` and ``COMP_POINT`` set and writes the completions to file
descriptor 8 (the hook's ``"$@" 8>&1 9>&2 1>/dev/null 2>&1``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from asyncopt.cli import main

ROOT = Path(__file__).resolve().parents[1]
IFS = "\013"  # argcomplete's separator between completions


def _complete(line: str, *command: str) -> list[str]:
    """The completions of ``line`` (the cursor at its end) from ``command``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "_ARGCOMPLETE": "1",
           "_ARGCOMPLETE_IFS": IFS, "COMP_LINE": line, "COMP_POINT": str(len(line)),
           "COMP_TYPE": "9", "_ARGCOMPLETE_SUPPRESS_SPACE": "1"}
    env.pop("_ARGCOMPLETE_STDOUT_FILENAME", None)
    done = subprocess.run(["bash", "-c", '"$@" 8>&1 9>/dev/null 1>/dev/null 2>&1 </dev/null',
                           "_", *command], env=env, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done
    return sorted(done.stdout.split(IFS)) if done.stdout else []


MODULE = (sys.executable, "-m", "asyncopt")
SCRIPT = Path(sys.executable).with_name("asyncopt")  # the console script, when installed here


@pytest.mark.parametrize("command", [
    pytest.param(MODULE, id="python -m asyncopt"),
    pytest.param((str(SCRIPT),), id="console script", marks=pytest.mark.skipif(
        not SCRIPT.exists(), reason="no asyncopt console script beside this Python")),
])
def test_commands_and_options_complete(command):
    pytest.importorskip("argcomplete")
    assert _complete("asyncopt ru", *command) == ["run"]
    assert _complete("asyncopt co", *command) == ["compare", "configs"]
    assert _complete("asyncopt run --no", *command) == ["--no-plot"]
    assert "--resume" in _complete("asyncopt run --", *command)
    assert {"--seeds", "--set"} <= set(_complete("asyncopt compare --se", *command))


def test_completion_imports_neither_torch_nor_ray():
    pytest.importorskip("argcomplete")
    code = ("import os, sys\nimport argcomplete\nfrom asyncopt.cli import main\n"
            "complete = argcomplete.autocomplete\n"
            "def report(code):\n"
            "    print(sorted(m for m in ('torch', 'ray', 'numpy') if m in sys.modules), "
            "file=sys.stderr, flush=True)\n"
            "    os._exit(code)\n"
            "argcomplete.autocomplete = lambda parser: complete(parser, exit_method=report)\n"
            "main()\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "_ARGCOMPLETE": "1",
           "COMP_LINE": "asyncopt ru", "COMP_POINT": "11"}
    done = subprocess.run(["bash", "-c", '"$@" 8>&1', "_", sys.executable, "-c", code],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done
    assert done.stdout.strip() == "run" and done.stderr.strip() == "[]"


def test_argcomplete_finds_the_marker_for_global_completion():
    """``activate-global-python-argcomplete`` completes only scripts whose module says
    ``PYTHON_ARGCOMPLETE_OK`` in its first 1 KiB: the console script's (asyncopt.cli) and
    ``python -m asyncopt``'s (asyncopt/__main__.py)."""
    pytest.importorskip("argcomplete")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    checks = [[sys.executable, "-m", "argcomplete._check_module", "asyncopt"]]
    if SCRIPT.exists():
        checks.append([sys.executable, "-m", "argcomplete._check_console_script", str(SCRIPT)])
    for check in checks:
        done = subprocess.run(check, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done


def test_without_argcomplete_a_completion_request_is_ignored(monkeypatch, capsys):
    monkeypatch.setenv("_ARGCOMPLETE", "1")
    monkeypatch.setenv("COMP_LINE", "asyncopt ru")
    monkeypatch.setenv("COMP_POINT", "11")
    monkeypatch.setitem(sys.modules, "argcomplete", None)  # import argcomplete: ImportError
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0 and capsys.readouterr().out.startswith("asyncopt ")
