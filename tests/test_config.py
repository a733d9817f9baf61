"""Configuration: what an admin may write, and what stops the hub with a clear message."""

import os
import subprocess
import sys

import pytest
from jupyterhub.app import JupyterHub
from traitlets import TraitError
from traitlets.config import Config
from traitlets.config.loader import PyFileConfigLoader

from jhproxy_routes import install
from jhproxy_routes.check import check_config_file, user_role_as_loaded
from jhproxy_routes.config import PortRoutes, PortSpec
from jhproxy_routes.contract import DEFAULTS, SERVICE_NAME, TOKEN_ENV, SidecarSettings
from jhproxy_routes.route_templates import RouteTemplate, dns_label
from jhproxy_routes.scopes import SCOPE
from jhproxy_routes.wiring import USER_SCOPES, sidecar_service
from tests.rig import port_open


def port_routes(**settings) -> PortRoutes:
    c = Config()
    for key, value in settings.items():
        setattr(c.PortRoutes, key, value)
    return PortRoutes(config=c)


def test_ports_normalise():
    specs = port_routes(
        ports=[
            5000,
            {"port": 5001, "access": "public", "name": "dash", "protocol": "http"},
            " 8000-8099",
            {"port": "9000-9001", "protocol": "https"},
        ]
    ).port_specs
    assert specs == [
        PortSpec(5000),
        PortSpec(5001, name="dash", access="public"),
        PortSpec(8000, last=8099),
        PortSpec(9000, last=9001, protocol="https"),
    ]
    assert specs[0].protocol == "http"
    assert [spec.key for spec in specs] == ["5000", "5001", "8000-8099", "9000-9001"]
    assert specs[2].covers(8000) and specs[2].covers(8099) and not specs[2].covers(8100) and not specs[0].covers(5001)


@pytest.mark.parametrize(
    "ports, message",
    [
        ([0], "outside 1-65535"),
        ([70000], "outside 1-65535"),
        ([5000, 5000], "listed twice"),
        ([5000, {"port": 5000}], "listed twice"),
        ([True], "not a port number"),
        (["5000"], "not a port number or a range"),
        ([3.5], "must be a port number"),
        (["8099-8000"], "from a lower to a higher port"),
        (["8000-70000"], "within 1-65535"),
        (["0-10"], "within 1-65535"),
        (["8000-"], "not a port number or a range"),
        (["8000-8099", 8050], r"port 8050 is listed twice \(8000-8099 and 8050\)"),
        (["8000-8099", "8090-8199"], "port 8090 is listed twice"),
        ([{"port": 5000, "acces": "public"}], "unknown key"),
        ([{"port": 5000, "access": "everyone"}], "access 'everyone'"),
        ([{"port": 5000, "cors_origins": "*"}], "list of strings"),
        ([{"port": 5000, "protocol": "tls"}], "port 5000: protocol 'tls' must be 'http' or 'https'"),
        ([{"port": 5000, "protocol": "HTTPS"}], "port 5000: protocol 'HTTPS' must be"),
        ([{"port": "8000-8099", "protocol": "wss"}], "port 8000-8099: protocol 'wss' must be"),
        ([{"port": 5000, "protocol": None}], "port 5000: protocol None must be"),
        ([{"port": 5000, "protocol": ["https"]}], "port 5000: protocol"),
    ],
)
def test_bad_ports_are_refused(ports, message):
    with pytest.raises(TraitError, match=message) as info:
        port_routes(ports=ports)
    assert "c.PortRoutes.ports" in str(info.value)


@pytest.mark.parametrize(
    "template, message",
    [
        ("/x/{username}/", "must contain {port}"),
        ("/x/{port}/", "must contain {username}"),
        ("x/{port}/{username}/", "must be a path starting with '/', or a host name ending in '.{subdomain_host}'"),
        ("/{username}{port}/", "share one segment"),
        ("/a/../{port}/{username}/", "'..' segment"),
        ("/{foo}/{port}/{username}/", "unknown field"),
        ("/u{username}/{port}/", "must be a whole segment"),
        ("/p/{port}/{username}/?q", "may not contain"),
        # user 8042's server "alice" would be /ports/alice/8042/..., inside alice's port 8042
        ("/ports/{servername}/{username}/{port}/", "{username} must come before {servername}"),
        # a user named "user" would get /user/<victim>/... (also for single ports)
        ("/{username}/{servername}/proxy/{port}/", "begins with {username}: a user named hub, user, services"),
        ("/{username}/{servername}/{port}/", "begins with {username}: a user named hub, user, services"),
    ],
)
def test_bad_templates_are_refused(template, message):
    with pytest.raises(TraitError, match=message):
        port_routes(route_template=template)


@pytest.mark.parametrize(
    "template, message",
    [
        ("{port}--{username}", r"ending in '\.\{subdomain_host\}' or in a domain apart"),
        ("{port}--{username}.{subdomain_host}/app/", r"ending in '\.\{subdomain_host\}'"),
        # a port domain is two labels or more: one would be a top-level domain
        ("{port}--{username}.org", "a domain of two labels or more"),
        ("{port}--{username}.ports.{username}.org", "each field may appear once"),
        ("{port}--{username}.Ports.example.org", "must be a-z, 0-9 and '-'"),
        # "5000-alice" is what JupyterHub makes of a user named 5000-alice: the port's host
        # must begin with digits and '--', which none of JupyterHub's own subdomains do
        ("{port}-{username}.{subdomain_host}", "followed by '--'"),
        ("{username}--{port}.{subdomain_host}", "must begin a label"),
        ("{port}--{servername}-{username}.{subdomain_host}", "{servername} must be a whole label"),
        ("{username}x.{port}--a.{subdomain_host}", "{username} must be a whole label or end the label of {port}"),
        ("{port}--{username}.{username}.{subdomain_host}", "each field may appear once"),
        ("{port}--Ports-{username}.{subdomain_host}", "must be a-z, 0-9 and '-'"),
        ("{port}--{username}-.{subdomain_host}", "not at either end"),
        ("{port}--{username}..{subdomain_host}", "must be a-z"),
        ("{port}--x.{subdomain_host}", "must contain {username}"),
        ("{port}--" + "p" * 20 + "{username}.{subdomain_host}", "can be 67 characters long"),
        ("{port}--{username}.{subdomain_host}.{subdomain_host}", "unknown field"),
    ],
)
def test_bad_host_templates_are_refused(template, message):
    with pytest.raises(TraitError, match=message):
        port_routes(route_template=template)


def test_host_template_rendering():
    """Names become DNS labels as JupyterHub makes them; 'Alice' never shares alice's host."""
    template = RouteTemplate("{port}--{username}.{subdomain_host}", domain="hub.example.org")
    assert template.render("alice", "", 5000) == "5000--alice.hub.example.org/"
    assert not template.serves("alice", "dev")  # no {servername}: named servers get no routes
    names = ["alice", "Alice", "a.b", "ab", "ü", "ü" + "a" * 60, "x--y", "xn--tda", "x" * 50, "5000", ""]
    hosts = {template.render(name, "", 65535) for name in names}
    assert len(hosts) == len(names)
    for host in hosts:
        labels = host.rstrip("/").split(".")
        assert all(0 < len(label) <= 63 and label == label.lower() for label in labels), host
    named = RouteTemplate("{servername}.{port}--{username}.{subdomain_host}/", domain="hub.example.org")
    assert named.render("alice", "", 8050) == "8050--alice.hub.example.org/"
    assert named.render("alice", "My Dev", 8050) == f"{dns_label('My Dev')}.8050--alice.hub.example.org/"
    with pytest.raises(ValueError, match="needs c.JupyterHub.subdomain_host"):
        RouteTemplate("{port}--{username}.{subdomain_host}").render("alice", "", 5000)


def test_a_port_domain_lies_apart_from_the_hubs():
    """Ports on a domain of their own: names still become DNS labels, and the domain may be
    neither the hub's own, nor a parent of it (a port's page could set cookies the hub
    receives), nor below it (that is ``{subdomain_host}``'s form)."""
    template = RouteTemplate("{servername}.{port}--{username}.ports.example-content.org", domain="hub.example.org")
    assert template.port_domain == "ports.example-content.org" and not template.on_hub_domain
    assert template.render("alice", "", 5000) == "5000--alice.ports.example-content.org/"
    assert template.render("a.b", "My Dev", 5000) == f"{dns_label('My Dev')}.5000--{dns_label('a.b')}.ports.example-content.org/"
    assert RouteTemplate("{port}--{username}.{subdomain_host}").on_hub_domain
    hook = "idna"  # any subdomain_hook: no user's host can be below the port domain
    assert template.hub_problem("https://hub.example.org", hook) == ""
    assert "it needs c.JupyterHub.subdomain_host" in template.hub_problem("", hook)
    for hub, problem in [
        ("https://ports.example-content.org", "is the hub's own domain"),
        ("https://hub.ports.example-content.org:8443", "a parent of the hub's domain (hub.ports.example-content.org)"),
        ("https://example-content.org", "lies below the hub's domain (example-content.org)"),
        ("https://Example-Content.org", "lies below the hub's domain"),
    ]:
        assert problem in template.hub_problem(hub, hook), hub


def test_host_templates_cannot_take_ranges():
    settings = port_routes(ports=[5000, "8000-8099"], route_template="{port}--{username}.{subdomain_host}")
    with pytest.raises(TraitError, match="needs a path template"):
        settings.check_together()


@pytest.mark.parametrize(
    "template, message",
    [
        ("/hub/proxy{port}/{username}/", "{port} as the last segment"),
        ("/user/{username}/ports/{port}/", "begins with a fixed segment other than hub, user, services"),
    ],
)
def test_templates_that_ranges_cannot_use(template, message):
    settings = port_routes(ports=[5000, "8000-8099"], route_template=template)
    with pytest.raises(TraitError, match=message):
        settings.check_together()
    port_routes(ports=[5000], route_template=template).check_together()  # fine without ranges


def test_servers_named_like_ports_get_no_routes():
    """Named server "5000" of alice would be /ports/alice/5000/..., her default server's port 5000."""
    template = RouteTemplate(PortRoutes().route_template)
    assert template.serves("alice", "") and template.serves("alice", "dev") and template.serves("alice", "v2")
    assert not template.serves("alice", "5000") and not template.serves("alice", "..")


def test_template_rendering():
    default = RouteTemplate(PortRoutes().route_template)
    assert default.render("alice", "", 5000) == "/ports/alice/5000/"
    assert default.render("alice", "dev", 5000) == "/ports/alice/dev/5000/"
    assert default.render("a b@c", "", 1) == "/ports/a%20b@c/1/"
    seed = RouteTemplate("/hub/proxy{port}/{username}/")
    assert seed.render("bob", "", 5000) == "/hub/proxy5000/bob/"
    assert not seed.serves("ann", "named") and seed.serves("ann", "")


def test_the_sidecar_reads_back_what_the_hub_writes():
    """The hub's options reach a managed sidecar through its environment: every setting,
    with the defaults of one place (contract.py), and a value of the wrong kind is named."""
    defaults = PortRoutes()
    for field in ("upstream_timeout", "client_timeout", "login_cache_max_age", "bad_token_limit", "metrics_by_route"):
        assert getattr(defaults, field) == getattr(DEFAULTS, field), field
    settings = port_routes(
        upstream_timeout=12.5,
        client_idle_timeout=0,
        max_idle_connections=7,
        login_cache_max_age=5,
        bad_token_limit=0,
        metrics_by_route=False,
        trusted_proxies=["10.0.0.0/8", "::1"],
        audit_log="",
        token_cookies=False,
    )
    environment = sidecar_service(settings, authenticate_metrics=False)["environment"]
    assert environment[TOKEN_ENV] == settings.sidecar_api_token
    read = SidecarSettings.from_environ(environment)
    assert read == settings.sidecar_settings(authenticate_metrics=False)
    assert (read.upstream_timeout, read.max_idle_connections, read.metrics_by_route) == (12.5, 7, False)
    assert read.trusted_proxies == ("10.0.0.0/8", "::1") and read.authenticate_metrics is False and read.token_cookies is False
    assert SidecarSettings.from_environ({}) == DEFAULTS
    for variable, value, kind in [
        ("JHPROXY_ROUTES_CLIENT_TIMEOUT", "soon", "a number"),
        ("JHPROXY_ROUTES_BAD_TOKEN_LIMIT", "1.5", "an integer"),
        ("JHPROXY_ROUTES_METRICS_BY_ROUTE", "yes", "0 or 1"),
    ]:
        with pytest.raises(ValueError, match=f"{variable}=.*{kind}"):
            SidecarSettings.from_environ({variable: value})
    bad = {**os.environ, TOKEN_ENV: "secret", "JHPROXY_ROUTES_CLIENT_TIMEOUT": "soon"}
    started = subprocess.run(
        [sys.executable, "-m", "jhproxy_routes.sidecar"], env=bad, capture_output=True, text=True, timeout=60
    )
    assert started.returncode == 1 and "Traceback" not in started.stderr, started.stderr
    assert "JHPROXY_ROUTES_CLIENT_TIMEOUT='soon': must be a number" in started.stderr


def test_install_sets_only_the_proxy_class():
    c = Config()
    c.JupyterHub.services = [{"name": "mine"}]
    install(c)
    assert c.JupyterHub.proxy_class == "jhproxy_routes.proxy.PortRoutesProxy"
    assert c.JupyterHub.services == [{"name": "mine"}]


@pytest.mark.parametrize(
    "chosen, ours",
    [
        ("configurable-http-proxy", "jhproxy_routes.proxy.PortRoutesProxy"),
        ("jupyterhub.proxy.ConfigurableHTTPProxy", "jhproxy_routes.proxy.PortRoutesProxy"),
        ("traefik_file", "jhproxy_routes.traefik.TraefikPortRoutesProxy"),  # The Littlest JupyterHub's
        ("jupyterhub_traefik_proxy.TraefikFileProviderProxy", "jhproxy_routes.traefik.TraefikPortRoutesProxy"),
        ("jhproxy_routes.traefik.TraefikPortRoutesProxy", "jhproxy_routes.traefik.TraefikPortRoutesProxy"),
        ("traefik_etcd", "jhproxy_routes.traefik_kv.TraefikEtcdPortRoutesProxy"),
        ("jupyterhub_traefik_proxy.etcd.TraefikEtcdProxy", "jhproxy_routes.traefik_kv.TraefikEtcdPortRoutesProxy"),
        ("traefik_redis", "jhproxy_routes.traefik_kv.TraefikRedisPortRoutesProxy"),
        ("jupyterhub_traefik_proxy.TraefikRedisProxy", "jhproxy_routes.traefik_kv.TraefikRedisPortRoutesProxy"),
    ],
)
def test_install_keeps_the_hubs_proxy(chosen, ours):
    c = Config()
    c.JupyterHub.proxy_class = chosen
    install(c)
    assert c.JupyterHub.proxy_class == ours
    install(c)  # twice: the same
    assert c.JupyterHub.proxy_class == ours


@pytest.mark.parametrize(
    "chosen, message",
    [
        ("traefik_consul", "not consul, which jupyterhub-traefik-proxy deprecates"),
        ("jupyterhub_traefik_proxy.TraefikConsulProxy", "not consul"),
        ("mymodule.MyProxy", "works with configurable-http-proxy or jupyterhub-traefik-proxy's traefik_file, traefik_etcd"),
    ],
)
def test_install_refuses_other_proxies(chosen, message):
    c = Config()
    c.JupyterHub.proxy_class = chosen
    with pytest.raises(ValueError, match=f"c.JupyterHub.proxy_class is '{chosen}': .*{message}"):
        install(c)


def test_wiring_adds_to_what_the_admin_set(make_hub, make_app):
    """Services, roles and handlers set before or after install(c) are all kept."""
    app = make_app()
    hub = make_hub(
        [app.port],
        """
        c.JupyterHub.services.append({"name": "admin-svc", "api_token": "a" * 32})
        c.JupyterHub.load_roles.append({"name": "viewer", "scopes": ["read:users"], "services": ["admin-svc"]})
        """,
    )
    services = hub.api("GET", "/services").json()
    assert {"test-admin", "admin-svc", SERVICE_NAME} <= set(services)
    viewer = hub.api("GET", "/users/x", token="a" * 32)
    assert viewer.status_code == 404  # read:users works: the role was kept
    token = hub.user_token("wiring")
    me = hub.api("GET", "/user", token=token).json()
    assert f"{SCOPE}!user=wiring" in me["scopes"]


@pytest.mark.parametrize(
    "setting, message",
    [
        ("c.PortRoutes.ports = [5000, 70000]", "port 70000 is outside 1-65535"),
        ("c.PortRoutes.ports = [5000, 5000]", "port 5000 is listed twice"),
        ("c.PortRoutes.route_template = '/p/{username}/'", "must contain {port}"),
        ("c.PortRoutes.sidecar_managed = False", "set c.PortRoutes.sidecar_api_token"),
        (
            "c.PortRoutes.ports = ['5000-5010']\nc.PortRoutes.route_template = '/hub/proxy{port}/{username}/'",
            "needs {port} as the last segment",
        ),
        # set after install(c), as every line here: it still counts
        (
            "c.JupyterHub.subdomain_host = 'https://hub.test:8443'\n"
            "c.PortRoutes.route_template = '{port}--{username}.{subdomain_host}'\n"
            "c.JupyterHub.cookie_host_prefix_enabled = False",
            "c.JupyterHub.cookie_host_prefix_enabled is False, but c.PortRoutes.route_template",
        ),
        (
            "c.JupyterHub.subdomain_host = 'https://hub.test:8443'\nc.PortRoutes.route_template = '{port}--{username}.test'",
            "a domain of two labels or more",
        ),
        (
            "c.JupyterHub.subdomain_host = 'https://hub.ports.test:8443'\n"
            "c.PortRoutes.route_template = '{port}--{username}.ports.test'",
            "'ports.test' is a parent of the hub's domain",
        ),
    ],
)
def test_bad_config_stops_the_hub(make_hub, setting, message):
    assert message in refused_start(make_hub([5000], setting, start=False))


def refused_start(hub) -> str:
    """Launch ``hub`` and wait for it to stop by itself (else the test fails): its log."""
    proc = hub.launch()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the hub kept running with a config it should refuse")
    assert proc.returncode != 0
    return hub.log()


def test_templates_go_between_the_admins_and_the_hubs(tmp_path):
    """Ours come after the admin's template paths (their home.html or page.html wins) and
    before the hub's (ours extend it by name); the navbar's "Ports" is ours unless the admin
    has a page.html of their own, and then the Services menu lists the sidecar instead."""
    from jupyterhub.app import JupyterHub

    from jhproxy_routes.wiring import TEMPLATES, add_templates

    app = JupyterHub()
    hub_templates = app.template_paths[0]
    assert add_templates(app) is True
    assert app.template_paths == [str(TEMPLATES), hub_templates]
    mine = tmp_path / "mine"
    mine.mkdir()
    app = JupyterHub(template_paths=[str(mine)])  # the hub adds its own after every other
    assert add_templates(app) is True
    assert app.template_paths == [str(mine), str(TEMPLATES)]
    (mine / "page.html").write_text('{% extends "templates/page.html" %}')
    app = JupyterHub(template_paths=[str(mine), hub_templates])
    assert add_templates(app) is False  # the admin's page.html: no navbar entry of ours
    assert add_templates(app) is False and app.template_paths == [str(mine), str(TEMPLATES), hub_templates]
    app = JupyterHub(template_paths=[str(tmp_path), hub_templates + "/"])  # as Helm charts often write it
    assert add_templates(app) is True and app.template_paths == [str(tmp_path), str(TEMPLATES), hub_templates + "/"]


# ---- the scopes users need, however the admin defines roles (JupyterHub 5 and 6) ----------
HAS_EXTRA_USER_SCOPES = "extra_user_scopes" in JupyterHub.class_trait_names()
USER_ROLE = '{"name": "user", "scopes": ["self", "shares!user", "read:users:name"]}'
ROLE_AUTHENTICATOR = """
from jupyterhub.authenticators.shared import SharedPasswordAuthenticator
class RoleAuthenticator(SharedPasswordAuthenticator):
    async def load_managed_roles(self):
        return [{"name": "user", "scopes": ["self"]}]
c.JupyterHub.authenticator_class = RoleAuthenticator
c.Authenticator.manage_roles = True
"""


@pytest.mark.parametrize(
    "before, after",
    [
        ("", ""),  # JupyterHub's own user role
        (f"c.JupyterHub.load_roles = [{USER_ROLE}]", ""),  # as JupyterHub 5's sharing docs: before install(c)
        ("", f"c.JupyterHub.load_roles.append({USER_ROLE})"),  # after install(c)
        ("", 'c.JupyterHub.load_roles.append({"name": "user", "users": ["x"]})'),  # redefined, without scopes
        ('c.JupyterHub.load_roles = [{"name": "analysts", "scopes": ["read:users"], "users": ["ann"]}]', ""),  # a custom role
        ('c.JupyterHub.extra_user_scopes = {"shares!user"}' if HAS_EXTRA_USER_SCOPES else "", ""),
    ],
)
def test_users_get_the_scopes_however_the_admin_defines_roles(tmp_path, before, after):
    """The check loads the roles as the hub does (JupyterHub's own code, a database in
    memory): the user role ends with the scopes users need and with the admin's own."""
    path = tmp_path / "jupyterhub_config.py"
    path.write_text(f"""import jhproxy_routes
c.JupyterHub.spawner_class = "docker"
c.PortRoutes.ports = [5000]
{before}
jhproxy_routes.install(c)
{after}
""")
    assert check_config_file(str(path)) == []
    held = user_role_as_loaded(JupyterHub(config=PyFileConfigLoader(path.name, path=str(tmp_path)).load_config()))
    assert set(USER_SCOPES) <= held
    for scope in ("shares!user", "read:users:name"):  # the admin's own are kept
        assert (scope in held) == (scope in before + after), scope


def test_a_user_role_without_the_scopes_stops_the_hub(tmp_path, make_hub):
    """An authenticator's managed roles may redefine the user role where install(c) cannot
    see it: the check says so, and the hub refuses to start, naming the role and the scopes."""
    path = tmp_path / "jupyterhub_config.py"
    path.write_text(
        f'import jhproxy_routes\nc.JupyterHub.spawner_class = "docker"\nc.PortRoutes.ports = [5000]\n{ROLE_AUTHENTICATOR}\njhproxy_routes.install(c)\n'
    )
    problems = [p.message for p in check_config_file(str(path))]
    assert len(problems) == 1 and (
        "role 'user' lacks the scopes" in problems[0] or "Role user multiply defined" in problems[0]
    ), problems
    hub = make_hub([5000], ROLE_AUTHENTICATOR, start=False)
    log = refused_start(hub)
    assert "role 'user' lacks the scopes" in log or "Role user multiply defined" in log, log[-2000:]
    assert not port_open(hub.port) and not port_open(hub.sidecar_port), "the refused hub left its proxy or sidecar running"


@pytest.mark.parametrize("hub_domain", ["hub.example.org.", "HUB.Example.org", "hüb.example"])
def test_a_port_domain_is_compared_with_the_hubs_as_dns_does(hub_domain):
    """A trailing dot, capitals or the Unicode form of the hub's name hide no overlap."""
    for port_domain in ("hub.example.org", "example.org", "xn--hb-xka.example", "ports.example.org"):
        template = RouteTemplate("{port}--{username}." + port_domain)
        problem = template.hub_problem(f"https://{hub_domain}:8443", None)
        hub = hub_domain.lower().rstrip(".").replace("hüb", "xn--hb-xka")
        overlaps = hub == port_domain or hub.endswith("." + port_domain)
        assert bool(problem) == overlaps, (hub_domain, port_domain, problem)
