"""The Fashion-MNIST comparison at the paper's scale: wall time, arrivals per second, peak memory.

Maranjyan & Richtárik (ICLR 2026, paper 4) compare Ringleader ASGD with Malenia and IA²SGD on
Fashion-MNIST with n = 100 heterogeneous workers over 3·10⁵ simulated seconds;
``configs/ringleader_fashion.toml`` is their setting (docs/reproductions.md). This runs

    asyncopt compare configs/ringleader_fashion.toml --method M ... --seeds 5 --seed 26 --jobs 2

as a child process and reports its wall time, each method's median arrivals per wall second
(the runs' own summaries, evaluations included) and the peak resident memory of the whole
process tree (the ``compare`` driver and its ``--jobs`` workers, sampled every 0.5 s from
``/proc``); then the peak of one run alone (``asyncopt run``, a 2·10⁴ s horizon: the data and
the evaluation buffers are allocated by the first evaluation). Needs the Fashion-MNIST IDX files
(``apt-get install dataset-fashion-mnist``). Time it on a quiet machine: it states the load
average before it starts.

    .venv/bin/python benchmarks/ringleader_fashion.py                 # 3 methods x 5 seeds
    .venv/bin/python benchmarks/ringleader_fashion.py --smoke         # 2 seeds, 2·10⁴ s
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import threading
import time
import tomllib
from pathlib import Path

from results import write_section

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/ringleader_fashion.toml"
PAPER_METHODS = ("Ringleader", "Malenia", "IA2SGD")
ASYNCOPT = ROOT / ".venv" / "bin" / "asyncopt"


def tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants, from ``/proc``."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            rss[int(entry.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def measured(command: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak tree RSS and the output of ``command``, which must succeed."""
    began = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def sample() -> None:
        while process.poll() is None:
            peak[0] = max(peak[0], tree_rss(process.pid))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = process.communicate()
    sampler.join()
    seconds = time.perf_counter() - began
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{out[-3000:]}")
    return seconds, peak[0], out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(PAPER_METHODS),
                        help="the [[methods]] labels to run (default: the paper's three)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="runs/rlf-compare", help="compare's --out")
    parser.add_argument("--smoke", action="store_true",
                        help="2 seeds over 2·10⁴ s, nothing written to RESULTS.md")
    args = parser.parse_args()
    methods = args.methods.split(",")
    seeds = 2 if args.smoke else args.seeds
    horizon = ["--set", "budget.time=20000.0"] if args.smoke else []
    load = os.getloadavg()[0]
    print(f"load average before: {load:.2f}", flush=True)
    command = [str(ASYNCOPT), "compare", CONFIG, *(a for m in methods for a in ("--method", m)),
               "--seeds", str(seeds), "--seed", "26", "--jobs", str(args.jobs), "--quiet",
               "--out", args.out, *horizon]
    seconds, peak, out = measured(command)
    print(out)
    rates: dict[str, list[float]] = {}
    arrivals = 0
    for summary_path in sorted(Path(ROOT / args.out).glob("*/seed*/summary.json")):
        summary = json.loads(summary_path.read_text())
        config = tomllib.loads((summary_path.parent / "config.toml").read_text())
        label = config["output"]["name"]  # compare records the method's label there
        rates.setdefault(label, []).append(summary["arrivals_per_second"])
        arrivals += summary["arrivals"]
    one_seconds, one_peak, _ = measured(
        [str(ASYNCOPT), "run", CONFIG, "--method", methods[0], "--quiet", "--no-plot",
         "--set", "budget.time=20000.0", "--set", f"output.dir={args.out}-one"])
    gib = 2**30
    lines = [f"Load average {load:.2f} before the start. `asyncopt compare {CONFIG} "
             f"--method {' --method '.join(methods)} --seeds {seeds} --seed 26 --jobs "
             f"{args.jobs}`{' ' + ' '.join(horizon) if horizon else ''}: {len(methods)} methods"
             f" × {seeds} seeds, {arrivals:,} arrivals in all.", "",
             "| what | value |", "|---|---|",
             f"| wall time of the comparison | {seconds:.0f} s ({seconds / 60:.1f} min) |",
             f"| peak memory, the comparison (--jobs {args.jobs}: driver and workers) | "
             f"{peak / gib:.2f} GiB |",
             f"| peak memory, one run alone ({methods[0]}, 2·10⁴ s) | {one_peak / gib:.2f} GiB "
             f"({one_seconds:.0f} s) |",
             *(f"| arrivals per wall second, {label} (median of {len(r)}) | "
               f"{statistics.median(r):,.0f} |" for label, r in rates.items())]
    body = "\n".join(lines)
    print(body)
    if not args.smoke:
        write_section("Ringleader comparison on Fashion-MNIST (paper 4)",
                      "python benchmarks/ringleader_fashion.py", body)


if __name__ == "__main__":
    main()
