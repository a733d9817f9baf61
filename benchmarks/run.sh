#!/usr/bin/env bash
# The benchmark in one command (see benchmarks/README.md):
#   bash benchmarks/run.sh [--quick] [--profile]
#   bash benchmarks/run.sh --scale [--servers N]     (the route manager at scale: scale.py)
#   bash benchmarks/run.sh --relay [--quick]         (the in-server part's loopback relay: relay.py)
# Sets up .venv and node_modules (scripts/bootstrap.sh), installs what only the benchmark needs
# when missing (jupyter-server-proxy and py-spy into .venv, wrk and nginx from Debian), then runs bench.py.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh
if ! .venv/bin/python -c "import jupyter_server_proxy" 2>/dev/null || [[ ! -x .venv/bin/py-spy ]]; then
    echo "bench: pip install jupyter-server-proxy py-spy (into .venv)" >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check jupyter-server-proxy py-spy
fi
if ! command -v wrk >/dev/null 2>&1; then
    echo "bench: apt-get install wrk" >&2
    apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; } \
        || { echo "bench: error: install wrk (Debian: apt-get install wrk)" >&2; exit 1; }
fi
if ! command -v nginx >/dev/null 2>&1; then  # the reference row: nginx in the sidecar's place
    echo "bench: apt-get install nginx-light" >&2
    apt-get install -y nginx-light >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y nginx-light >/dev/null; } \
        || { echo "bench: error: install nginx (Debian: apt-get install nginx-light)" >&2; exit 1; }
fi
if [[ "${1:-}" == "--relay" ]] && [[ ! -f /usr/lib/nginx/modules/ngx_stream_module.so ]]; then  # nginx's TCP hop, the reference
    echo "bench: apt-get install libnginx-mod-stream" >&2
    apt-get install -y libnginx-mod-stream >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y libnginx-mod-stream >/dev/null; } \
        || { echo "bench: error: install nginx's stream module (Debian: apt-get install libnginx-mod-stream)" >&2; exit 1; }
fi
if [[ "${1:-}" == "--relay" ]]; then
    shift
    exec .venv/bin/python benchmarks/relay.py --json benchmarks/results/relay.json "$@"
fi
if [[ "${1:-}" == "--scale" ]]; then
    shift
    exec .venv/bin/python benchmarks/scale.py "$@"
fi
exec .venv/bin/python benchmarks/bench.py "$@"
