"""The benchmark's backend app (tornado), on 127.0.0.1 unless ``--ip`` says otherwise. Any path prefix is accepted,
so the same app answers behind every route:

  GET  <prefix>/bytes?n=N   N bytes of b"x" (Content-Length, streamed in 256 KiB writes)
  POST <prefix>/bytes       drains and counts the body, answers {"received": N}
  <prefix>/ws               websocket echo

Usage: python benchmarks/app.py --port PORT [--ip ADDRESS]
"""

import argparse
import asyncio
import json

import tornado.httpserver
import tornado.web
import tornado.websocket

CHUNK = 256 * 1024
BLOCK = b"x" * CHUNK


@tornado.web.stream_request_body
class Bytes(tornado.web.RequestHandler):
    def compute_etag(self):
        return None  # no hashing of bodies: keep the app cheap

    def prepare(self):
        self.received = 0

    def data_received(self, chunk):
        self.received += len(chunk)

    async def get(self):
        n = int(self.get_argument("n", "1024"))
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Length", str(n))
        while n > CHUNK:
            self.write(BLOCK)
            await self.flush()
            n -= CHUNK
        self.write(BLOCK[:n])

    def post(self):
        self.write(json.dumps({"received": self.received}))


class Echo(tornado.websocket.WebSocketHandler):
    def check_origin(self, origin):
        return True

    def on_message(self, message):
        self.write_message(message, binary=isinstance(message, bytes))


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ip", default="127.0.0.1")
    args = parser.parse_args()
    app = tornado.web.Application([(r".*/bytes", Bytes), (r".*/ws", Echo)])
    server = tornado.httpserver.HTTPServer(app, max_body_size=1 << 40, chunk_size=CHUNK)
    server.listen(args.port, address=args.ip)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
