"""JupyterHub config of the demo (``bash examples/run-demo.sh`` runs it from demo-run/).

One machine, no containers: a shared password (any user name, the password from $DEMO_PASSWORD),
local single-user servers, each started with the echo app on ports 5000 and 5001, which
jhproxy-routes exposes at http://127.0.0.1:8000/ports/<user>/5000/ and /5001/. The servers
open JupyterLab, with the Ports panel in its left sidebar.
The hub's state files (sqlite, cookie secret) go in the current directory.
"""

import os
import sys
from pathlib import Path

import jhproxy_routes

c = get_config()  # noqa: F821  (provided by jupyterhub when it loads this file)

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent  # the venv that runs the hub (.venv/bin)
APP_PORTS = [5000, 5001]

c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = int(os.environ.get("DEMO_PORT", "8000"))

c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = os.environ["DEMO_PASSWORD"]  # set by run-demo.sh
c.Authenticator.allow_all = True

c.JupyterHub.spawner_class = "simple"
c.JupyterHub.allow_named_servers = True
c.Spawner.cmd = [
    sys.executable,
    str(REPO / "examples/with_app.py"),
    *[arg for port in APP_PORTS for arg in ("--app-port", str(port))],
    "--",
    str(VENV_BIN / "jupyterhub-singleuser"),
]
if os.geteuid() == 0:
    c.Spawner.args = ["--allow-root"]
c.Spawner.default_url = "/lab"  # JupyterLab, with the Ports panel (labextension/)

c.ConfigurableHTTPProxy.command = [str(REPO / "node_modules/.bin/configurable-http-proxy")]

# and 5002 for an app of your own: `python3 -m http.server 5002` in a JupyterLab terminal
c.PortRoutes.ports = [*APP_PORTS, {"port": 5002, "name": "your app"}]
# local servers share this machine's ports: fine for a one-person demo, see the help text
c.PortRoutes.allow_shared_host = True
jhproxy_routes.install(c)
