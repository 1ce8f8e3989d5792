"""PASSM+ against Hogwild! against synchronous SGD, time to loss targets on this machine.

Kungurtsev, Egan, Chatterjee & Alistarh (AAAI 2021, paper 5) report PASSM+ about 1.2× faster
than the state of the art at equal accuracy. This runs the methods of ``configs/passm.toml``
(an MLP on digits) and ``configs/passm_cnn.toml`` (ResNet-8 on digits) with 2 processes,
``--seeds`` seeds, *interleaved* (seed 0 of every method, then seed 1, ...) so that the
machine's drift hits every method alike, and reports per method: wall seconds to each training
loss target (median over seeds, and each seed), gradients applied per second, and the final test
accuracy; then the ratios of median times, Hogwild! / PASSM+ and sync / PASSM+, beside the
paper's 1.2×. Time on a quiet machine only: it states the load average before the first run.

    .venv/bin/python benchmarks/passm_speedup.py              # 5 seeds: about 11 minutes
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
from pathlib import Path

from results import write_section

import asyncopt
from asyncopt import config as configuration
from asyncopt.aggregate import time_to_target

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"configs/passm.toml": (0.001, 0.0001), "configs/passm_cnn.toml": (0.001, 0.0001)}


def run_setting(path: str, targets: tuple[float, ...], seeds: int, out: Path,
                overrides: list[str]) -> list[str]:
    methods = configuration.methods(configuration.read(ROOT / path))
    rows: dict[str, list[dict[str, float]]] = {label: [] for label, _ in methods}
    for seed in range(seeds):  # interleaved
        for label, raw in methods:
            raw = configuration.apply_overrides(raw, [*overrides, f"seed={seed}"])
            raw["output"] = {"dir": str(out), "name": f"{Path(path).stem}-{label}-{seed}"}
            result = asyncopt.run(raw)
            history, summary = result.history, result.summary
            rows[label].append({
                **{f"t{t}": time_to_target(history, "loss", t) for t in targets},
                "rate": summary["version"] / summary["now"],
                "accuracy": summary["final"].get("accuracy", math.nan)})
            print(f"{path} {label} seed {seed}: {rows[label][-1]}", flush=True)
    heads = " | ".join(f"time to loss {t:g} (s): median; per seed" for t in targets)
    lines = [f"**{path}**, {seeds} seeds\n",
             f"| method | {heads} | steps/s (median) | final test accuracy (median; range) |",
             "|---|" + "---|" * (len(targets) + 2)]
    medians: dict[str, dict[float, float]] = {}
    for label, runs in rows.items():
        cells = []
        for t in targets:
            times = [r[f"t{t}"] for r in runs]
            medians.setdefault(label, {})[t] = statistics.median(times)
            cells.append(f"{_s(statistics.median(times))}; " + ", ".join(_s(x) for x in times))
        accuracy = [r["accuracy"] for r in runs]
        rate = statistics.median(r["rate"] for r in runs)
        spread = f"{min(accuracy):.3f}–{max(accuracy):.3f}"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {rate:,.0f} | "
                     f"{statistics.median(accuracy):.3f}; {spread} |")
    passm = medians.get("PASSM+", {})
    for other in (label for label in medians if label != "PASSM+"):
        ratios = ", ".join(f"loss {t:g}: {medians[other][t] / passm[t]:.2f}×" for t in targets
                           if math.isfinite(passm[t]))
        lines.append(f"\nMedian time {other} / PASSM+: {ratios} (paper: ≈ 1.2× over the state "
                     f"of the art).")
    return lines


def _s(x: float) -> str:
    return "not reached" if math.isinf(x) else f"{x:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], help="an override for every run")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    lines = [f"Load average {load:.2f} before the first run. Each run: 2 worker processes, "
             "evaluations in the main process (the lock-free workers go on meanwhile; the "
             "synchronous server waits for them).\n"]
    with tempfile.TemporaryDirectory() as out:
        for path, targets in SETTINGS.items():
            lines += [*run_setting(path, targets, args.seeds, Path(out), args.set), ""]
    print("\n".join(lines))
    write_section("PASSM+ speed-up (paper 5)",
                  "python benchmarks/passm_speedup.py " + " ".join(sys.argv[1:]),
                  "\n".join(lines))


if __name__ == "__main__":
    main()
