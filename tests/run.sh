#!/usr/bin/env bash
# Run the test suite: `bash tests/run.sh [pytest args]` from any directory.
# Sets up .venv and node_modules (scripts/bootstrap.sh) and Debian's Chromium for the browser
# tests (scripts/install-chromium.sh) first; pytest's exit code is passed through.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh
bash scripts/install-chromium.sh
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
