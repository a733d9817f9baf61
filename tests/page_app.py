"""A small app that serves pages for browser tests and records what reaches it.

``python tests/page_app.py --port P --pages DIR`` serves ``DIR/<name>.html`` at any path
ending in ``/<name>.html`` (a page of the test's: an attacker's, or a port's own page with
images and scripts), answers every other path with ``ok`` (as ``text/html`` for ``.html``
names it has no page for, ``text/javascript`` for ``.js``), and lists what it received
(method, path, headers) at ``/__log__``. With ``--set-cookie VALUE`` every page sets that
cookie (a page planting cookies).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from tornado import web

RECEIVED: list[dict] = []


class PageHandler(web.RequestHandler):
    def initialize(self, pages: Path, set_cookie: list[str]):
        self.pages, self.set_cookies = pages, set_cookie

    def get(self):
        path = self.request.path
        RECEIVED.append({"method": "GET", "path": path, "headers": [[k, v] for k, v in self.request.headers.get_all()]})
        name = path.rsplit("/", 1)[-1]
        page = self.pages / name
        if name.endswith(".html") and page.is_file():
            for value in self.set_cookies:
                self.add_header("Set-Cookie", value)
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.finish(page.read_bytes())
            return
        self.set_header("Content-Type", "text/javascript" if name.endswith(".js") else "text/plain")
        self.finish("ok")


class LogHandler(web.RequestHandler):
    def get(self):
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(RECEIVED))


async def main():
    parser = argparse.ArgumentParser(description="pages for browser tests")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pages", type=Path, required=True)
    parser.add_argument("--set-cookie", action="append", default=[])
    args = parser.parse_args()
    handlers = [(r"/__log__", LogHandler), (r".*", PageHandler, {"pages": args.pages, "set_cookie": args.set_cookie})]
    web.Application(handlers).listen(args.port, "127.0.0.1")
    print(f"page app listening on http://127.0.0.1:{args.port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
