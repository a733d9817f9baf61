#!/usr/bin/env bash
# Run the test suite: `bash tests/run.sh [pytest args]` from any directory.
# Sets up .venv and node_modules (scripts/bootstrap.sh) and the Debian packages the tests run
# (Chromium, etcd, redis: scripts/install-test-packages.sh) first; pytest's exit code is passed through.
# Three test processes (pytest-xdist), each module in one of them (its tests share its hub):
# most of a test's time is waiting on real processes, so three fit two cores. `-n 0` among
# the arguments runs everything in this process (a debugger, `-s`).
# JHPROXY_ROUTES_JUPYTERHUB=5 runs them on JupyterHub 5.x (.venv-jupyterhub5); `-m jupyterhub5`
# picks the modules that CI runs there too (tests/conftest.py).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh
bash scripts/install-test-packages.sh
VENV=".venv${JHPROXY_ROUTES_JUPYTERHUB:+-jupyterhub$JHPROXY_ROUTES_JUPYTERHUB}"  # as bootstrap.sh makes it
exec "$VENV/bin/python" -m pytest -p no:cacheprovider -n 3 --dist loadfile "$@"
