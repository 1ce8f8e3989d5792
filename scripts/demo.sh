#!/usr/bin/env bash
# Set up, then run the main job: a real experiment with a small default (prints a summary, writes plots).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/asyncopt run configs/quickstart.toml "$@"
