"""What a user waits for before asyncopt does anything: installing the wheel, starting the CLI.

    .venv/bin/python benchmarks/cli_startup.py            # writes its RESULTS.md section
    .venv/bin/python benchmarks/cli_startup.py --smoke    # one repeat each, nothing written

Three figures, each the median of ``--repeats`` fresh processes:

* ``pip install`` of the wheel (built once, ``--no-deps``) into a fresh virtual environment that
  sees this environment's packages through a ``.pth`` file (torch is present, as the README's
  setup installs it first), with ``--no-index``: the install itself, no download;
* ``asyncopt --help`` and ``asyncopt --version`` of the installed console script, which must not
  import torch or Ray (``asyncopt.arguments`` imports nothing heavy; the check is in the run);
* ``python -c "import torch"`` for scale: what the lazy package ``__init__`` saves.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import venv
from pathlib import Path

from results import write_section

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "src", "configs")


def timed(*command: str | Path, cwd: Path) -> tuple[float, str]:
    """Wall seconds of one process, and its standard output; it must succeed."""
    began = time.perf_counter()
    done = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{command} failed ({done.returncode}):\n{done.stderr}")
    return seconds, done.stdout


def build_wheel(work: Path) -> Path:
    tree, out = work / "tree", work / "dist"
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tree / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            tree.mkdir(exist_ok=True)
            shutil.copy(source, tree / name)
    timed(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", out, tree, cwd=work)
    (wheel,) = out.glob("asyncopt-*.whl")
    return wheel


def fresh_env(where: Path) -> Path:
    """A virtual environment without pip that sees this one's packages; its python."""
    venv.create(where, with_pip=False)
    python = where / "bin" / "python"
    _, site = timed(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                    cwd=where)
    (Path(site.strip()) / "present.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="one repeat, nothing written")
    args = parser.parse_args()
    repeats = 1 if args.smoke else args.repeats
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        wheel = build_wheel(work)
        installs, helps, versions, torches = [], [], [], []
        for index in range(repeats):
            python = fresh_env(work / f"env{index}")
            seconds, _ = timed(sys.executable, "-m", "pip", "--python", python, "install",
                               "--no-index", "-q", wheel, cwd=work)
            installs.append(seconds)
        asyncopt = work / "env0" / "bin" / "asyncopt"
        python = work / "env0" / "bin" / "python"
        _, heavy = timed(python, "-c", "import sys, runpy; sys.argv = ['asyncopt', '--help']\n"
                         "try:\n    runpy.run_module('asyncopt', run_name='__main__')\n"
                         "except SystemExit:\n    pass\n"
                         "print('\\nheavy:', sorted(m for m in ('torch', 'ray', 'numpy') "
                         "if m in sys.modules))", cwd=work)
        imported = heavy.rsplit("heavy:", 1)[1].strip()
        for _ in range(repeats):
            helps.append(timed(asyncopt, "--help", cwd=work)[0])
            versions.append(timed(asyncopt, "--version", cwd=work)[0])
            torches.append(timed(python, "-c", "import torch", cwd=work)[0])
    median = statistics.median
    rows = [("pip install of the wheel (no download, torch present)", median(installs)),
            ("asyncopt --help", median(helps)), ("asyncopt --version", median(versions)),
            ("python -c 'import torch' (for scale)", median(torches))]
    body = "\n".join([f"Median of {repeats} fresh processes each; wheel "
                      f"{wheel.name}. Heavy modules imported by `--help`: {imported}.", "",
                      "| what | seconds |", "|---|---|",
                      *(f"| {what} | {seconds:.2f} |" for what, seconds in rows)])
    print(body)
    if not args.smoke:
        write_section("CLI start-up and install", "python benchmarks/cli_startup.py", body)


if __name__ == "__main__":
    main()
