"""The Ports panel in JupyterLab in a real container (DockerSpawner through podman), where an
app on 127.0.0.1 is out of the proxy's reach but for the in-server part's relay: driven in
Chromium as a person does, with commands typed into a JupyterLab terminal.

The image has JupyterLab and Dash; the package is installed as an admin installs it in a
single-user image: here the checkout, its server extension's switch and the built JupyterLab
extension are mounted (``IN_SERVER``, ``LABEXTENSION``).
"""

from __future__ import annotations

import re
import time

import httpx
import pytest
from playwright.sync_api import expect

from tests.rig import REPO, wait_for
from tests.test_docker import docker_hub
from tests.test_lab import (
    LISTED_WITHIN,
    TOAST,
    expect_listening,
    lab_origin,
    open_lab,
    open_terminal,
    row,
    write_quiet_settings,
)
from tests.test_loopback_relay import IN_SERVER, netns_listeners

USER = "carla"
SERVE, DASH = 5000, 8050
BUILT = REPO / "jhproxy_routes/labextension"  # scripts/bootstrap.sh builds it


def in_lab(jupyter_dir) -> str:
    """The config lines that give the containers JupyterLab with the panel, opened at /lab."""
    if not (BUILT / "package.json").exists():
        pytest.fail(f"the JupyterLab extension is not built at {BUILT}: run scripts/bootstrap.sh", pytrace=False)
    return (
        IN_SERVER
        + f"""
c.DockerSpawner.volumes.update({{
    {str(BUILT)!r}: {{"bind": "/opt/venv/share/jupyter/labextensions/@jhproxy-routes/labextension", "mode": "ro"}},
    {str(jupyter_dir)!r}: {{"bind": "/root/.jupyter", "mode": "rw"}},
}})
c.Spawner.default_url = "/lab"
c.Spawner.http_timeout = 120
"""
    )


@pytest.fixture(scope="module")
def hub(make_hub, engine, module_tmp):
    write_quiet_settings(module_tmp / "jupyter")
    hub = docker_hub(make_hub, engine, ports=[SERVE, DASH], app_ports=[], extra=in_lab(module_tmp / "jupyter"))
    hub.token = hub.user_token(USER)
    hub.spawn(USER)
    return hub


@pytest.fixture(scope="module")
def lab(browser, hub):
    context, page = open_lab(browser, hub, USER)
    yield page
    context.close()


@pytest.fixture(scope="module")
def terminal(lab):
    return open_terminal(lab, prompt="#")  # root's prompt, in the container


def announced(lab, engine, hub, port: int) -> None:
    """Once the app listens in the container (its start-up is the app's, Dash's imports take
    seconds), the port's row says so and a notification too, within LISTED_WITHIN."""
    wait_for(lambda: ("127.0.0.1", port) in netns_listeners(engine, hub, USER), 60, f"the app on 127.0.0.1:{port}")
    listened = time.monotonic()
    expect_listening(lab, port)
    left = max(1, LISTED_WITHIN - int((time.monotonic() - listened) * 1000))
    expect(lab.locator(TOAST, has_text=f"is listening on {port}")).to_be_visible(timeout=left)
    assert time.monotonic() - listened < LISTED_WITHIN / 1000


def test_a_loopback_app_typed_in_a_terminal_is_announced_and_reached(lab, hub, engine, terminal):
    terminal(f"mkdir -p /tmp/site/ports/{USER}/{SERVE} && cd /tmp/site && python3 -m http.server --bind 127.0.0.1 {SERVE}")
    announced(lab, engine, hub, SERVE)
    entry = row(lab, SERVE)
    expect(entry.locator(".jp-jhpr-label")).to_contain_text("python")
    url = entry.locator(".jp-jhpr-link").get_attribute("href")
    assert url == f"{lab_origin(lab)}/ports/{USER}/{SERVE}/"
    # the owner's login, in another page of the browser: through the relay (today's 502 without it)
    page = lab.context.new_page()
    page.goto(url)
    expect(page.locator("h1")).to_have_text(f"Directory listing for /ports/{USER}/{SERVE}/", timeout=30_000)
    page.close()
    panel = httpx.get(f"{hub.url}/user/{USER}/jhproxy-routes/ports", headers={"Authorization": f"token {hub.token}"}, timeout=30)
    [served] = [e for e in panel.json()["ports"] if e["port"] == SERVE]
    assert served["loopback_only"] and served["relayed"], served


def test_the_token_and_the_visibility_from_the_panel(lab, hub):
    entry = row(lab, SERVE)
    url = entry.locator(".jp-jhpr-link").get_attribute("href")
    assert httpx.get(url, timeout=30).status_code in (302, 403)
    lab.get_by_role("button", name="Make a new port token").click()
    token_field = lab.locator(".jp-jhpr-token-value")
    expect(token_field).to_have_value(re.compile(r".{16,}"), timeout=15_000)
    with_token = httpx.get(url, headers={"X-Proxy-Token": token_field.input_value()}, timeout=30)
    assert with_token.status_code == 200 and "Directory listing" in with_token.text, with_token.text[:300]
    entry.locator("select").select_option("public")
    wait_for(lambda: httpx.get(url, timeout=30).status_code == 200, 15, "the route to be public", interval=0.5)
    entry.locator("select").select_option("server")
    wait_for(lambda: httpx.get(url, timeout=30).status_code != 200, 15, "the route to be the server's again", interval=0.5)


def test_a_dash_app_on_its_default_host(lab, hub, engine, terminal):
    """``app.run()`` as Dash's docs write it: 127.0.0.1."""
    terminal.interrupt()
    script = (
        "from dash import Dash, html; "
        f"app = Dash(__name__, url_base_pathname='/ports/{USER}/{DASH}/'); "
        "app.layout = html.H1('dash on its default host'); "
        f"app.run(port={DASH})"
    )
    terminal(f'/opt/venv/bin/python -c "{script}"')
    announced(lab, engine, hub, DASH)
    page = lab.context.new_page()
    page.goto(row(lab, DASH).locator(".jp-jhpr-link").get_attribute("href"))
    expect(page.locator("h1")).to_have_text("dash on its default host", timeout=30_000)  # rendered by Dash's own scripts
    page.close()
    terminal.interrupt()
