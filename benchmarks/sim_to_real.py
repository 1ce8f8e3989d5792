"""Does the simulator, fed one short probe of this machine, predict real runs? Issue 17's check.

For each setting and real runtime: one probe run (asgd, ``PROBE`` s) records every worker's
compute times, latencies, the server's time per arrival, the mean time of an evaluation and the
CPUs the processes shared; then, for each method, the simulator with ``[speed] trace = <the
probe>`` and nothing else predicts the time to a training-loss target over the seeds, and the
real runtime measures it over the same seeds, interleaved (seed 0 of every method, then seed
1, ...). The trace speed model's defaults are what the prediction uses: a cancelled gradient
is finished first (``cancel = "finish"``), each evaluation pauses the server for the probe's
measured time (``eval_time``), and when the probe's workers did not pad, they and the server
share the probe machine's cores (``cores``, processor sharing; :mod:`asyncopt.runtimes.sim.
machine`). The prediction is not circular: the probe ran asgd only, and the other methods load
the machine differently (minibatch and rennala leave workers idle, rennala and ringmaster
cancel).

Settings (digits MLP, closed-form gradients, batch 32, plain SGD at one step size):

* *emulated*: 3 workers with speed factors 1, 1, 4 through ``time_scale``, chosen so that the
  padding is at most half of the slow worker's time per gradient;
* *machine*: more workers than cores (4 processes, or 3 Ray actors, on the 2 cores), no
  padding: the heterogeneity is the machine's own.

Goal: the predicted ranking equals the measured one and each predicted median time is within
20 % of the measured one. Evaluations run in the driver every ``every`` s of the setting; a run
stops at the target. Time only on a quiet machine: the load average before the first run is
printed.

    .venv/bin/python benchmarks/sim_to_real.py                  # processes; about 10 minutes
    .venv/bin/python benchmarks/sim_to_real.py --runtime ray    # Ray
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import write_section

import asyncopt
from asyncopt.aggregate import time_to_target
from asyncopt.config import dumps
from asyncopt.runtimes.sim.speed import make_speed_model

METHODS = ("asgd", "minibatch", "rennala", "ringmaster")
PROBLEM = {"name": "mlp", "dataset": "digits", "hidden": 32, "batch_size": 32,
           "gradient": "closed_form"}
TARGET, BUDGET, PROBE = 0.05, 15.0, 4.0
SETTINGS = {  # workers (processes, Ray), [speed], time_scale, evaluations every (s)
    "emulated": ((3, 3), {"factors": [1.0, 1.0, 4.0]}, 0.0005, 0.1),
    "machine": ((4, 3), {}, 0.0, 0.05),
}


def title(setting: str, workers: int) -> str:
    if setting == "emulated":
        return f"emulated: {workers} workers, factors 1, 1, 4"
    return f"machine: {workers} workers on {os.cpu_count()} cores, no padding"


def base(workers: int, speed: dict, time_scale: float, every: float, runtime: str) -> dict:
    options = {"time_scale": time_scale, **({"worker_cpus": 0.5} if runtime == "ray" else {})}
    return {"workers": workers, "problem": PROBLEM, "rule": {"name": "sgd", "lr": 0.1},
            "speed": speed, "budget": {"time": BUDGET, "target_loss": TARGET},
            "eval": {"every": every, "unit": "time"}, "runtime": runtime,
            "runtime_options": options}


def measure(setting: str, runtime: str, seeds: int, out: Path) -> list[str]:
    counts, speed, time_scale, every = SETTINGS[setting]
    workers = counts[runtime == "ray"]
    config = base(workers, speed, time_scale, every, runtime)
    setting = title(setting, workers)
    probe = whole(asyncopt.run({**config, "protocol": {"name": "asgd"}, "seed": 100,
                          "budget": {"time": PROBE},
                          "output": {"dir": str(out), "name": f"probe-{runtime}-{workers}"}}))
    model = make_speed_model({"trace": str(probe.run_dir)}, workers, 0)
    predicted: dict[str, list[float]] = {m: [] for m in METHODS}
    measured: dict[str, list[float]] = {m: [] for m in METHODS}
    for seed in range(seeds):
        for method in METHODS:
            real = whole(asyncopt.run({**config, "protocol": {"name": method}, "seed": seed},
                                      save=False))
            measured[method].append(time_to_target(real.history, "loss", TARGET))
            simulated = whole(asyncopt.run({**config, "protocol": {"name": method},
                                            "seed": seed, "runtime": "sim",
                                            "runtime_options": {},
                                            "speed": {"trace": str(probe.run_dir)}},
                                           save=False))
            predicted[method].append(time_to_target(simulated.history, "loss", TARGET))
            print(f"{setting} {runtime} {method} seed {seed}: measured "
                  f"{measured[method][-1]:.3g} s, predicted {predicted[method][-1]:.3g} s",
                  flush=True)
    lines_tools = tools(config, probe.run_dir, out)
    rows = {m: (statistics.median(predicted[m]), statistics.median(measured[m])) for m in METHODS}
    rank_p = sorted(METHODS, key=lambda m: rows[m][0])
    rank_m = sorted(METHODS, key=lambda m: rows[m][1])
    lines = [f"**{setting}, {runtime}** ({seeds} seeds, evaluations every {every:g} s; probe: "
             f"{probe.summary['arrivals']} arrivals in {PROBE:g} s; the simulator's speed "
             f"model: {model.describe()})\n",
             "| method | predicted (median s) | measured (median s) | predicted / measured | "
             "rank predicted | rank measured |", "|---|---|---|---|---|---|"]
    for m in METHODS:
        p, r = rows[m]
        ratio = p / r if math.isfinite(p) and math.isfinite(r) and r > 0 else math.nan
        lines.append(f"| {m} | {p:.3g} | {r:.3g} | {ratio:.2f} | {rank_p.index(m) + 1} | "
                     f"{rank_m.index(m) + 1} |")
    within = sum(abs(rows[m][0] / rows[m][1] - 1) <= 0.2 for m in METHODS
                 if math.isfinite(rows[m][0]) and math.isfinite(rows[m][1]) and rows[m][1] > 0)
    lines.append(f"\nRanking {'equal' if rank_p == rank_m else 'differs'} "
                 f"(predicted {', '.join(rank_p)}; measured {', '.join(rank_m)}); "
                 f"{within} of {len(METHODS)} medians within 20 %. {lines_tools}\n")
    return lines


def whole(result: asyncopt.Result) -> asyncopt.Result:
    """``result``, unless its run was interrupted (a signal) or failed: then the benchmark
    stops here and writes nothing, since its medians would mix in a run cut short."""
    status = result.summary["status"]
    if status in ("interrupted", "failed"):
        raise SystemExit(f"a run ended with status {status!r} "
                         f"({result.summary['reason']}): stopped, RESULTS.md left as it was")
    return result


def tools(config: dict, probe: Path, out: Path) -> str:
    """How long ``asyncopt calibrate`` of the probe and ``asyncopt advise`` from it take."""
    path = out / f"{probe.name}.toml"
    path.write_text(dumps({**config, "budget": {"time": BUDGET}}))  # tuned by final loss
    command = [str(Path(sys.executable).parent / "asyncopt")]
    began = time.perf_counter()
    subprocess.run([*command, "calibrate", str(probe)], check=True, capture_output=True)
    calibrate = time.perf_counter() - began
    began = time.perf_counter()
    advice = subprocess.run([*command, "advise", str(path), "--speed", str(probe), "--target",
                             str(TARGET), "--jobs", "2", "--quiet"], check=True,
                            capture_output=True, text=True).stdout
    advise = time.perf_counter() - began
    ranked = [line.split("|")[2].strip() for line in advice.splitlines()
              if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    return (f"`asyncopt calibrate` of the probe took {calibrate:.1f} s; `asyncopt advise` "
            f"(4 methods × 5 step sizes, then 3 seeds each, --jobs 2) {advise:.0f} s and "
            f"ranked, with each method's own tuned step size: {', '.join(ranked)}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime", choices=("processes", "ray"), default="processes")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    lines = [f"Load average {os.getloadavg()[0]:.2f} before the first run; target training "
             f"loss {TARGET:g} (a run stops there), budget {BUDGET:g} s.\n"]
    with tempfile.TemporaryDirectory() as out:
        for setting in SETTINGS:
            lines += measure(setting, args.runtime, args.seeds, Path(out))
    print("\n".join(lines))
    write_section(f"Simulator against reality ({args.runtime})",
                  "python benchmarks/sim_to_real.py " + " ".join(sys.argv[1:]), "\n".join(lines))


if __name__ == "__main__":
    main()
