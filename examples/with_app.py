"""Run the demo echo app next to a user's server: the single-user command of the demo.

    python with_app.py [--app-ip IP] --app-port 5000 [--app-port 5001 ...] -- jupyterhub-singleuser

Starts ``demo_app.py`` (same Python, on ``--app-ip``, default 127.0.0.1; a container needs
0.0.0.0) on each app port, then runs the
command after ``--``, forwarding SIGTERM/SIGINT to it. When the command exits, the apps are
stopped and this script exits with the command's exit code. Standard library only.
"""

import argparse
import signal
import subprocess
import sys
from pathlib import Path

DEMO_APP = Path(__file__).resolve().parent / "demo_app.py"


def parse_args(argv):
    if "--" not in argv:
        sys.exit("usage: with_app.py --app-port PORT [--app-port PORT ...] -- COMMAND [ARGS ...]")
    split = argv.index("--")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app-port", type=int, action="append", default=[], help="port of a demo app")
    parser.add_argument("--app-ip", default="127.0.0.1", help="address the demo apps listen on")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1 :]
    if not command:
        parser.error("no command after --")
    return args.app_ip, args.app_port, command


def stop(proc: subprocess.Popen):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv) -> int:
    ip, ports, command = parse_args(argv)
    apps = [subprocess.Popen([sys.executable, str(DEMO_APP), "--port", str(port), "--ip", ip]) for port in ports]
    try:
        child = subprocess.Popen(command)
    except OSError as e:
        print(f"with_app.py: cannot run {command[0]}: {e}", file=sys.stderr)
        for app in apps:
            stop(app)
        return 127

    def forward(signum, _frame):
        if child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = child.wait()
    for app in apps:
        stop(app)
    # a child killed by a signal: exit as the shell would report it
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
