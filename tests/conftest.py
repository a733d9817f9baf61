"""The fixtures that start the real processes of ``tests/rig.py``, and the test markers
(unit, hub, browser, docker) from the fixtures a test uses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.certs import Certificate, make_certificate
from tests.rig import CHP, CHROMIUM, CHROMIUM_ARGS, REPO, SCREENSHOTS, App, Hub

# the tests read the key-value stores with etcd's gRPC client and fork processes all along:
# gRPC's fork handlers off, as in the hub (jhproxy_routes.traefik_kv), before gRPC loads
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")


@pytest.fixture(scope="session")
def certificate(tmp_path_factory) -> Certificate:
    """The test CA's certificate for the hubs that serve HTTPS (``tests/certs.py``)."""
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def browser(certificate):
    """Chromium through Playwright; each launch gets a fresh, temporary user-data dir. It
    trusts the test certificate by its key, so HTTPS pages are secure contexts."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)", pytrace=False)
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(exist_ok=True)
    args = [*CHROMIUM_ARGS, f"--ignore-certificate-errors-spki-list={certificate.spki_sha256}"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory, request) -> Path:
    return tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])


@pytest.fixture(scope="module")
def make_app(module_tmp):
    apps = []

    def make(port: int | None = None, **kwargs) -> App:
        app = App(module_tmp, port, **kwargs)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.stop()


@pytest.fixture(scope="module")
def make_hub(module_tmp):
    hubs = []

    def make(ports, extra_config: str = "", name: str | None = None, start: bool = True, hub_class=Hub, **kwargs) -> Hub:
        hub = hub_class(module_tmp / (name or f"hub{len(hubs)}"), ports, extra_config, **kwargs)
        hubs.append(hub)
        return hub.start() if start else hub

    yield make
    for hub in hubs:
        hub.stop()


@pytest.fixture(scope="module")
def alice(hub):
    """alice's API token, with her default server started on the module's ``hub``."""
    token = hub.user_token("alice")
    hub.spawn("alice")
    return token


def pytest_report_header(config):
    chp = shutil.which(str(CHP)) or f"MISSING ({CHP})"
    chromium = "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else "MISSING (/usr/bin/chromium)"
    from jupyterhub import __version__ as jupyterhub

    return [f"jupyterhub: {jupyterhub}", f"configurable-http-proxy: {chp}", f"chromium: {chromium}", f"python: {sys.executable}"]


@pytest.fixture(scope="session")
def docker_engine():
    """A real Docker-API engine (podman) and the single-user image: scripts/docker-engine.sh.
    Stopped again after the run (``pytest_sessionfinish``; the image stays as a cache) unless
    JHPROXY_ROUTES_KEEP_PODMAN=1 keeps it running for the next one.

    Never skipped: if the engine cannot start, every Docker test fails with the reason."""
    script = REPO / "scripts/docker-engine.sh"
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        pytest.fail(f"the Docker-API engine did not start ({script}):\n{result.stderr[-3000:]}", pytrace=False)
    engine = dict(line.split("=", 1) for line in result.stdout.split() if "=" in line)
    missing = {"DOCKER_HOST", "JHPROXY_ROUTES_IMAGE"} - set(engine)
    if missing:
        pytest.fail(f"{script} did not print {missing}: {result.stdout!r}", pytrace=False)
    yield engine


def pytest_sessionfinish(session):
    """Podman's service stops once the whole run is over (``docker_engine``): in the run's own
    process, never in a test process of pytest-xdist, whose session ends as soon as it has no
    more work while others may still use the service."""
    started_here = Path("/run/jhproxy-routes-podman.pid").exists()
    if started_here and not os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("JHPROXY_ROUTES_KEEP_PODMAN") != "1":
        subprocess.run(["bash", str(REPO / "scripts/docker-engine-stop.sh")], capture_output=True, timeout=120)


# ---- markers, from what a test uses: `pytest -m unit` runs in seconds ------------------------
@pytest.fixture(scope="module")
def engine(docker_engine):
    """The Docker API client of the engine, for a module's hubs (``test_docker.docker_hub``
    records each hub's container prefix in ``prefixes``)."""
    import docker

    client = docker.APIClient(base_url=docker_engine["DOCKER_HOST"], version="auto")
    prefixes: list[str] = []
    yield {**docker_engine, "client": client, "prefixes": prefixes}
    # leave no container of this module's behind, whatever happened (other modules' run on)
    for prefix in prefixes:
        for container in client.containers(all=True, filters={"name": prefix}):
            client.remove_container(container["Id"], force=True)


MARKER_FIXTURES = {"docker": "docker_engine", "browser": "browser", "hub": "make_hub"}


# the modules that CI runs on JupyterHub 5.x too (marker jupyterhub5): where the hub's own
# code is used (roles and scopes, OAuth, sharing, the ORM, templates, the proxy's calls)
JUPYTERHUB5_MODULES = {
    "test_access.py",
    "test_activity.py",
    "test_browser.py",
    "test_config.py",
    "test_in_server.py",  # TLJH users' servers report to a 5.x hub
    "test_lab.py",  # and TLJH's users open JupyterLab there
    "test_login.py",
    "test_login_recheck.py",
    "test_port_pages.py",
    "test_routes.py",
    "test_sharing.py",
    "test_sibling_hosts.py",
    "test_subdomains.py",
    "test_traefik.py",  # The Littlest JupyterHub pins JupyterHub 5.x
}


def pytest_collection_modifyitems(config, items):
    """Mark each test by the real parts it starts (see CONTRIBUTING.md): ``hub`` (a jupyterhub,
    CHP and sidecar), ``browser`` (Chromium), ``docker`` (podman and containers); ``unit``
    for a test that starts none of them. And ``jupyterhub5`` for the modules CI runs on
    JupyterHub 5.x as well."""
    for item in items:
        kinds = [marker for marker, fixture in MARKER_FIXTURES.items() if fixture in item.fixturenames]
        for marker in kinds or ["unit"]:
            item.add_marker(marker)
        if item.path.name in JUPYTERHUB5_MODULES:
            item.add_marker("jupyterhub5")
