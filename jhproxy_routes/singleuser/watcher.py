"""The in-server part's watch over its server's ports, while the server runs under a hub.

Every ``SCAN_INTERVAL`` seconds it finds the listening ports (``listeners.py``; the process
behind a socket is looked up once). When they change, and every ``SETTINGS_MAX_AGE``
seconds besides, it reads the server's port settings from the hub (``hub.py``). Then:

- an allowed port whose app listens on loopback only is relayed from the server's own
  addresses (``relay.py``), where the hub says the server has a network of its own and the
  admin lets it (``loopback_relay`` in the settings); never a port that is not allowed, and
  never the Jupyter server's own port or a kernel's, which the scan leaves out;
- what listens on the allowed ports is reported to the hub (``listening.py`` there) when it
  changes, and every ``REPORT_INTERVAL`` seconds besides, so that the hub's pages show it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from pathlib import Path

from ..interfaces import own_addresses
from ..listening import REPORT_INTERVAL
from .hub import HubClient, HubError
from .listeners import Listener, listeners, server_processes
from .relay import LoopbackRelay
from .view import covering

log = logging.getLogger("jhproxy_routes.singleuser")

SCAN_INTERVAL = 1.0
SETTINGS_MAX_AGE = 30.0
KERNEL_PORTS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")


def own_ports(serverapp) -> set[int]:
    """The Jupyter server's own port and every running kernel's (its ZMQ channels)."""
    ports = {serverapp.port}
    manager = serverapp.kernel_manager
    for kernel_id in manager.list_kernel_ids():
        kernel = manager.get_kernel(kernel_id)
        ports.update(getattr(kernel, name, 0) for name in KERNEL_PORTS)
    return ports - {0}


def own_pids(serverapp) -> set[int]:
    """The Jupyter server's process and each running kernel's (not their children: an app
    started from a notebook is the user's)."""
    pids = {os.getpid()}
    manager = serverapp.kernel_manager
    for kernel_id in manager.list_kernel_ids():
        provisioner = getattr(manager.get_kernel(kernel_id), "provisioner", None)
        pid = getattr(provisioner, "pid", None)
        if isinstance(pid, int):
            pids.add(pid)
    return pids


def scan(
    serverapp, known: dict[int, tuple] | None = None, ignored: set[int] = frozenset(), shared_host: bool = False
) -> list[Listener]:
    """The server's user's listeners, but the Jupyter server's own and its kernels'; on a
    shared host (the hub's machine), only those of the server's own processes."""
    mine = functools.partial(server_processes, os.getpid()) if shared_host else None
    return listeners(os.getuid(), own_ports(serverapp), Path("/proc"), known, ignored, own_pids(serverapp), mine)


def loopback_target(listener: Listener) -> str:
    """The address the relay connects to for a loopback-only listener."""
    return "127.0.0.1" if any(a.startswith("127.") for a in listener.addresses) else "::1"


class PortWatcher:
    """What listens in this server, the hub's settings for its ports, the relay and the reports."""

    def __init__(self, serverapp, hub: HubClient):
        self.serverapp = serverapp
        self.hub = hub
        self.listeners: list[Listener] = []
        self.settings: dict | None = None
        self.hub_error: str | None = None
        self.relayed: set[int] = set()
        self._relay: LoopbackRelay | None = None  # made when a port first needs it
        self._known: dict[int, tuple] = {}  # socket inode: its process (listeners.py)
        self._scanned_shared = False  # whether the last scan counted the server's own processes only
        self._scan_lock = asyncio.Lock()
        self._settings_at = -SETTINGS_MAX_AGE
        self._reported: list[dict] | None = None
        self._reported_at = 0.0

    async def run(self) -> None:
        """Watch until the server stops; a failed round is logged and the next one tried."""
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("jhproxy-routes: watching the server's ports failed")
            await asyncio.sleep(SCAN_INTERVAL)

    async def tick(self) -> None:
        before = [(listener.port, listener.addresses) for listener in self.listeners]
        await self.scan()
        changed = before != [(listener.port, listener.addresses) for listener in self.listeners]
        # until the hub counts the server as running (it starts before the hub knows it is
        # ready), its answer is not final: asked again every round; where the hub failed to
        # answer (or has no jhproxy-routes), only after SETTINGS_MAX_AGE
        starting = self.settings is not None and not self.settings.get("running")
        stale = time.monotonic() - self._settings_at > SETTINGS_MAX_AGE
        if stale or (self.hub_error is None and (changed or starting)):
            await self.refresh_settings()
        await self.relay()
        await self.report()

    @property
    def shared_host(self) -> bool:
        """Whether the server runs on the hub's machine (as the hub says), where the ports
        of other servers of the same system user are there too."""
        return bool(self.settings) and self.settings.get("own_network") is False

    async def scan(self) -> list[Listener]:
        async with self._scan_lock:
            ignored = self._relay.socket_inodes if self._relay else frozenset()
            if self.shared_host != self._scanned_shared:  # what counts changed: look at every socket again
                self._known.clear()
                self._scanned_shared = self.shared_host
            self.listeners = await asyncio.to_thread(scan, self.serverapp, self._known, ignored, self.shared_host)
        return self.listeners

    async def refresh_settings(self) -> None:
        try:
            self.use_settings(await self.hub.settings())
        except HubError as e:
            if self.hub_error != str(e):
                log.warning("jhproxy-routes: the port settings could not be read from the hub: %s", e)
            self.hub_error = str(e)
        self._settings_at = time.monotonic()

    def use_settings(self, settings: dict) -> None:
        self.settings, self.hub_error = settings, None

    async def change(self, body: dict) -> None:
        """A change to the server's port settings, made by the hub (raises HubError)."""
        answer = await self.hub.change(body)
        if isinstance(answer, dict) and "ports" in answer:
            self.use_settings(answer)
        else:
            await self.refresh_settings()

    async def relay(self) -> None:
        wanted: dict[int, str] = {}
        if self.settings and self.settings.get("loopback_relay"):
            for listener in self.listeners:
                if listener.loopback_only and covering(self.settings, listener.port):
                    wanted[listener.port] = loopback_target(listener)
        if wanted and self._relay is None:
            self._relay = LoopbackRelay()
        if self._relay is not None:
            self.relayed = await self._relay.want(wanted, await asyncio.to_thread(own_addresses) if wanted else [])

    async def report(self) -> None:
        if not (self.settings or {}).get("running"):
            return
        ports = [
            {"port": e.port, "process": e.name, "loopback_only": e.loopback_only, "relayed": e.port in self.relayed}
            for e in self.listeners
            if covering(self.settings, e.port)
        ]
        if ports == self._reported and time.monotonic() - self._reported_at < REPORT_INTERVAL:
            return
        # a failed report is tried again at the next change, or after REPORT_INTERVAL
        self._reported, self._reported_at = ports, time.monotonic()
        try:
            await self.hub.report(ports)
        except HubError as e:
            log.warning("jhproxy-routes: could not tell the hub what listens: %s", e)
