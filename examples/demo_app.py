"""A small app to run inside a user's server: it echoes what it receives.

``python demo_app.py --port 5000`` serves, on any path:

- ``GET``/``POST``/...: JSON with the method, path, query, headers and the body's size and
  SHA-256 (bodies are streamed, never held in memory);
- ``.../download?bytes=N``: N bytes of a repeating pattern, streamed;
- ``GET ...?sleep=S``: answers after S seconds (a slow app);
- ``.../ws``: a websocket that echoes messages (it accepts the first subprotocol offered);
- ``/__log__`` (direct only): every request it has received, to show what reached it.

With ``--certfile`` and ``--keyfile`` it serves HTTPS (TLS) instead, as an app started with
its own certificate does (a port with ``"protocol": "https"``).
"""

import argparse
import asyncio
import hashlib
import json
import os
import ssl

from tornado import web, websocket

PATTERN = bytes(range(256)) * 256  # 64 KiB
RECEIVED = []


def record(handler) -> dict:
    entry = {
        "server_of": os.environ.get("JUPYTERHUB_USER", ""),  # whose server runs this app
        "scheme": handler.request.protocol,  # https: the request came over TLS
        "method": handler.request.method,
        "path": handler.request.path,
        "query": handler.request.query,
        "headers": [[k, v] for k, v in handler.request.headers.get_all()],
    }
    RECEIVED.append(entry)
    return entry


@web.stream_request_body
class EchoHandler(web.RequestHandler):
    def prepare(self):
        self.entry = record(self)
        self.request.connection.set_max_body_size(1 << 40)
        self.digest = hashlib.sha256()
        self.size = 0

    def data_received(self, chunk):
        self.digest.update(chunk)
        self.size += len(chunk)

    async def get(self):
        if self.get_argument("sleep", None):
            await asyncio.sleep(float(self.get_argument("sleep")))
        if self.request.path.endswith("/download"):
            return await self.download(int(self.get_argument("bytes", "0")))
        self.echo()

    def echo(self):
        self.set_header("Content-Type", "application/json")
        self.set_header("Set-Cookie", "app-cookie=set-by-app; Path=/")
        self.finish(json.dumps({**self.entry, "body_bytes": self.size, "body_sha256": self.digest.hexdigest()}))

    async def download(self, size: int):
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Length", str(size))
        while size:
            chunk = PATTERN[: min(size, len(PATTERN))]
            self.write(chunk)
            await self.flush()
            size -= len(chunk)
        self.finish()

    head = post = put = patch = delete = options = echo


class EchoSocket(websocket.WebSocketHandler):
    def prepare(self):
        record(self)

    def check_origin(self, origin):
        return True

    def select_subprotocol(self, subprotocols):
        return subprotocols[0] if subprotocols else None

    def on_message(self, message):
        self.write_message(message, binary=isinstance(message, bytes))


class LogHandler(web.RequestHandler):
    def get(self):
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(RECEIVED))


def make_app() -> web.Application:
    return web.Application([(r"/__log__", LogHandler), (r".*/ws", EchoSocket), (r".*", EchoHandler)])


async def main():
    parser = argparse.ArgumentParser(description="echo app for jhproxy-routes")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--ip", default="127.0.0.1")
    parser.add_argument("--certfile", help="serve HTTPS with this certificate (PEM; with --keyfile)")
    parser.add_argument("--keyfile", help="the certificate's private key (PEM)")
    args = parser.parse_args()
    tls = None
    if args.certfile:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.certfile, args.keyfile)
    make_app().listen(args.port, args.ip, max_body_size=1 << 40, max_buffer_size=1 << 20, ssl_options=tls)
    print(f"demo app listening on {'https' if tls else 'http'}://{args.ip}:{args.port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
