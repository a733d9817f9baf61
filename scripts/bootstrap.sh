#!/usr/bin/env bash
# Idempotent setup for the demo and the tests, run from any directory:
#   - .venv/ in the repo root with the package installed editable, with its test extras
#     (re-installed only when pyproject.toml changed since the last install); with
#     JHPROXY_ROUTES_JUPYTERHUB=5, .venv-jupyterhub5/ with JupyterHub 5.x instead;
#   - node_modules/ with the pinned configurable-http-proxy (npm ci when missing or when
#     package-lock.json changed since the last install);
#   - the JupyterLab extension (labextension/, pinned by its yarn.lock) built into
#     jhproxy_routes/labextension/ when missing or older than its sources, and linked into
#     the venv where a wheel installs it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

die() { echo "bootstrap: error: $*" >&2; exit 1; }

command -v python3 >/dev/null 2>&1 || die "python3 not found; install Python >= 3.10 (Debian: apt-get install python3 python3-venv)"
command -v npm >/dev/null 2>&1 || die "npm not found; install Node.js with npm (Debian: apt-get install nodejs npm)"

# Python: the virtualenv and the package. JHPROXY_ROUTES_JUPYTERHUB=5 (or 6): a second one,
# .venv-jupyterhub5, with the newest JupyterHub of that series and the test extras only
SERIES="${JHPROXY_ROUTES_JUPYTERHUB:-}"
VENV=".venv${SERIES:+-jupyterhub$SERIES}"
EXTRAS="test,docs,dev,apps"
PINS=()
if [[ -n "$SERIES" ]]; then
    [[ "$SERIES" =~ ^[56]$ ]] || die "JHPROXY_ROUTES_JUPYTERHUB=$SERIES: the tested series are 5 and 6"
    EXTRAS="test"
    PINS=("jupyterhub>=$SERIES,<$((SERIES + 1))")
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "bootstrap: creating $VENV" >&2
    python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
fi
PY_STAMP="$VENV/.jhproxy-routes-installed"
LAB_DEST="$VENV/share/jupyter/labextensions/@jhproxy-routes/labextension"  # where a wheel puts the JupyterLab extension
if [[ ! -f "$PY_STAMP" || pyproject.toml -nt "$PY_STAMP" ]]; then
    echo "bootstrap: pip install -e .[$EXTRAS] ${PINS[*]} into $VENV" >&2
    # the link made below, out of pip's way: pip would write the wheel's copy of the
    # JupyterLab extension through it, and remove the build through it on the next uninstall
    if [[ -L "$LAB_DEST" ]]; then rm "$LAB_DEST"; fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[$EXTRAS]" "${PINS[@]}" \
        || die "pip install failed"
    touch "$PY_STAMP"
fi

# the server extension's switch where a wheel puts it (hatchling's editable install puts it
# there too; this keeps it there for one made before the move from setuptools)
install -D -m 644 jupyter-config/jupyter_server_config.d/jhproxy_routes.json \
    "$VENV/etc/jupyter/jupyter_server_config.d/jhproxy_routes.json"

# the JupyterLab extension: jlpm (JupyterLab's yarn, from jupyter-builder in the venv) builds
# it as the package's build does (pyproject.toml), whose wheels then ship this build as it is
LAB_OUT=jhproxy_routes/labextension
LAB_SOURCES=(labextension/src labextension/style labextension/schema labextension/package.json labextension/yarn.lock labextension/tsconfig.json)
if [[ ! -f "$LAB_OUT/static/style.js" || ! -d labextension/node_modules || -n "$(find "${LAB_SOURCES[@]}" -newer "$LAB_OUT/static/style.js" -print -quit)" ]]; then
    echo "bootstrap: building the JupyterLab extension (labextension/)" >&2
    (
        cd labextension
        export PATH="$ROOT/$VENV/bin:$PATH"
        jlpm install --immutable >/dev/null && jlpm build:prod
    ) || die "building labextension/ failed (jlpm install --immutable; jlpm build:prod)"
fi
# where a wheel puts it: a link to the build (the editable install's copy would go stale)
mkdir -p "$(dirname "$LAB_DEST")"
[[ -L "$LAB_DEST" || ! -e "$LAB_DEST" ]] || rm -rf "$LAB_DEST"
ln -sfn "$ROOT/$LAB_OUT" "$LAB_DEST"

# Node: configurable-http-proxy, pinned by package-lock.json
NODE_STAMP=node_modules/.jhproxy-routes-installed
if [[ ! -x node_modules/.bin/configurable-http-proxy || ! -f "$NODE_STAMP" || package-lock.json -nt "$NODE_STAMP" ]]; then
    echo "bootstrap: npm ci" >&2
    npm ci --no-audit --no-fund || die "npm ci failed"
    touch "$NODE_STAMP"
fi
