"""Real frameworks behind ports: FastAPI, Dash, Streamlit, Panel, Gradio, Voila and TensorBoard,
in Chromium, on a path route and on a subdomain route, started with the commands of
examples/apps/commands.py.

For each framework and route kind: the owner (hub login) and a second hub user the port
admits (``access: users``) see the app's own content and make a server round trip (FastAPI:
the ``openapi.json`` that Swagger UI fetches, and an API call; Dash: a callback updating the
page; Streamlit: a button click over its websocket; Panel: a button click over Bokeh's
websocket; Gradio: a submit through its queue and event stream; Voila: a widget's click
handled by the kernel over its websocket; TensorBoard: the scalars its page fetches from its
data API), and so does a browser that opened the port once with the port token in the query
(the sidecar trades it for a cookie of the port). A browser without credentials is sent to the
hub login, and a script refused; a script with the token gets the app's answer.
docs/source/apps.md's table and commands are checked against what this module covers.

Apps and hubs are started once per module, all at once: one hub per route kind for all
frameworks.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import expect

from tests.rig import REPO, browser_login, free_port, port_open, wait_for

pytestmark = pytest.mark.apps
# a framework's first page on a cold start (Streamlit's bundle, Dash's renderer) on 2 busy cores
expect.set_options(timeout=30_000)

EXAMPLES = REPO / "examples/apps"
APPS_DOC = REPO / "docs/source/apps.md"
HUB_HOST = "hub.localhost"
NAMES = {
    "fastapi": "FastAPI",
    "dash": "Dash",
    "streamlit": "Streamlit",
    "panel": "Panel",
    "gradio": "Gradio",
    "voila": "Voilà",
    "tensorboard": "TensorBoard",
}
ROUTE_KINDS = ("path", "subdomain")
# what each visitor gets, for every framework and both route kinds (asserted below)
VISITORS = {"owner": "works", "users": "works", "token": "works", "anonymous": "refused"}


def load_commands():
    spec = importlib.util.spec_from_file_location("example_app_commands", EXAMPLES / "commands.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


COMMANDS = load_commands()


class FrameworkApp:
    """A framework's example app on a port of alice's, started with its command from
    examples/apps/commands.py in ``workdir`` (a copy of examples/apps: what the apps write
    there, TensorBoard's runs and Gradio's cache, stays out of the repository)."""

    def __init__(self, framework: str, kind: str, port: int, host: str, workdir: Path):
        self.framework, self.kind, self.port = framework, kind, port
        self.base_path = f"/ports/alice/{port}" if kind == "path" else ""
        argv = COMMANDS.command(framework, port, self.base_path, host)
        assert argv[0] == "python"
        self.log_path = workdir.parent / f"{framework}-{kind}-{port}.log"
        self.proc = subprocess.Popen(
            [sys.executable, *argv[1:]], cwd=workdir, stdout=self.log_path.open("w"), stderr=subprocess.STDOUT
        )

    def wait(self):
        # up to 14 apps and two hubs starting at once on 2 cores: Gradio's imports alone take a while
        wait_for(
            lambda: port_open(self.port) or self.proc.poll() is not None, 120, f"{self.framework} on {self.port}", self.log_path
        )
        assert self.proc.poll() is None, f"{self.framework} exited:\n{self.log_path.read_text()[-3000:]}"

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def hub_ports(ports: dict, kind: str) -> list[dict]:
    """The hub's ``c.PortRoutes.ports``: every framework's port for this kind of route."""
    entries = []
    for (framework, app_kind), port in ports.items():
        if app_kind == kind:
            options = COMMANDS.PATH_ROUTE_OPTIONS[framework] if kind == "path" else {}
            entries.append({"port": port, "name": framework, "access": "users", **options})
    return entries


def hub_config(kind: str) -> str:
    config = "c.PortRoutes.default_startup_behavior = 'random'\n"
    if kind == "subdomain":
        config += f"""
c.JupyterHub.subdomain_host = f"http://{HUB_HOST}:{{c.JupyterHub.port}}"
c.PortRoutes.route_template = "{{port}}--{{username}}.{{subdomain_host}}"
"""
    return config


def browser_host(hub, kind: str, port: int) -> str:
    """The host (and port) a browser shows for a port: the hub's, or the port's own."""
    return f"{port}--alice.{HUB_HOST}:{hub.port}" if kind == "subdomain" else f"127.0.0.1:{hub.port}"


@pytest.fixture(scope="module")
def stack(make_hub, module_tmp):
    """One hub per route kind for all frameworks, and every app: all started at once, then
    waited for (the hubs' ports are known before they start, and the apps need them)."""
    ports = {(f, kind): free_port() for f in COMMANDS.FRAMEWORKS for kind in ROUTE_KINDS}
    hubs = {kind: make_hub(hub_ports(ports, kind), hub_config(kind), name=kind, start=False) for kind in ROUTE_KINDS}
    for hub in hubs.values():
        hub.start(wait=False)
    workdir = module_tmp / "apps"
    shutil.copytree(EXAMPLES, workdir, ignore=shutil.ignore_patterns("__pycache__", "runs", ".gradio"))
    apps = {
        (f, kind): FrameworkApp(f, kind, port, browser_host(hubs[kind], kind, port), workdir) for (f, kind), port in ports.items()
    }
    try:
        for hub in hubs.values():
            hub.wait_started()
        for kind, hub in hubs.items():
            hub.user_token("bob")
            alice = hub.user_token("alice")
            hub.spawn("alice")
            hub.token = hub.proxytoken(alice, "POST", content="random").json()
            hub.kind = kind
            hub.base = f"http://{HUB_HOST}:{hub.port}" if kind == "subdomain" else hub.url
        for app in apps.values():
            app.wait()
        yield apps, hubs
    finally:
        for app in apps.values():  # all asked to stop first, then waited for
            app.proc.terminate()
        for app in apps.values():
            app.stop()


@pytest.fixture(scope="module")
def framework_apps(stack):
    return stack[0]


@pytest.fixture(scope="module")
def hubs(stack):
    return stack[1]


def on_this_machine(url: str) -> bool:
    host = urlsplit(url).hostname or ""  # data: and blob: URLs have none
    return host in ("", "127.0.0.1", HUB_HOST) or host.endswith("." + HUB_HOST)


def app_url(hub, app) -> str:
    if hub.kind == "subdomain":
        return f"http://{app.port}--alice.{HUB_HOST}:{hub.port}"
    return f"{hub.url}/ports/alice/{app.port}"


def logged_in(browser, hub, user: str):
    return browser_login(browser, hub.base, user)


# ---- per framework: its content and a server round trip, and one of its own requests ------------
def fastapi_works(page, url: str, base_path: str, query: str = ""):
    response = page.goto(url + "/docs" + query, wait_until="domcontentloaded")  # Swagger UI's scripts come from a CDN
    assert response.status == 200
    openapi = f"{base_path}/openapi.json"
    assert f"url: '{openapi}'" in page.content()  # the prefix breakage this guards against
    spec = page.evaluate("u => fetch(u).then(r => r.json())", openapi)
    assert spec["info"]["title"] == "jhproxy-routes FastAPI example"
    item = page.evaluate("u => fetch(u).then(r => r.json())", f"{base_path}/items/21")
    assert item == {"item_id": 21, "doubled": 42}


def dash_works(page, url: str, base_path: str, query: str = ""):
    page.goto(url + "/" + query)
    expect(page.locator("h1")).to_have_text("jhproxy-routes Dash example")
    expect(page.locator("#greeting")).to_have_text("Hello, world")  # the first callback
    page.fill("#name", "jhproxy")
    expect(page.locator("#greeting")).to_have_text("Hello, jhproxy")


def streamlit_works(page, url: str, base_path: str, query: str = ""):
    page.goto(url + query)  # as Streamlit prints it: no trailing slash
    try:
        # its first render loads a bundle of several MB: the slowest page here on 2 busy cores
        expect(page.get_by_text("jhproxy-routes Streamlit example")).to_be_visible(timeout=90_000)
    except AssertionError as e:
        raise AssertionError(f"{e}\nat {page.url}:\n{page.content()[:3000]}") from None
    expect(page.get_by_text("count: 0")).to_be_visible()
    page.get_by_role("button", name="Add one").click()  # over the websocket
    expect(page.get_by_text("count: 1")).to_be_visible()


def panel_works(page, url: str, base_path: str, query: str = ""):
    page.goto(url + "/" + query)
    expect(page.get_by_text("jhproxy-routes Panel example")).to_be_visible()
    expect(page.get_by_text("count: 0")).to_be_visible()
    page.get_by_role("button", name="Add one").click()  # over Bokeh's websocket
    expect(page.get_by_text("count: 1")).to_be_visible()


def gradio_works(page, url: str, base_path: str, query: str = ""):
    page.goto(url + query)  # as it prints it: no trailing slash (the sidecar adds it: its page asks for ./assets/)
    expect(page.get_by_text("jhproxy-routes Gradio example")).to_be_visible()
    page.get_by_label("name").fill("jhproxy")
    page.get_by_role("button", name="Greet").click()  # through the queue and its event stream
    expect(page.get_by_label("greeting")).to_have_value("Hello, jhproxy")


def voila_works(page, url: str, base_path: str, query: str = ""):
    page.goto(url + query)  # the bare port URL (Voila answers 404 there: the sidecar adds the slash)
    expect(page.get_by_text("jhproxy-routes Voilà example")).to_be_visible()
    expect(page.get_by_text("count: 0")).to_be_visible()
    page.get_by_role("button", name="Add one").click()  # to the kernel over its websocket
    expect(page.get_by_text("count: 1")).to_be_visible()


def tensorboard_works(page, url: str, base_path: str, query: str = ""):
    page.goto(url + "/" + query)
    # the scalars dashboard shows the example run's tag once the page fetched it from the data API
    expect(page.get_by_text("jhproxy-routes/loss").first).to_be_visible()
    runs = page.evaluate("u => fetch(u).then(r => r.json())", f"{base_path}/data/runs")
    assert runs == ["example"]


WORKS = {
    "fastapi": fastapi_works,
    "dash": dash_works,
    "streamlit": streamlit_works,
    "panel": panel_works,
    "gradio": gradio_works,
    "voila": voila_works,
    "tensorboard": tensorboard_works,
}
# what a page asks of a CDN (nothing on this machine reaches one; the pages work without it)
CDN_ASKED = {
    "fastapi": ("https://cdn.jsdelivr.net/npm/swagger-ui-dist@", "https://fastapi.tiangolo.com/img/favicon"),  # Swagger UI
    "voila": ("https://cdn.jsdelivr.net/npm/@fortawesome/",),  # the icons' CSS of its lab template
}
# a request the app's page makes after its first (a script gets 403 without a token, the app's answer with it)
OWN_REQUEST = {
    "fastapi": "/openapi.json",
    "dash": "/_dash-layout",
    "streamlit": "/_stcore/health",
    "panel": "/",
    "gradio": "/config",
    "voila": "/voila/templates/lab/static/voila.js",  # not the page: each rendering starts a kernel
    "tensorboard": "/data/runs",
}


@pytest.mark.parametrize("kind", ROUTE_KINDS)
@pytest.mark.parametrize("framework", COMMANDS.FRAMEWORKS)
def test_framework_behind_a_port(browser, hubs, framework_apps, framework, kind):
    hub, app = hubs[kind], framework_apps[(framework, kind)]
    url = app_url(hub, app)
    base_path = app.base_path  # what the page's own absolute URLs begin with

    for user in ("alice", "bob"):  # the owner, and a hub user the port admits
        context, page = logged_in(browser, hub, user)
        outside = []  # what the page asks of other hosts than the hub's
        page.on("request", lambda r: None if on_this_machine(r.url) else outside.append(r.url))
        WORKS[framework](page, url, base_path)
        context.close()
        assert all(u.startswith(CDN_ASKED.get(framework, ())) for u in outside), outside  # it worked without them

    # the port token in the query: traded for a cookie of the port, the token out of the address,
    # and the app works as for a login
    context = browser.new_context()
    page = context.new_page()
    WORKS[framework](page, url, base_path, query=f"?proxy_token={hub.token}")
    assert "proxy_token" not in page.url, page.url
    context.close()

    # no credentials: a browser goes to the hub login, a script is refused
    context = browser.new_context()
    page = context.new_page()
    page.goto(url + "/", wait_until="domcontentloaded")
    assert "/hub/login" in page.url
    context.close()
    host = {"Host": f"{app.port}--alice.{HUB_HOST}:{hub.port}"} if kind == "subdomain" else {}
    path = (app.base_path or "") + OWN_REQUEST[framework]
    assert httpx.get(hub.url + path, headers=host).status_code == 403
    # a script with the token in the query gets the app's answer itself (no redirect, no cookie)
    assert httpx.get(hub.url + path, headers=host, params={"proxy_token": hub.token}).status_code == 200


# ---- the docs say what this module covers --------------------------------------------------------
def documented_table(doc: Path) -> dict[str, dict[str, str]]:
    """The rows "framework | path route | subdomain route" of ``doc``, by framework."""
    rows = {}
    for line in doc.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        name = cells[0].split(" (")[0] if cells else ""
        if len(cells) == 3 and name in NAMES.values():
            rows[name] = {"path": cells[1], "subdomain": cells[2]}
    return rows


def test_docs_table_and_commands_match_the_suite():
    for doc in (APPS_DOC, REPO / "README.md"):
        table = documented_table(doc)
        assert set(table) == {NAMES[f] for f in COMMANDS.FRAMEWORKS}, (doc, table)
        for framework in COMMANDS.FRAMEWORKS:
            for kind in ROUTE_KINDS:  # every framework is tested on both kinds of route above
                assert table[NAMES[framework]][kind].startswith("yes"), (doc, framework, kind)
    text = APPS_DOC.read_text()
    for framework in COMMANDS.FRAMEWORKS:
        for base_path, host in (("/ports/alice/8050", "hub.example.org"), ("", "8050--alice.hub.example.org")):
            shown = " ".join(COMMANDS.command(framework, 8050, base_path, host))
            assert shown in text, f"docs/source/apps.md does not show: {shown}"
    for visitor, outcome in VISITORS.items():
        assert f"| {visitor} | {outcome} |" in text, (visitor, outcome)
