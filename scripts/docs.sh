#!/usr/bin/env bash
# Build the API reference from the docstrings (pdoc) into site/api, or into the folder given.
#   bash scripts/docs.sh            # then open site/api/index.html
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-site/api}"
# the package (with the subpackages its __all__ names) and every other top-level module
modules=$(.venv/bin/python - <<'PY'
import pkgutil

import asyncopt

named = {name for name in asyncopt.__all__}
print(" ".join(["asyncopt"] + [f"asyncopt.{m.name}" for m in pkgutil.iter_modules(asyncopt.__path__)
                               if m.name not in named and m.name != "__main__"]))
PY
)
# shellcheck disable=SC2086  # one word per module
.venv/bin/pdoc $modules --docformat restructuredtext -o "$OUT"
echo "API reference: $OUT/index.html"
