"""The listening TCP ports of a user's server, with the process behind each, as VS Code's
port finder shows them.

A user's server sees its own network namespace (a container, a pod: every listener there is
the user's) or, on a shared host, every user's: only sockets of the server's own uid count,
and of those, where the caller says (``mine``), only those of the server's own processes.
Each listening socket (``procnet.listening``) is put with the process that holds it, found by
its inode among ``/proc/<pid>/fd/*`` links (``socket:[<inode>]``, readable for one's own
processes). The Jupyter server's own sockets and its kernels' are left out by the caller
(``excluded``, ``excluded_pids``): a kernel's ports are never an app. Nor are a debugger's
(:func:`is_debugger`): the adapter the JupyterLab debugger has a kernel start is a process of
its own, and its client port runs code in the kernel for whoever connects once the kernel's
own session has ended.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import procnet

LOOPBACK = ("127.", "::1", "::ffff:127.")


@dataclass
class Listener:
    """One listening port: the addresses bound (``0.0.0.0``, ``::``, ``127.0.0.1``), and the
    process that listens (``pid`` 0, ``name`` "" where it cannot be read)."""

    port: int
    addresses: list[str] = field(default_factory=list)
    pid: int = 0
    name: str = ""
    command: str = ""

    @property
    def loopback_only(self) -> bool:
        """Reachable from this machine (or container) only: every address is a loopback one."""
        return all(address.startswith(LOOPBACK) for address in self.addresses)

    def as_json(self) -> dict:
        return {
            "port": self.port,
            "addresses": self.addresses,
            "loopback_only": self.loopback_only,
            "pid": self.pid,
            "process": self.name,
            "command": self.command,
        }


def listeners(
    uid: int,
    excluded: set[int] = frozenset(),
    proc: Path = Path("/proc"),
    known: dict[int, tuple] | None = None,
    ignored: set[int] = frozenset(),
    excluded_pids: set[int] = frozenset(),
    mine=None,
) -> list[Listener]:
    """The listening ports of sockets owned by ``uid``, by port; never a port in
    ``excluded`` or a socket held by a process in ``excluded_pids`` (the Jupyter server's
    own, its kernels': a kernel listens on more ports than its connection file names), nor
    one of a debugger's (:func:`is_debugger`).

    ``mine``: where given, ``mine()`` answers the pids whose sockets count (on a shared host,
    the server's own processes: ``server_processes``); asked once per scan that finds a new
    socket. ``known``: what was found of sockets seen before (inode: (pid, name, command,
    counts)), kept by a caller that scans again and again: only new sockets send it through
    ``/proc``. ``ignored``: inodes of sockets that are not an app's (the relay's own)."""
    known = {} if known is None else known
    sockets = [
        sock for sock in procnet.listening() if sock.uid == uid and sock.local[1] not in excluded and sock.inode not in ignored
    ]
    inodes = {sock.inode for sock in sockets}
    for gone in set(known) - inodes:
        del known[gone]
    new = inodes - set(known)
    if new:
        counted = mine() if mine is not None else None
        for pid, inode in socket_inodes(proc, new):
            if inode not in known:
                known[inode] = (pid, *process_words(proc / str(pid)), counted is None or pid in counted)
        for inode in new - set(known):  # held by no process we may read: not looked for again
            known[inode] = (0, "", "", counted is None)
    found: dict[int, Listener] = {}
    for sock in sockets:
        pid, name, command, counts = known[sock.inode]
        if pid in excluded_pids or not counts or is_debugger(command):
            continue
        listener = found.setdefault(sock.local[1], Listener(sock.local[1]))
        address = str(sock.local[0])
        if address not in listener.addresses:
            listener.addresses.append(address)
        if not listener.pid:
            listener.pid, listener.name, listener.command = pid, name, command
    return sorted(found.values(), key=lambda listener: listener.port)


def server_processes(server_pid: int, proc: Path = Path("/proc")) -> set[int]:
    """The processes of one user's server on a shared host: those of the server's session
    (what the spawner started: the Jupyter server and what runs beside it) and every
    descendant of the Jupyter server (terminals start sessions of their own; kernels and
    what they start). An app whose parents all ended (a terminal closed after ``app &``) is
    the init process's child, and no longer counts."""
    session = os.getsid(server_pid)
    children: dict[int, list[int]] = {}
    found = set()
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"{entry.path}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, parent, sid = int(entry.name), int(fields[1]), int(fields[3])
        children.setdefault(parent, []).append(pid)
        if sid == session:
            found.add(pid)
    todo = [server_pid]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, ()))
    return found


def is_debugger(command: str) -> bool:
    """Whether a command line runs debugpy's adapter (``.../debugpy/adapter``, ``-m
    debugpy.adapter``), as a kernel does for the JupyterLab debugger."""
    return any(word.endswith("debugpy/adapter") or word == "debugpy.adapter" for word in command.split())


def socket_inodes(proc: Path, wanted: set[int]):
    """(pid, inode) for each of the ``wanted`` socket inodes that a readable process holds."""
    if not wanted:
        return
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            fds = os.scandir(f"{entry.path}/fd")
        except OSError:  # gone, or another user's
            continue
        with fds:
            for fd in fds:
                try:
                    target = os.readlink(fd.path)
                except OSError:
                    continue
                if target.startswith("socket:[") and (inode := int(target[8:-1])) in wanted:
                    yield int(entry.name), inode


def process_words(path: Path) -> tuple[str, str]:
    """A process's name and command line ("" where they cannot be read)."""
    try:
        name = (path / "comm").read_text().strip()
        command = (path / "cmdline").read_bytes().rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "", ""
    return name, command
