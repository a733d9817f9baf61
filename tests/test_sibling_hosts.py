"""Port hosts over plain HTTP: a sibling host's page cannot use a visitor's port login.

Chromium sends no fetch metadata (``Sec-Fetch-*``) to plain-HTTP hosts other than localhost,
and no ``Origin`` with an image's, a script's or a no-cors fetch's GET. The hosts here are
real sibling names below ``hub.test`` (Chromium maps ``*.test`` to 127.0.0.1: ``rig.TEST_DOMAIN``),
never ``*.localhost``, which Chromium treats as secure.

What an attacker would try: mallory's public port serves a page that alice (logged into the
hub) visits. It runs the port login in a hidden frame of alice's owner-only port, then reads
that port by ``<img>``, ``<script>`` and no-cors ``fetch``, with and without a ``Referer``; and
it asks the port to begin a login from a fetch that claims to want HTML.
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.rig import PAGE_APP, browser_login, shoot, wait_for

HUB_HOST = "hub.test"


@pytest.fixture(scope="module")
def pages(module_tmp):
    folder = module_tmp / "pages"
    folder.mkdir()
    return folder


@pytest.fixture(scope="module")
def apps(make_app, pages):
    return {name: make_app(script=PAGE_APP, args=("--pages", str(pages))) for name in ("alice", "mallory")}


@pytest.fixture(scope="module")
def hub(make_hub, apps):
    ports = [{"port": apps["alice"].port, "access": "owner"}, {"port": apps["mallory"].port, "access": "public"}]
    config = f"""
c.JupyterHub.subdomain_host = f"http://{HUB_HOST}:{{c.JupyterHub.port}}"
c.PortRoutes.route_template = "{{port}}--{{username}}.{{subdomain_host}}"
"""
    hub = make_hub(ports, config)
    for user in ("alice", "mallory"):
        hub.user_token(user)
    hub.spawn("alice")
    hub.spawn("mallory")
    wait_for(lambda: len(hub.port_routes()) == 4, 30, "the port routes of both servers", hub.log_path)
    hub.origin = f"http://{HUB_HOST}:{hub.port}"
    return hub


def origin(hub, app, user: str) -> str:
    return f"http://{app.port}--{user}.{HUB_HOST}:{hub.port}"


def received(app, marker: str) -> list[dict]:
    return [entry for entry in httpx.get(f"http://127.0.0.1:{app.port}/__log__", timeout=10).json() if marker in entry["path"]]


def attack_page(target: str) -> str:
    """mallory's page: the login in a hidden frame of ``target``, then reads of it."""
    return f"""<!DOCTYPE html><title>cat pictures</title>
<iframe id="frame" style="display:none" src="{target}/framed-login"></iframe>
<script>
document.getElementById("frame").onload = () => setTimeout(() => {{
  for (const [tag, path, policy] of [["img", "img-secret"], ["script", "script-secret"], ["img", "noreferrer-secret", "no-referrer"]]) {{
    const element = document.createElement(tag);
    if (policy) element.referrerPolicy = policy;
    element.src = "{target}/" + path;
    document.body.append(element);
  }}
  Promise.allSettled([
    fetch("{target}/fetch-secret", {{mode: "no-cors", credentials: "include"}}),
    fetch("{target}/html-fetch-secret", {{mode: "no-cors", credentials: "include", headers: {{"Accept": "text/html", "Upgrade-Insecure-Requests": "1"}}}}),
  ]).then(() => setTimeout(() => {{ document.title = "done"; }}, 1000));
}}, 500);
</script>"""


OWN_PAGE = """<!DOCTYPE html><title>alice's dashboard</title>
<img src="own-img-secret"><script src="own-script-secret.js"></script>
<script>fetch("own-fetch-secret").then(r => r.text()).then(t => { document.title = "loaded " + t; });</script>"""


def test_a_sibling_page_cannot_use_the_visitors_port_login(browser, hub, apps, pages):
    alice_port, mallory_port = origin(hub, apps["alice"], "alice"), origin(hub, apps["mallory"], "mallory")
    (pages / "attack.html").write_text(attack_page(alice_port))
    context, page = browser_login(browser, hub.origin, "alice")
    page.goto(f"{mallory_port}/attack.html")
    page.wait_for_function("document.title === 'done'", timeout=30_000)
    shoot(page, "sibling-host-attack")
    # the frame ran the login (a frame's navigation looks like a page's over plain HTTP), but
    # what alice's port answered it may not be framed by another origin: nothing shows
    assert received(apps["alice"], "framed-login"), "the frame's login did not run: this test shows nothing"
    frames = [frame.url for frame in page.frames[1:]]
    assert frames == ["chrome-error://chromewebdata/"], f"alice's port was shown in mallory's frame: {frames}"
    for path in ("img-secret", "script-secret", "noreferrer-secret", "fetch-secret", "html-fetch-secret"):
        assert received(apps["alice"], path) == [], f"mallory's page reached alice's port with her login: {path}"
    # the same browser opening the port itself gets in, and so do the page's own images, scripts and fetches
    (pages / "own.html").write_text(OWN_PAGE)
    page.goto(f"{alice_port}/own.html")
    page.wait_for_function("document.title === 'loaded ok'", timeout=30_000)
    wait_for(lambda: len(received(apps["alice"], "own-")) == 3, 10, "the page's own requests to reach the app")
    context.close()
    denied = [json.loads(line) for line in (hub.dir / "jhproxy-routes-audit.jsonl").read_text().splitlines()]
    reasons = {entry["path"].rsplit("/", 1)[-1]: entry["reason"] for entry in denied if entry.get("event") == "denied"}
    assert reasons == dict.fromkeys(
        ("img-secret", "script-secret", "noreferrer-secret", "fetch-secret", "html-fetch-secret"), "cross-site login"
    ), reasons


def test_only_a_page_navigation_begins_a_login(hub, apps):
    """Without fetch metadata a login begins only for what a browser sends with navigations
    (``Upgrade-Insecure-Requests: 1``); a request that merely asks for HTML gets 403."""
    host = f"{apps['alice'].port}--alice.{HUB_HOST}:{hub.port}"
    html = {"Host": host, "Accept": "text/html"}
    asked = httpx.get(f"{hub.url}/page.html", headers=html, timeout=30)
    assert asked.status_code == 403 and "Location" not in asked.headers, asked.text[:300]
    navigation = httpx.get(f"{hub.url}/page.html", headers={**html, "Upgrade-Insecure-Requests": "1"}, timeout=30)
    assert navigation.status_code == 302 and "/hub/api/oauth2/authorize" in navigation.headers["Location"]
    post = httpx.post(f"{hub.url}/page.html", headers={**html, "Upgrade-Insecure-Requests": "1"}, timeout=30)
    assert post.status_code == 403
    assert received(apps["alice"], "page.html") == []
