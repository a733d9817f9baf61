"""``jhproxy-routes``: the port routes of a running hub, from a terminal.

    jhproxy-routes list [--user NAME] [--json]
    jhproxy-routes show USER[/SERVER] [--json] [--show-token]
    jhproxy-routes set USER[/SERVER] [--mode disabled|allow_all|random [--expires-in SECONDS]] [--port PORT=ACCESS ...]
    jhproxy-routes check [jupyterhub_config.py]

``list``, ``show`` and ``set`` talk to the hub's API with the JupyterHub API token in
``$JUPYTERHUB_API_TOKEN`` (never on the command line, where ``ps`` would show it): a user's
token manages that user's servers, an admin's (scope ``tokens``) everyone's. The hub is
``--hub-url``, else ``$JUPYTERHUB_URL``, else the hub of ``$JUPYTERHUB_API_URL`` (set inside a
user's server), else http://127.0.0.1:8000. ``check`` reads a config file and reports
problems without starting anything; it exits 1 if there are errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from urllib.parse import quote

import httpx

from .config import PORT_ACCESS, PORT_RANGE, valid_port_access

MODES = ("disabled", "allow_all", "random")


class CLIError(Exception):
    """A problem to report in one line, then exit 1."""


def hub_url(given: str | None) -> str:
    if given:
        return given.rstrip("/") + "/"
    if os.environ.get("JUPYTERHUB_URL"):
        return os.environ["JUPYTERHUB_URL"].rstrip("/") + "/"
    api = os.environ.get("JUPYTERHUB_API_URL", "").rstrip("/")
    if api.endswith("/hub/api"):
        return api[: -len("hub/api")]
    return "http://127.0.0.1:8000/"


class Hub:
    """The hub's API, with the token from the environment."""

    def __init__(self, url: str):
        token = os.environ.get("JUPYTERHUB_API_TOKEN")
        if not token:
            raise CLIError("set JUPYTERHUB_API_TOKEN to a JupyterHub API token (jupyterhub token, or the hub's token page)")
        self.url = url
        self.client = httpx.Client(base_url=url, headers={"Authorization": f"token {token}"}, timeout=30)

    def request(self, method: str, path: str, **kwargs):
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise CLIError(f"cannot reach the hub at {self.url}: {e}") from None
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code >= 400:
            message = data.get("message") if isinstance(data, dict) else None
            raise CLIError(f"{method} {path}: {response.status_code} {message or response.reason_phrase}")
        if data is None:
            raise CLIError(f"{method} {path}: the answer is not JSON; is {self.url} a JupyterHub with jhproxy-routes?")
        return data


def split_server(name: str) -> tuple[str, str]:
    user, _, server = name.partition("/")
    if not user:
        raise CLIError(f"{name!r}: give USER or USER/SERVER")
    return user, server


def table(rows: list[list[str]], header: list[str]) -> str:
    cells = [header, *rows]
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


# ---- commands -------------------------------------------------------------------------
def list_routes(hub: Hub, args) -> str:
    routes = hub.request("GET", "hub/api/jhproxy-routes/routes", params={"user": args.user} if args.user else None)
    if args.json:
        return json.dumps(routes, indent=2)
    if not routes:
        return "no port routes" + (f" of {args.user}" if args.user else "")
    rows = [
        [r["user"], r["server"] or "-", r["port"], r["via"], r["mode"], r["access"] or "?", r["target"] or "?", r["path"]]
        for r in routes
    ]
    return table(rows, ["USER", "SERVER", "PORT", "VIA", "MODE", "ACCESS", "TARGET", "PATH"])


def show_settings(settings: dict, show_token: bool) -> str:
    where = f"{settings['user']}/{settings['server']}" if settings["server"] else f"{settings['user']} (default server)"
    lines = [f"{where}: {'running' if settings['running'] else 'not running'}, mode {settings['mode']}"]
    if settings["mode"] == "token":
        if not settings["token_readable"]:
            lines.append("token: stored as a hash only (set the mode to random for a new one)")
        elif show_token:
            lines.append(f"token: {settings['token']}")
        else:
            lines.append("token: set (--show-token prints it)")
        if settings.get("token_expires"):
            left = settings["token_expires_in"]
            lines.append(
                f"expires: {settings['token_expires']}" + (f" (in {left} s)" if left else " (expired: set the mode to random)")
            )
    rows = [
        [p["port"], p["name"] or "-", p["access"], ", ".join(p["admits"]) or "nobody", p["url"] or "-"] for p in settings["ports"]
    ]
    lines.append(table(rows, ["PORT", "NAME", "ACCESS", "ADMITS", "URL"]))
    return "\n".join(lines)


def show(hub: Hub, args) -> str:
    user, server = split_server(args.server)
    settings = hub.request("GET", f"hub/proxytoken/{quote(server, safe='')}", params={"user": user, "format": "full"})
    return json.dumps(settings, indent=2) if args.json else show_settings(settings, args.show_token)


def set_settings(hub: Hub, args) -> str:
    user, server = split_server(args.server)
    body: dict = {}
    if args.mode:
        body["mode"] = args.mode
    if args.expires_in is not None:
        if args.mode != "random":
            raise CLIError("--expires-in is the lifetime of a new token: give it with --mode random")
        body["expires_in"] = args.expires_in
    ports = {}
    for item in args.port or []:
        port, sep, access = item.partition("=")
        if not sep or not (port.isdigit() or PORT_RANGE.fullmatch(port)) or not valid_port_access(access):
            raise CLIError(
                f"--port {item!r}: write PORT=ACCESS (PORT a port or a range such as 8000-8099),"
                f" ACCESS one of {', '.join(PORT_ACCESS)} or group:<name>"
            )
        ports[port] = access
    if ports:
        body["ports"] = ports
    if not body:
        raise CLIError("nothing to set: give --mode and/or --port PORT=ACCESS")
    settings = hub.request("POST", f"hub/proxytoken/{quote(server, safe='')}", params={"user": user}, json=body)
    # a new token is shown once, as `jupyterhub token` shows a new API token
    return json.dumps(settings, indent=2) if args.json else show_settings(settings, args.show_token or args.mode == "random")


def check(args) -> tuple[str, bool]:
    from .check import check_config_file

    problems = check_config_file(args.config)
    errors = sum(p.level == "error" for p in problems)
    warnings = sum(p.level == "warning" for p in problems)
    lines = [f"{p.level}: {p.message}" for p in problems]
    lines.append(
        f"{args.config}: {errors} error(s), {warnings} warning(s)" if errors or warnings else f"{args.config}: no problems found"
    )
    return "\n".join(lines), errors == 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="jhproxy-routes", description="The port routes of a running hub, from a terminal.")
    top.add_argument(
        "--hub-url", help="the hub's public URL (default: $JUPYTERHUB_URL, the hub of $JUPYTERHUB_API_URL, http://127.0.0.1:8000)"
    )
    commands = top.add_subparsers(dest="command", required=True)
    p = commands.add_parser("list", help="list the live port routes (owner, port, target, mode, access)")
    p.add_argument("--user", help="only this user's")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    for name, text in (
        ("show", "show a server's token mode and port access"),
        ("set", "change a server's token mode or port access"),
    ):
        p = commands.add_parser(name, help=text)
        p.add_argument("server", metavar="USER[/SERVER]")
        p.add_argument("--json", action="store_true", help="print the API's JSON")
        p.add_argument("--show-token", action="store_true", help="print the token")
        if name == "set":
            p.add_argument("--mode", choices=MODES, help="nobody / anyone / a new random token")
            p.add_argument("--expires-in", type=int, metavar="SECONDS", help="with --mode random: the new token's lifetime")
            p.add_argument(
                "--port",
                action="append",
                metavar="PORT=ACCESS",
                help=f"one port's access: {', '.join(PORT_ACCESS)}, group:<name>",
            )
    p = commands.add_parser("check", help="check a jupyterhub_config.py for problems")
    p.add_argument("config", nargs="?", default="jupyterhub_config.py")
    return top


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    try:
        if args.command == "check":
            output, ok = check(args)
        else:
            hub = Hub(hub_url(args.hub_url))
            command = {"list": list_routes, "show": show, "set": set_settings}[args.command]
            output, ok = command(hub, args), True
    except CLIError as e:
        sys.exit(f"jhproxy-routes: error: {e}")
    print(output)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
