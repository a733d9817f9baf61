"""The in-server part's watch against a hub that answers: how often it asks. A real HTTP
server plays the hub (a hub without jhproxy-routes answers 404 to the token API); the
Jupyter server is a stand-in with no kernels."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
from tornado import httpserver, web

from jhproxy_routes.singleuser import watcher as watch
from jhproxy_routes.singleuser.hub import HubClient
from tests.rig import free_port

pytestmark = pytest.mark.unit


class Counting(web.RequestHandler):
    def initialize(self, calls, answer):
        self.calls, self.answer = calls, answer

    def get(self, *_):
        self.calls.append(self.request.path)
        status, body = self.answer()
        self.set_status(status)
        self.finish(body)

    post = get


async def watched(answer, seconds: float, monkeypatch) -> list[str]:
    """What the watch asks the hub over ``seconds``, with no listener in the server (this
    machine's own come and go with other tests)."""
    monkeypatch.setattr(watch, "scan", lambda *args: [])
    calls: list[str] = []
    port = free_port()
    app = web.Application([(r"/hub/.*", Counting, {"calls": calls, "answer": answer})])
    server = httpserver.HTTPServer(app)
    server.listen(port, "127.0.0.1")
    hub = HubClient(
        {"JUPYTERHUB_API_TOKEN": "t", "JUPYTERHUB_API_URL": f"http://127.0.0.1:{port}/hub/api", "JUPYTERHUB_USER": "alice"}
    )
    kernels = SimpleNamespace(list_kernel_ids=lambda: [])
    task = asyncio.ensure_future(watch.PortWatcher(SimpleNamespace(port=1, kernel_manager=kernels), hub).run())
    await asyncio.sleep(seconds)
    task.cancel()
    server.stop()
    await hub.aclose()
    return calls


async def test_a_hub_without_jhproxy_routes_is_not_asked_every_second(monkeypatch):
    calls = await watched(lambda: (404, "<html>404</html>"), 4, monkeypatch)
    assert calls == ["/hub/proxytoken/"], calls  # once, then after SETTINGS_MAX_AGE


async def test_a_starting_server_asks_until_the_hub_says_running(monkeypatch):
    answers = iter([False, False, True] + [True] * 100)

    def answer():
        return 200, json.dumps({"running": next(answers), "ports": [], "loopback_relay": False})

    calls = await watched(answer, 4.5, monkeypatch)
    # asked each round until running, then reported, and nothing more while nothing changes
    assert calls == ["/hub/proxytoken/"] * 3 + ["/hub/api/jhproxy-routes/listening/"], calls
