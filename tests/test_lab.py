"""The Ports panel in real JupyterLab: a real hub (CHP, sidecar) whose user's server runs
JupyterLab as a system user of its own (LocalProcessSpawner, as on The Littlest JupyterHub),
driven in Chromium as a person does: log in, open JupyterLab, open a terminal and type a
command that starts an app.

What must happen: within 5 s the panel lists the app's port with its process and URL and a
notification says so; the URL opens the app with the owner's login and with the port token
made in the panel; a visibility chosen in the panel takes effect at the route; a port outside
the allow-list is listed as not allowed, with no URL, and not reached; the server's own port
and its kernel's never appear; "Don't show again" silences the notifications. Outside a hub
JupyterLab shows no panel. Screenshots (light and dark theme) land in tests/screenshots/.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from tests.rig import BIN, SCREENSHOTS, browser_login, free_port, port_open, root_view, wait_for

USER = f"lab{secrets.token_hex(3)}"  # a system user made for this module, removed after
PANEL_TAB = '.lm-TabBar-tab[data-id="jhproxy-routes-ports"]'
TOAST = ".Toastify__toast"
LISTED_WITHIN = 5_000  # ms, from the command typed to the panel's row and the notification


# ~/.jupyter of a test user: no "build recommended" dialog (an extension of the apps extra asks
# for a build), the terminal's text in the page (xterm's accessibility tree, to see its
# prompt), no news toast
QUIET_SETTINGS = {
    "labconfig/page_config.json": {"buildCheck": False, "buildAvailable": False},
    "lab/user-settings/@jupyterlab/terminal-extension/plugin.jupyterlab-settings": {"screenReaderMode": True},
    "lab/user-settings/@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false"},
}


def write_quiet_settings(jupyter_dir: Path) -> None:
    for path, content in QUIET_SETTINGS.items():
        (jupyter_dir / path).parent.mkdir(parents=True, exist_ok=True)
        (jupyter_dir / path).write_text(json.dumps(content))


@pytest.fixture(scope="module")
def ports():
    return {name: free_port() for name in ("app", "idle", "outside", "tls")}


@pytest.fixture(scope="module")
def system_user(module_tmp):
    """USER as a real system user with a home; removed at the end with whatever still runs
    as that user (apps started in its terminals)."""
    result = subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", USER], capture_output=True, text=True)
    if result.returncode:
        pytest.fail(f"useradd {USER} failed (the test needs root): {result.stderr}", pytrace=False)
    entry = pwd.getpwnam(USER)
    home = Path(entry.pw_dir)
    write_quiet_settings(home / ".jupyter")
    subprocess.run(["chown", "-R", f"{USER}:{USER}", str(home / ".jupyter")], check=True)
    yield entry

    def gone():
        for pid in pids_of(entry.pw_uid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return not pids_of(entry.pw_uid)

    wait_for(gone, 15, f"the processes of {USER} to end")
    result = subprocess.run(["userdel", "--remove", USER], capture_output=True, text=True)
    assert result.returncode == 0, f"userdel {USER}: {result.stderr}"


def pids_of(uid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.fixture(scope="module")
def hub(system_user, make_hub, ports, module_tmp):  # the user first: removed after the hub stops
    config = """
        c.JupyterHub.spawner_class = "localprocess"  # the server as its user's own system user
        c.Spawner.args = []  # not root: no --allow-root
        c.Spawner.default_url = "/lab"
        c.Spawner.http_timeout = 120
        c.PortRoutes.allow_shared_host = False
    """
    allowed = [
        ports["app"],
        {"port": ports["idle"], "name": "dashboard", "allowed_access": ["owner", "server"]},
        {"port": ports["tls"], "protocol": "https"},  # an app that serves TLS itself
    ]
    home = Path(system_user.pw_dir)
    for port in ports.values():  # the route keeps its path: what http.server lists there
        folder = home / f"ports/{USER}/{port}"
        folder.mkdir(parents=True)
        (folder / "hello.txt").write_text(f"hello from port {port}\n")
    subprocess.run(["chown", "-R", f"{USER}:{USER}", str(home / "ports")], check=True)
    hub = make_hub(allowed, config, command_prefix=root_view(module_tmp))
    hub.token = hub.user_token(USER)
    hub.spawn(USER)
    return hub


def open_lab(browser, hub, user: str):
    """``user``'s JupyterLab in Chromium, logged in through the hub's form, the Ports panel
    open: (context, page)."""
    context, page = browser_login(browser, hub.url, user)
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(f"{hub.url}/user/{user}/lab")
    expect(page.locator(PANEL_TAB)).to_be_visible(timeout=90_000)
    open_panel(page)
    return context, page


@pytest.fixture(scope="module")
def lab(browser, hub):
    context, page = open_lab(browser, hub, USER)
    yield page
    context.close()


def open_panel(page):
    if "lm-mod-current" not in (page.locator(PANEL_TAB).get_attribute("class") or ""):
        page.locator(PANEL_TAB).click()
    expect(page.locator("#jhproxy-routes-ports")).to_be_visible()


def row(page, port: int):
    return page.locator(f'#jhproxy-routes-ports li[data-port="{port}"]')


def expect_listening(page, port: int) -> None:
    """The port's row says it listens, within LISTED_WITHIN."""
    expect(row(page, port)).to_have_class(re.compile(r"\bjp-jhpr-listening\b"), timeout=LISTED_WITHIN)


def settings_dir(system_user) -> Path:
    return Path(system_user.pw_dir, ".jupyter/lab/user-settings")


def open_terminal(page, prompt: str = "$"):
    """A JupyterLab terminal, opened from the launcher: ``type(line)`` types into it, and
    ``type.interrupt()`` presses Control+C there."""
    page.locator('.jp-LauncherCard[data-category="Other"]', has_text="Terminal").first.click()
    screen = page.locator(".jp-Terminal .xterm-screen").first
    expect(screen).to_be_visible(timeout=30_000)
    expect(page.locator(".jp-Terminal .xterm-accessibility-tree").first).to_contain_text(prompt, timeout=30_000)

    def type_line(line: str) -> None:
        screen.click()
        page.keyboard.type(line, delay=5)
        page.keyboard.press("Enter")

    def interrupt() -> None:
        screen.click()
        page.keyboard.press("Control+C")

    type_line.interrupt = interrupt
    return type_line


@pytest.fixture(scope="module")
def terminal(lab):
    return open_terminal(lab)


def listing(port: int) -> str:
    """The title of http.server's page at the port's route (whose path reaches the app)."""
    return f"Directory listing for /ports/{USER}/{port}/"


def serve_command(port: int) -> str:
    """What the user types: the system's python3 (Debian has no ``python``; the login shell
    of the terminal has the system's PATH)."""
    return f"python3 -m http.server --bind 127.0.0.1 {port}"


def test_the_panel_lists_the_allowed_ports_never_the_servers_own_or_its_kernels(lab, hub, ports):
    """Before any app: the admin's allowed port that nothing listens on, by its name; the
    Jupyter server's own port and a running kernel's ZMQ ports never."""
    idle = row(lab, ports["idle"])
    expect(idle).to_contain_text("dashboard", timeout=10_000)
    expect(row(lab, ports["tls"]).locator(".jp-jhpr-protocol")).to_have_text("HTTPS")
    expect(idle.locator(".jp-jhpr-protocol")).to_be_hidden()
    # the admin's policy for this port: only its choices are offered
    api = httpx.get(f"{hub.url}/user/{USER}/jhproxy-routes/ports", headers={"Authorization": f"token {hub.token}"}, timeout=30)
    [policy] = [entry["allowed_access"] for entry in api.json()["ports"] if entry["port"] == ports["idle"]]
    offered = idle.locator("select option").evaluate_all("options => options.map(o => o.value)")
    assert policy and "public" not in policy and offered == policy, (offered, policy)
    expect(idle).to_contain_text("Nothing is listening on this port")
    expect(idle.locator(".jp-jhpr-link")).to_have_attribute("href", f"{lab_origin(lab)}/ports/{USER}/{ports['idle']}/")

    started = httpx.post(
        f"{hub.url}/user/{USER}/api/kernels", headers={"Authorization": f"token {hub.token}"}, json={}, timeout=60
    )
    assert started.status_code == 201, started.text
    kernel = started.json()["id"]
    runtime = Path(pwd.getpwnam(USER).pw_dir, ".local/share/jupyter/runtime")
    connection = wait_for(lambda: next(runtime.glob(f"kernel-{kernel}.json"), None), 60, "the kernel's connection file")
    kernel_ports = {json.loads(connection.read_text())[f"{name}_port"] for name in ("shell", "iopub", "stdin", "control", "hb")}
    wait_for(lambda: all(port_open(port) for port in kernel_ports), 60, "the kernel's ports", hub.log_path)
    server_port = int(hub.chp_routes()[f"/user/{USER}"]["target"].rsplit(":", 1)[1])
    time.sleep(3)  # two polls of the panel with the kernel running
    listed = {
        int(p) for p in lab.locator("#jhproxy-routes-ports li[data-port]").evaluate_all("rows => rows.map(r => r.dataset.port)")
    }
    assert ports["idle"] in listed
    assert server_port not in listed and not kernel_ports & listed, (server_port, kernel_ports, listed)
    httpx.delete(f"{hub.url}/user/{USER}/api/kernels/{kernel}", headers={"Authorization": f"token {hub.token}"}, timeout=60)


def test_an_app_typed_into_a_terminal_is_listed_and_announced_within_5_s(lab, terminal, ports):
    port = ports["app"]
    terminal(serve_command(port))
    typed = time.monotonic()
    entry = row(lab, port)
    expect_listening(lab, port)
    toast = lab.locator(TOAST, has_text=f"is listening on {port}")
    expect(toast).to_be_visible(timeout=max(1, LISTED_WITHIN - int((time.monotonic() - typed) * 1000)))
    assert time.monotonic() - typed < LISTED_WITHIN / 1000
    assert re.search(rf"python\S* is listening on {port}", toast.inner_text()), toast.inner_text()
    for action in ("Open", "Copy link", "Change visibility", "Don't show again"):
        expect(toast.get_by_role("button", name=action)).to_be_visible()
    expect(entry).to_contain_text("listening")
    expect(entry.locator(".jp-jhpr-label")).to_contain_text("python")
    assert serve_command(port) in entry.locator(".jp-jhpr-label").get_attribute("title")  # the command line
    assert entry.locator(".jp-jhpr-link").get_attribute("href") == f"{lab_origin(lab)}/ports/{USER}/{port}/"

    # "Change visibility": the panel shows the port, its select has the focus
    toast.get_by_role("button", name="Change visibility").click()
    expect(entry.locator("select")).to_be_focused()
    SCREENSHOTS.mkdir(exist_ok=True)
    lab.screenshot(path=str(SCREENSHOTS / "jupyterlab-ports-panel.png"))


def lab_origin(page) -> str:
    return re.match(r"https?://[^/]+", page.url).group(0)


def test_the_url_opens_the_app_with_the_owners_login_and_with_the_token(lab, hub, ports):
    entry = row(lab, ports["app"])
    url = entry.locator(".jp-jhpr-link").get_attribute("href")
    with lab.context.expect_page() as opened:
        entry.get_by_role("button", name=f"Open port {ports['app']} in a new tab").click()
    tab = opened.value
    tab.wait_for_load_state()
    expect(tab.locator("h1")).to_have_text(listing(ports["app"]), timeout=30_000)  # through the hub's OAuth, by her login
    assert tab.url == url
    tab.close()

    # by keyboard: Tab from the link to its Copy button, Enter copies the URL
    lab.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=lab_origin(lab))
    entry.locator(".jp-jhpr-link").focus()
    lab.keyboard.press("Tab")
    copy = entry.get_by_role("button", name=f"Copy the URL of port {ports['app']}")
    expect(copy).to_be_focused()
    lab.keyboard.press("Enter")
    assert lab.evaluate("navigator.clipboard.readText()") == url

    assert httpx.get(url, timeout=30).status_code in (302, 403)  # no login, no token: not in
    token_field = lab.locator(".jp-jhpr-token-value")
    lab.get_by_role("button", name="Make a new port token").click()
    expect(token_field).to_have_value(re.compile(r".{16,}"), timeout=15_000)
    token = token_field.input_value()
    expect(lab.locator(".jp-jhpr-expires")).to_contain_text(re.compile(r"Expires|Does not expire"))
    with_token = httpx.get(url, headers={"X-Proxy-Token": token}, timeout=30)
    assert with_token.status_code == 200 and listing(ports["app"]) in with_token.text, with_token.text[:300]
    assert httpx.get(url, headers={"X-Proxy-Token": token[:-2] + "xx"}, timeout=30).status_code in (302, 403)


def test_visibility_chosen_in_the_panel_takes_effect_at_the_route(lab, browser, ports):
    entry = row(lab, ports["app"])
    url = entry.locator(".jp-jhpr-link").get_attribute("href")
    select = entry.locator("select")
    offered = select.locator("option").evaluate_all("options => options.map(o => o.value)")
    assert offered == ["server", "owner", "users", "shared", "public", "disabled"], offered  # no admin policy: all
    visitor = browser.new_context()
    page = visitor.new_page()
    assert listing(ports["app"]) not in (page.goto(url), page.content())[1]  # not public yet

    select.focus()
    select.select_option("public")  # as the keyboard does: a change event on the focused select
    expect(entry.locator(".jp-jhpr-admits")).to_contain_text("anyone", timeout=15_000)

    def visitor_gets_in():
        response = page.goto(url)
        return response.status == 200 and listing(ports["app"]) in page.content()

    wait_for(visitor_gets_in, 15, "the route to admit a visitor without a login", interval=0.5)
    select.select_option("owner")
    expect(entry.locator(".jp-jhpr-admits")).not_to_contain_text("anyone", timeout=15_000)
    wait_for(lambda: not visitor_gets_in(), 15, "the route to refuse the visitor again", interval=0.5)
    visitor.close()


def test_a_port_outside_the_allow_list_is_listed_as_not_allowed(lab, hub, terminal, ports):
    terminal.interrupt()  # the app on the allowed port stops
    app = row(lab, ports["app"])
    expect(app).to_contain_text("Nothing is listening on this port", timeout=LISTED_WITHIN)
    toasts_before = lab.locator(TOAST, has_text=f"is listening on {ports['outside']}").count()

    terminal(serve_command(ports["outside"]))
    outside = row(lab, ports["outside"])
    expect(outside).to_contain_text("Not allowed by the hub's admin", timeout=LISTED_WITHIN)
    expect(outside.locator(".jp-jhpr-label")).to_contain_text("python")
    expect(outside.locator(".jp-jhpr-url")).to_be_hidden()
    expect(outside.locator("select")).to_be_hidden()
    time.sleep(2.5)  # another poll: still no notification for it
    assert lab.locator(TOAST, has_text=f"is listening on {ports['outside']}").count() == toasts_before == 0
    for path in (f"/ports/{USER}/{ports['outside']}/", f"/ports/{USER}/{ports['outside']}"):
        response = hub.get(path, follow_redirects=True)  # no route: the hub's own 404
        assert response.status_code == 404 and "Directory listing" not in response.text, (path, response.url)
    terminal.interrupt()
    expect(outside).to_have_count(0, timeout=LISTED_WITHIN)  # not allowed and gone: no longer listed


def test_dont_show_again_silences_the_notifications(lab, terminal, ports, system_user):
    """A port that stops and listens again is announced again, until "Don't show again",
    which sets the user's setting (the settings file JupyterLab keeps for the user)."""
    port = ports["app"]
    lab.locator(PANEL_TAB).click()  # the panel closed: the background poll still announces
    expect(lab.locator("#jhproxy-routes-ports")).to_be_hidden()
    terminal(serve_command(port))
    toast = lab.locator(TOAST, has_text=f"is listening on {port}")
    expect(toast).to_be_visible(timeout=LISTED_WITHIN)
    open_panel(lab)
    toast.get_by_role("button", name="Don't show again").click()
    stored = settings_dir(system_user) / "@jhproxy-routes/labextension/plugin.jupyterlab-settings"
    wait_for(lambda: stored.exists() and '"notify": false' in stored.read_text(), 10, f"{stored} to say notify: false")

    terminal.interrupt()
    expect(row(lab, port)).to_contain_text("Nothing is listening on this port", timeout=LISTED_WITHIN)
    expect(toast).to_have_count(0, timeout=20_000)  # the earlier one gone (clicked)
    terminal(serve_command(port))
    expect_listening(lab, port)
    time.sleep(3)  # a poll after the one that listed it
    assert lab.locator(TOAST, has_text=f"is listening on {port}").count() == 0


def test_screenshots_light_and_dark(lab, system_user, ports):
    """The panel in JupyterLab's light and dark themes, for the docs (docs/source/_static/)."""
    open_panel(lab)
    panel = lab.locator("#jhproxy-routes-ports")
    expect_listening(lab, ports["app"])
    panel.screenshot(path=str(SCREENSHOTS / "jupyterlab-ports-light.png"))
    background = panel.evaluate("node => getComputedStyle(node).backgroundColor")

    themes = settings_dir(system_user) / "@jupyterlab/apputils-extension/themes.jupyterlab-settings"
    themes.parent.mkdir(parents=True, exist_ok=True)
    themes.write_text(json.dumps({"theme": "JupyterLab Dark"}))
    os.chown(themes, system_user.pw_uid, system_user.pw_gid)
    lab.reload()
    expect(lab.locator("body[data-jp-theme-light='false']")).to_have_count(1, timeout=90_000)
    open_panel(lab)
    expect_listening(lab, ports["app"])
    assert panel.evaluate("node => getComputedStyle(node).backgroundColor") != background  # the theme's colours
    panel.screenshot(path=str(SCREENSHOTS / "jupyterlab-ports-dark.png"))
    lab.screenshot(path=str(SCREENSHOTS / "jupyterlab-ports-dark-window.png"))
    themes.unlink()


def test_no_panel_outside_a_hub(browser, module_tmp):
    """A plain ``jupyter lab`` (no hub): the extension stays out of sight."""
    port, token = free_port(), secrets.token_hex(8)
    log = module_tmp / "plain-lab.log"
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(module_tmp / "plain-runtime")}
    env = {k: v for k, v in env.items() if not k.startswith("JUPYTERHUB_")}
    command = [str(BIN / "jupyter-lab"), "--allow-root", "--no-browser", f"--port={port}", "--ip=127.0.0.1"]
    command += [f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={module_tmp}"]
    proc = subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: port_open(port), 60, "jupyter lab", log)
        context = browser.new_context()
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{port}/lab?token={token}")
        expect(page.locator('.lm-TabBar-tab[data-id="filebrowser"]')).to_be_visible(timeout=90_000)
        page.wait_for_timeout(3000)  # time for a first poll, were there one
        assert page.locator(PANEL_TAB).count() == 0 and page.locator("#jhproxy-routes-ports").count() == 0
        api = httpx.get(f"http://127.0.0.1:{port}/jhproxy-routes/ports", headers={"Authorization": f"token {token}"})
        assert api.json()["hub"] is False  # the server extension is there, and says so
        context.close()
    finally:
        proc.terminate()
        proc.wait(20)


def test_notebook_7_has_the_panel(lab, hub, ports):
    """Notebook 7's file browser page: the same panel, opened from View > Left Sidebar."""
    page = lab.context.new_page()
    page.goto(f"{hub.url}/user/{USER}/tree")
    expect(page.get_by_role("menuitem", name="View")).to_be_visible(timeout=90_000)
    page.get_by_role("menuitem", name="View").click()
    page.locator(".lm-Menu-item", has_text="Left Sidebar").hover()
    page.locator(".lm-Menu-item", has_text="Ports").click()
    expect(row(page, ports["idle"])).to_contain_text("dashboard", timeout=10_000)
    page.close()
