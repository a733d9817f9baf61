"""A hostile page for the tests: what the app on a user's ``public`` port may send its visitors.

``python tests/hostile_page.py --port PORT`` serves, on any host:

- ``/toss?domain=D&path=P&<name>=<value>...``: sets each ``<name>=<value>`` for domain D and
  path P (``Secure`` with ``secure=1``), by a ``Set-Cookie`` header and again by the page's
  script (cookie tossing);
- ``/bomb?domain=D&count=N&size=S``: the page's script sets N cookies of S bytes each for
  domain D and path ``/`` (a cookie bomb);
- ``/frame?src=URL``: the page frames URL (and loads it as an image too).

The page's title becomes ``done`` once its script has run (and its frame has loaded).
"""

import argparse
import html
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

CONTROL = {"domain", "path", "count", "size", "secure", "src"}


class HostilePage(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query))
        attributes = f"; Domain={query['domain']}" if "domain" in query else ""
        attributes += "; Secure" if query.get("secure") else ""
        headers = []
        if url.path == "/toss":
            attributes += f"; Path={query.get('path', '/')}"
            cookies = [f"{name}={value}{attributes}" for name, value in query.items() if name not in CONTROL]
            headers = [("Set-Cookie", cookie) for cookie in cookies]
        elif url.path == "/bomb":
            filler = "x" * int(query.get("size", 3900))
            cookies = [f"bomb{i}={filler}{attributes}; Path=/" for i in range(int(query.get("count", 5)))]
        else:
            cookies = []
        script = "".join(f"document.cookie = {json.dumps(cookie)};\n" for cookie in cookies)
        body = f"<!doctype html><title>running</title><pre>{html.escape(self.path)}</pre>"
        if url.path == "/frame":
            src = html.escape(query["src"])
            body += f"<img src='{src}'><iframe src='{src}' onload=\"document.title = 'done'\"></iframe>"
        else:
            body += f"<script>\n{script}document.title = 'done';</script>"
        data = body.encode()
        self.send_response(200)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    ThreadingHTTPServer(("127.0.0.1", parser.parse_args().port), HostilePage).serve_forever()
