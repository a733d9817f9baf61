"""The server extension in a real Jupyter server: the server's listening ports with their
processes (``GET /jhproxy-routes/ports``), enabled by the package's data files alone.

What must never appear: the Jupyter server's own port, a kernel's ports (ZMQ, signed with the
connection file's key), another user's listener on the same machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.rig import BIN, free_port, port_open, wait_for

TOKEN = "singleuser-test-token"
SYSTEM_PYTHON = "/usr/bin/python3"  # another user cannot run the venv's (below /root)


@pytest.fixture(scope="module")
def server(module_tmp):
    """A real ``jupyter server``: nothing enables the extension but its installed config."""
    port = free_port()
    runtime = module_tmp / "runtime"
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(runtime)}
    log = module_tmp / "server.log"
    command = [str(BIN / "jupyter-server"), "--allow-root", "--no-browser", f"--port={port}", "--ip=127.0.0.1"]
    command += [f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={module_tmp}"]
    proc = subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    wait_for(lambda: port_open(port), 60, "jupyter server", log)
    yield {"url": f"http://127.0.0.1:{port}", "port": port, "runtime": runtime, "log": log}
    proc.terminate()
    proc.wait(20)


@pytest.fixture(scope="module")
def listeners(module_tmp):
    """Listeners of this user on 127.0.0.1 and on every address, and one of user nobody's."""
    ports = {name: free_port() for name in ("loopback", "everywhere", "nobody")}
    procs = [
        subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(ports["loopback"])], cwd=module_tmp),
        subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "0.0.0.0", str(ports["everywhere"])], cwd=module_tmp),
        subprocess.Popen(
            ["runuser", "-u", "nobody", "--", SYSTEM_PYTHON, "-m", "http.server", "--bind", "127.0.0.1", str(ports["nobody"])],
            cwd="/",
        ),
    ]
    for name, port in ports.items():
        wait_for(lambda port=port: port_open(port), 15, f"the {name} listener on {port}")
    yield ports
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def found(server) -> dict[int, dict]:
    response = httpx.get(f"{server['url']}/jhproxy-routes/ports", headers={"Authorization": f"token {TOKEN}"}, timeout=30)
    assert response.status_code == 200, response.text
    return {entry["port"]: entry for entry in response.json()["ports"]}


def test_the_servers_listeners_with_their_processes(server, listeners):
    ports = found(server)
    loopback, everywhere = ports[listeners["loopback"]], ports[listeners["everywhere"]]
    assert loopback["addresses"] == ["127.0.0.1"] and loopback["loopback_only"] is True
    assert everywhere["addresses"] == ["0.0.0.0"] and everywhere["loopback_only"] is False
    for entry in (loopback, everywhere):
        assert entry["process"].startswith("python") and "-m http.server" in entry["command"], entry
        assert Path(f"/proc/{entry['pid']}/cmdline").read_bytes().split(b"\0")[:3] == [
            sys.executable.encode(),
            b"-m",
            b"http.server",
        ]


def test_never_the_servers_own_port_a_kernels_or_another_users(server, listeners):
    started = httpx.post(f"{server['url']}/api/kernels", headers={"Authorization": f"token {TOKEN}"}, json={}, timeout=60)
    assert started.status_code == 201, started.text
    kernel = started.json()["id"]
    connection = json.loads((server["runtime"] / f"kernel-{kernel}.json").read_text())
    kernel_ports = {connection[name] for name in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")}
    wait_for(lambda: all(port_open(port) for port in kernel_ports), 60, "the kernel's ports", server["log"])
    ports = found(server)
    assert server["port"] not in ports
    assert not kernel_ports & set(ports), kernel_ports & set(ports)
    assert listeners["nobody"] not in ports  # another user's, on the same machine
    assert listeners["loopback"] in ports  # (the scan itself saw this user's)


def test_only_for_the_servers_own_users(server):
    for headers in ({}, {"Authorization": "token wrong"}):
        response = httpx.get(f"{server['url']}/jhproxy-routes/ports", headers=headers, timeout=30)
        assert response.status_code == 403 and "ports" not in response.text, response.text


LABEXTENSION = "share/jupyter/labextensions/@jhproxy-routes/labextension"


@pytest.fixture(scope="module")
def wheel(module_tmp) -> Path:
    """The package's wheel, built from this checkout as pip builds it (hatchling and its
    JupyterLab build hook in an isolated environment)."""
    from tests.rig import REPO

    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(module_tmp / "dist"), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = (module_tmp / "dist").glob("jhproxy_routes-*.whl")
    return wheel


def test_the_wheel_enables_the_extension(wheel):
    """A wheel installs the switch that a Jupyter server reads (bootstrap.sh copies it into
    the editable checkout's venv, whose install leaves data files out)."""
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    [switch] = [n for n in names if n.endswith("etc/jupyter/jupyter_server_config.d/jhproxy_routes.json")]
    config = json.loads(zipfile.ZipFile(wheel).read(switch))
    assert config == {"ServerApp": {"jpserver_extensions": {"jhproxy_routes.singleuser": True}}}
    assert "jhproxy_routes/singleuser/listeners.py" in names
    assert {"jhproxy_routes/templates/jhproxy-routes.html", "jhproxy_routes/templates/jhpr-listening.js"} <= set(names)


def test_the_wheel_ships_the_jupyterlab_extension_prebuilt(wheel, tmp_path):
    """The JupyterLab extension, built, in the wheel's data (nothing to build at install
    time); installed from the wheel alone, JupyterLab finds it enabled."""
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n.split(f"{LABEXTENSION}/", 1)[1] for n in names if f".data/data/{LABEXTENSION}/" in n}
    assert {"package.json", "install.json", "static/style.js", "schemas/@jhproxy-routes/labextension/plugin.json"} <= shipped
    [remote_entry] = [n for n in shipped if n.startswith("static/remoteEntry.") and n.endswith(".js")]
    meta = json.loads(zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(f"{LABEXTENSION}/package.json"))))
    assert meta["name"] == "@jhproxy-routes/labextension" and meta["jupyterlab"]["_build"]["load"] == remote_entry
    assert not [n for n in names if n.startswith("jhproxy_routes/labextension/")]  # once, as data only

    # a venv of its own (pip's --prefix would uninstall the checkout's editable install)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    installed = subprocess.run(
        [str(venv / "bin/python"), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    data_dir = venv / "share/jupyter"
    listed = lab_extensions({**os.environ, "JUPYTER_PATH": str(data_dir)})
    assert "@jhproxy-routes/labextension" in listed.get(str(data_dir / "labextensions"), {}), listed


def test_jupyterlab_in_the_venv_finds_the_extension_enabled():
    """scripts/bootstrap.sh links the checkout's build where a wheel puts it."""
    listed = lab_extensions(os.environ)
    [(where, found)] = [(where, found) for where, found in listed.items() if "@jhproxy-routes/labextension" in found]
    assert where == str(Path(sys.prefix) / "share/jupyter/labextensions"), listed


def lab_extensions(env: dict) -> dict[str, dict[str, str]]:
    """``jupyter labextension list``: {directory: {name: "enabled OK" ...}}."""
    import re

    result = subprocess.run([str(BIN / "jupyter"), "labextension", "list"], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    text = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)
    listed: dict[str, dict[str, str]] = {}
    where = None
    for line in text.splitlines():
        if line.startswith("/"):
            where = listed.setdefault(line.strip(), {})
        elif where is not None and (match := re.match(r"\s+(\S+) v\S+ (enabled|disabled) (OK|X)", line)):
            where[match.group(1)] = f"{match.group(2)} {match.group(3)}"
    for found in listed.values():
        for name, state in found.items():
            assert name != "@jhproxy-routes/labextension" or state == "enabled OK", text
    return listed


def test_never_a_kernels_debugger(server, listeners):
    """The JupyterLab debugger: the kernel starts debugpy's adapter, a process of its own
    that listens on two loopback ports. Its client port takes a second client once the
    kernel's own session ends (the debugger switched off), and that client evaluates code in
    the kernel: it is never an app (relayed from an allowed range, it would run code for
    whoever reaches the server's address)."""
    from jupyter_client import BlockingKernelClient

    started = httpx.post(f"{server['url']}/api/kernels", headers={"Authorization": f"token {TOKEN}"}, json={}, timeout=60)
    assert started.status_code == 201, started.text
    before = set(found(server))
    client = BlockingKernelClient(connection_file=str(server["runtime"] / f"kernel-{started.json()['id']}.json"))
    client.load_connection_file()
    client.start_channels()
    try:
        client.wait_for_ready(60)
        request = {"type": "request", "seq": 1, "command": "initialize", "arguments": {"adapterID": "python"}}
        client.control_channel.send(client.session.msg("debug_request", request))
        assert client.control_channel.get_msg(timeout=60)["content"]["success"] is True
        adapter = wait_for(lambda: debugger_ports(), 30, "debugpy's adapter to listen", server["log"])
        for _ in range(3):  # whatever the server's scan finds now
            assert not adapter & set(found(server)), (adapter, set(found(server)) - before)
    finally:
        client.stop_channels()


def debugger_ports() -> set[int]:
    """The ports of this user's debugpy adapters, read from /proc here (not by the scan)."""
    from jhproxy_routes import procnet
    from jhproxy_routes.singleuser.listeners import process_words, socket_inodes

    sockets = {s.inode: s.local[1] for s in procnet.listening() if s.uid == os.getuid()}
    return {
        sockets[inode]
        for pid, inode in socket_inodes(Path("/proc"), set(sockets))
        if "debugpy/adapter" in process_words(Path(f"/proc/{pid}"))[1]
    }
