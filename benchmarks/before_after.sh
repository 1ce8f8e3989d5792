#!/usr/bin/env bash
# Interleaved runs of the performance benchmarks from an older commit and from this tree:
#     bash benchmarks/before_after.sh BASE [OUT]     (e.g. BASE = afafd1f, before the one driver)
# Each script runs from BASE, then from here, then again, one at a time; the outputs go to
# OUT (default runs/before-after), the load average beside each run in OUT/log. Run it on a
# quiet machine. The scripts' own RESULTS.md sections end up holding the last run from here.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:?usage: before_after.sh BASE [OUT]}
out=${2:-runs/before-after}
here=$PWD
before=$(mktemp -d)/before
git worktree add -q --detach "$before" "$base"
trap 'git worktree remove --force "$before"' EXIT
mkdir -p "$out"
run() {  # tree label script args...
  local tree=$1 label=$2; shift 2
  echo "=== $label $* (load $(cut -d' ' -f1-3 /proc/loadavg))" >> "$out/log"
  (cd "$tree/benchmarks" && PYTHONPATH="$tree/src:$tree/benchmarks" "$here/.venv/bin/python" "$@") \
    > "$out/$label-${1%.py}-$(date +%H%M%S).txt" 2>&1 || echo "    failed" >> "$out/log"
}
for script in sim_overhead.py processes_throughput.py lockfree_vs_hogwild.py; do
  for _ in 1 2; do
    run "$before" before "$script"
    run "$here" after "$script"
  done
done
run "$before" before ray_throughput.py
run "$here" after ray_throughput.py
run "$before" before sim_speed.py ../configs/ringleader_mnist.toml 3000 2
run "$here" after sim_speed.py ../configs/ringleader_mnist.toml 3000 2
echo "done: $out" >> "$out/log"
