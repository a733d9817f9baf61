"""The settings service (``settings.py``) without processes: one call checks, stores, audits
and answers a change; a refused change stores nothing."""

import json
import logging
from types import SimpleNamespace

import pytest

from jhproxy_routes.audit import AuditLog
from jhproxy_routes.config import PortRoutes
from jhproxy_routes.routeapi import RouteAPI
from jhproxy_routes.routes import RouteManager
from jhproxy_routes.settings import PortSettings, SettingsError
from jhproxy_routes.store import AccessStore


def settings_service(settings: PortRoutes, tmp_path) -> PortSettings:
    manager = RouteManager(
        settings,
        "/",
        RouteAPI("proxy", "http://127.0.0.1:1", "x"),  # never asked: the server is not running
        logging.getLogger("test"),
        store=AccessStore(f"sqlite:///{tmp_path / 'access.sqlite'}"),
        audit=AuditLog(str(tmp_path / "audit.jsonl")),
        sidecar=None,
    )
    return PortSettings(manager)


@pytest.fixture
def service(tmp_path):
    return settings_service(PortRoutes(ports=[5000, 5001]), tmp_path)


ALICE = SimpleNamespace(name="alice", spawners={"": SimpleNamespace(ready=False, active=False)})
WHO = {"by": "admin", "origin": "http://hub.example", "client": "1.2.3.4", "credential": "token"}


async def test_a_change_is_stored_audited_and_answered(service, tmp_path):
    answer = await service.change(ALICE, "", {"mode": "allow_all", "ports": {"5001": "public"}}, **WHO)
    assert (answer["mode"], answer["running"]) == ("allow_all", False)
    assert [(p["port"], p["access"], p["admits"]) for p in answer["ports"]] == [
        (5000, "server", ["anyone"]),
        (5001, "public", ["anyone"]),
    ]
    assert answer["ports"][1]["url"] == "http://hub.example/ports/alice/5001/"
    assert service.manager.store.get("alice", "").port_access == {"5001": "public"}
    (entry,) = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert (entry["event"], entry["by"], entry["mode"], entry["ports"]) == (
        "settings changed",
        "admin",
        ["disabled", "allow_all"],
        {"5001": [None, "public"]},
    )
    assert await service.change(ALICE, "", "disabled", **WHO) is None  # an action: the jhproxy value
    assert await service.value(ALICE, "") is None


@pytest.mark.parametrize(
    "request_, message",
    [
        ({"colour": "red"}, "Unknown key"),
        ({"mode": "open"}, "mode must be one of"),
        ({"ports": {"6000": "public"}}, "not in the allow-list"),
        ({"ports": {"5000": "everyone"}}, "access must be one of"),
    ],
)
async def test_a_refused_change_stores_nothing(service, request_, message):
    before = await service.value(ALICE, "")
    with pytest.raises(SettingsError, match=message):
        await service.change(ALICE, "", request_, **WHO)
    assert service.manager.store.get("alice", "").port_access == {} and await service.value(ALICE, "") == before


def test_a_store_of_an_earlier_version_gets_the_expiry_columns(tmp_path):
    import sqlite3
    import time

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # the table as the first version made it
        db.execute(
            "CREATE TABLE jhproxy_routes_server_access (username VARCHAR(255), servername VARCHAR(255), mode VARCHAR(16)"
            " NOT NULL, token_sha256 VARCHAR(64), token_encrypted BLOB, port_access TEXT NOT NULL,"
            " PRIMARY KEY (username, servername))"
        )
        db.execute("INSERT INTO jhproxy_routes_server_access VALUES ('alice', '', 'token', ?, NULL, '{}')", ("0" * 64,))
        db.execute("INSERT INTO jhproxy_routes_server_access VALUES ('bob', '', 'allow_all', NULL, NULL, '{}')")
    before = time.time()
    store = AccessStore(f"sqlite:///{path}")
    alice, bob = store.get("alice", ""), store.get("bob", "")
    # an old token counts as made now: token_max_age applies to it from here on
    assert alice.token_sha256 == "0" * 64 and before <= alice.token_created <= time.time() and alice.token_expires is None
    assert alice.expires() is None and alice.expires(60) == alice.token_created + 60
    assert bob.token_created is None and bob.expires(60) is None
    assert AccessStore(f"sqlite:///{path}").get("alice", "") == alice  # opened again: nothing changes


async def test_a_token_expires_at_its_lifetime_or_the_max_age_whichever_comes_first(service):
    with pytest.raises(SettingsError, match=r"at most 315360000 seconds \(ten years\)"):  # no token_max_age
        await service.change(ALICE, "", {"mode": "random", "expires_in": 10**30}, **WHO)
    service.manager.settings.token_max_age = 100
    answer = await service.change(ALICE, "", {"mode": "random", "expires_in": 50}, **WHO)
    stored = service.manager.store.get("alice", "")
    assert stored.token_expires == stored.token_created + 50 and 0 < answer["token_expires_in"] <= 50
    service.manager.settings.token_max_age = 10  # lowered later: the earlier limit counts
    assert stored.expires(service.manager.settings.token_max_age) == stored.token_created + 10
    with pytest.raises(SettingsError, match=r"at most 10 seconds \(c.PortRoutes.token_max_age\)"):
        await service.change(ALICE, "", {"mode": "random", "expires_in": 11}, **WHO)


def test_narrowing_picks_the_most_open_setting_allowed_and_never_a_more_open_one():
    import asyncio

    from jhproxy_routes.policy import Limits, Policy
    from jhproxy_routes.tokens import ServerAccess

    specs = PortRoutes(ports=[5000, {"port": 5001, "access": "owner"}]).port_specs
    policy = Policy(PortRoutes(), logging.getLogger("test"))

    def narrow(mode, current, modes=None, allowed=None):
        defaults = {"5000": "server", "5001": "owner"}
        limits = Limits(modes and frozenset(modes), {"5000": allowed and frozenset(allowed), "5001": None}, defaults=defaults)
        access, changes = asyncio.run(policy.narrowed(ServerAccess(mode=mode, port_access={"5000": current}), limits, specs))
        return access.mode, access.port_access.get("5000", "server"), changes  # "server": the admin's

    assert narrow("disabled", "public", allowed=["users", "server", "owner"])[1] == "users"
    assert narrow("disabled", "public", allowed=["server", "owner", "group:*"])[1] == "server"  # a group is never guessed
    assert narrow("disabled", "users", allowed=["public", "owner"])[1] == "owner"  # never more open
    assert narrow("disabled", "group:a", allowed=["group:b", "server"])[1] == "server"
    assert narrow("disabled", "users", allowed=["shared", "server"])[1] == "shared"  # shared is below users
    assert narrow("disabled", "group:a", allowed=["shared", "owner"])[1] == "owner"  # beside a group: no narrowing to it
    assert narrow("disabled", "shared", allowed=["group:*", "server"])[1] == "server"
    assert narrow("disabled", "group:a", allowed=["group:*"])[1] == "group:a"  # allowed: kept
    assert narrow("disabled", "owner", allowed=["public"])[1] == "disabled"
    mode, port, changes = narrow("allow_all", "server", modes=["random", "disabled"])
    assert (mode, port, changes) == ("token", "server", {"mode": ["allow_all", "token"]})
    assert narrow("token", "server", modes=["allow_all", "disabled"])[0] == "disabled"  # never more open
    assert narrow("allow_all", "server", modes=["disabled"])[0] == "disabled"
    assert narrow("allow_all", "public", modes=["allow_all"], allowed=["public"])[2] == {}
    # allow_all lets anyone into a port that takes the token: not where public is not allowed
    assert narrow("allow_all", "server", allowed=["server", "owner"])[:2] == ("token", "server")
    assert narrow("allow_all", "owner", allowed=["server", "owner"])[0] == "allow_all"  # owner-only: nobody more
    assert narrow("allow_all", "shared", allowed=["public", "shared"])[0] == "allow_all"


async def test_a_forbidden_change_is_refused_naming_the_rule_and_stores_nothing(tmp_path):
    from jhproxy_routes.policy import Forbidden

    calls = []

    async def allowed_access(user, port):  # an async hook, as JupyterHub's may be
        calls.append((user.name, port.key))
        return ["owner", "server"]

    settings = PortRoutes(
        ports=[5000, {"port": 5001, "access": "users", "allowed_access": ["owner"]}],
        allowed_access=allowed_access,
        allowed_modes=lambda user, servername: ["random"],
    )
    service = settings_service(settings, tmp_path)
    manager = service.manager
    for request_, rule in [
        ({"ports": {"5000": "public"}}, r"Port 5000: the visibility public is not allowed here \(c.PortRoutes.allowed_access\)"),
        ({"ports": {"5001": "server"}}, r"\(c.PortRoutes.ports, port 5001: allowed_access\)"),
        ("allow_all", r"The token mode allow_all is not allowed here \(c.PortRoutes.allowed_modes\)"),
        ({"mode": "random", "ports": {"5000": "users"}}, "c.PortRoutes.allowed_access"),
    ]:
        with pytest.raises(Forbidden, match=rule):
            await service.change(ALICE, "", request_, **WHO)
        assert manager.store.get("alice", "") == await manager.first_access(ALICE.spawners[""])
    assert ("alice", "5000") in calls and ("alice", "5001") not in calls  # the port's own rule wins
    answer = await service.change(ALICE, "", {"ports": {"5001": "users", "5000": "owner"}}, **WHO)  # the admin's: allowed
    assert [p["allowed_access"] for p in answer["ports"]] == [["server", "owner", "disabled"], ["users", "owner", "disabled"]]
    assert answer["allowed_modes"] == ["disabled", "random"]


async def test_allow_all_is_refused_where_it_would_open_a_port_that_may_not_be_public(tmp_path):
    from jhproxy_routes.policy import Forbidden

    def allowed_access(user, port):
        return (v for v in ["owner", "server"])  # a generator: read once, and it counts

    settings = PortRoutes(ports=[5000, {"port": 5001, "access": "owner"}], allowed_access=allowed_access)
    service = settings_service(settings, tmp_path)
    refusal = (
        r"allow_all would let anyone into port 5000, where the visibility public is not allowed \(c.PortRoutes.allowed_access\)"
    )
    with pytest.raises(Forbidden, match=refusal):
        await service.change(ALICE, "", "allow_all", **WHO)
    answer = await service.change(ALICE, "", {"ports": {"5000": "owner"}}, **WHO)
    assert answer["allowed_modes"] is None  # no port that takes the token: any mode
    assert (await service.change(ALICE, "", "allow_all", **WHO)) == ""  # the seed answer of allow_all
    with pytest.raises(Forbidden, match=refusal):  # a port opened under allow_all
        await service.change(ALICE, "", {"ports": {"5000": "server"}}, **WHO)
    assert service.manager.store.get("alice", "").port_access == {"5000": "owner"}


async def test_a_hook_that_fails_or_answers_nonsense_allows_only_the_admins_settings(caplog):
    from jhproxy_routes.policy import Policy

    def broken(user, port):
        raise RuntimeError("the directory is down")

    user = SimpleNamespace(name="alice")
    for hook, logged in [(broken, "the directory is down"), (lambda user, port: "public", "must return a list")]:
        settings = PortRoutes(ports=[{"port": 5000, "access": "owner"}], allowed_access=hook)
        policy = Policy(settings, logging.getLogger("test-policy"))
        limits = await policy.limits(user, "", settings.port_specs, "disabled")
        assert limits.access["5000"] == {"owner", "disabled"}  # the port's own access, and closing it
        assert logged in caplog.text and "c.PortRoutes.allowed_access failed for alice" in caplog.text
