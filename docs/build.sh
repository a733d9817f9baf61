#!/usr/bin/env bash
# Build the documentation into docs/_build/html, warnings as errors (as CI does):
#   bash docs/build.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh
exec .venv/bin/python -m sphinx -W --keep-going -b html docs/source docs/_build/html "$@"
