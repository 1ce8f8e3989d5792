#!/usr/bin/env bash
# Create .venv and install asyncopt with its test tools. Safe to run again (fast when done).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# Torch first, pinned: a looser requirement with no torch installed pulls several GB of CUDA
# packages; torch==2.13.0 takes the CPU build where the machine provides it.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q torch==2.13.0
# The cluster extra (Ray with its dashboard, ~1 min the first time) and tensorboard, so that CI
# runs the Ray runtime's tests, `ray job submit` included, and the TensorBoard writer's.
.venv/bin/pip install -q -e ".[dev,cluster,tensorboard]"
