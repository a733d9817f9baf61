#!/usr/bin/env bash
# The jhproxy-routes demo on this machine: `bash examples/run-demo.sh`, Ctrl-C to stop.
# Sets up .venv and node_modules (scripts/bootstrap.sh), then runs a JupyterHub on
# http://127.0.0.1:8000 (env DEMO_PORT to change) from demo-run/, where its state is kept.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh

mkdir -p demo-run
# the key that encrypts auth state; made once, kept in demo-run/crypt_key
if [[ ! -s demo-run/crypt_key ]]; then
    (
        umask 077
        if command -v openssl >/dev/null 2>&1; then
            openssl rand -hex 32 >demo-run/crypt_key
        else
            .venv/bin/python -c 'import secrets; print(secrets.token_hex(32))' >demo-run/crypt_key
        fi
    )
fi
chmod 600 demo-run/crypt_key
export JUPYTERHUB_CRYPT_KEY="$(cat demo-run/crypt_key)"
export DEMO_PASSWORD="$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(12))')"
PORT="${DEMO_PORT:-8000}"
HUB="http://127.0.0.1:$PORT"

cat <<BANNER

======================================================================
 jhproxy-routes demo
----------------------------------------------------------------------
 Log in:      $HUB/hub/login
              user: any name, e.g. demo; password: $DEMO_PASSWORD
 Start your server, then its apps are at (open them while logged in:
 your hub login lets you in; others need the port token):
              $HUB/ports/<user>/5000/
              $HUB/ports/<user>/5001/
 Your ports:  $HUB/hub/proxytoken/  (page in a browser, JSON API for scripts;
              also in the hub's Services menu), and in JupyterLab: the
              Ports panel in the left sidebar; start an app in a terminal
              (python3 -m http.server 5002) and JupyterLab tells you

 With curl (user demo, server started from $HUB/hub/home):
   1. create a JupyterHub API token at $HUB/hub/token, then
        T=<that token>
   2. get a new port token (the answer is the token as a JSON string):
        curl -H "Authorization: token \$T" -d random $HUB/hub/proxytoken/
        PT=<that token, without the quotes>
   3. call the app on port 5000 with it:
        curl -H "X-Proxy-Token: \$PT" $HUB/ports/demo/5000/

 State is kept in demo-run/. Ctrl-C stops the hub.
======================================================================

BANNER

cd demo-run
exec ../.venv/bin/jupyterhub -f ../examples/jupyterhub_config_demo.py
