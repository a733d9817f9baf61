"""The command that starts each example app behind a port of jhproxy-routes, run in this
directory inside the user's server. ``base_path`` is the port's route path on a path route
(``/ports/alice/8050``, as ``/hub/proxytoken/`` shows it, without the trailing slash), empty
on a subdomain route (a host of its own). ``host`` is the host the browser shows for the port
(the hub's on a path route, the port's own on a subdomain route, with its port if not 80/443):
only Panel needs it. ``python commands.py panel 8050 /ports/alice/8050 hub.example.org``
prints one. tests/test_apps.py starts the apps with these very commands, and checks that
docs/source/apps.md shows them.
"""

from __future__ import annotations

import shlex
import sys

FRAMEWORKS = ("fastapi", "dash", "streamlit", "panel", "gradio", "voila", "tensorboard")

#: the port's entry options in ``c.PortRoutes.ports`` on a path route (none on a subdomain route)
PATH_ROUTE_OPTIONS = {
    "fastapi": {"strip_prefix": True},
    "dash": {},
    "streamlit": {},
    "panel": {},
    "gradio": {"strip_prefix": True},
    "voila": {},
    "tensorboard": {},
}


def command(framework: str, port: int, base_path: str = "", host: str = "") -> list[str]:
    base_path = base_path.rstrip("/")
    if framework == "fastapi":
        argv = ["python", "-m", "uvicorn", "fastapi_app:app", "--host", "0.0.0.0", "--port", str(port)]
        return argv + (["--root-path", base_path] if base_path else [])
    if framework == "dash":
        return ["python", "dash_app.py", "--port", str(port)] + (["--base-path", base_path] if base_path else [])
    if framework == "streamlit":
        argv = ["python", "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port)]
        argv += ["--server.baseUrlPath", base_path] if base_path else []
        return [*argv, "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    if framework == "panel":
        argv = ["python", "-m", "panel", "serve", "panel_app.py", "--port", str(port), "--address", "0.0.0.0"]
        argv += ["--allow-websocket-origin", host or f"localhost:{port}", "--index", "panel_app"]
        return argv + (["--prefix", base_path] if base_path else [])
    if framework == "gradio":
        return ["python", "gradio_app.py", "--port", str(port)] + (["--root-path", base_path] if base_path else [])
    if framework == "voila":
        argv = ["python", "-m", "voila", "voila_app.ipynb", f"--port={port}", "--Voila.ip=0.0.0.0", "--no-browser"]
        return argv + ([f"--base_url={base_path}/"] if base_path else [])
    if framework == "tensorboard":
        argv = ["python", "tensorboard_app.py", "--logdir", "runs", "--port", str(port), "--bind_all"]
        return argv + (["--path_prefix", base_path] if base_path else [])
    raise ValueError(f"unknown framework {framework!r}; one of {FRAMEWORKS}")


if __name__ == "__main__":
    print(shlex.join(command(sys.argv[1], int(sys.argv[2]), *sys.argv[3:5])))
