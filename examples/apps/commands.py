"""The command that starts each example app behind a port of jhproxy-routes, run in this
directory inside the user's server. ``base_path`` is the port's route path on a path route
(``/ports/alice/8050``, as ``/hub/proxytoken/`` shows it, without the trailing slash), empty
on a subdomain route (a host of its own). ``python commands.py dash 8050 /ports/alice/8050``
prints one. tests/test_apps.py starts the apps with these very commands, and checks that
docs/source/apps.md shows them.
"""

from __future__ import annotations

import shlex
import sys

FRAMEWORKS = ("fastapi", "dash", "streamlit")

#: the port's entry options in ``c.PortRoutes.ports`` on a path route (none on a subdomain route)
PATH_ROUTE_OPTIONS = {"fastapi": {"strip_prefix": True}, "dash": {}, "streamlit": {}}


def command(framework: str, port: int, base_path: str = "") -> list[str]:
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
    raise ValueError(f"unknown framework {framework!r}; one of {FRAMEWORKS}")


if __name__ == "__main__":
    print(shlex.join(command(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "")))
