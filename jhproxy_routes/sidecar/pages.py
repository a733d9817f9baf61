"""The sidecar's error page for browsers: what went wrong, in words, and where to go."""

from __future__ import annotations

from html import escape
from http import HTTPStatus


def error_page(status: int, message: str, hub_page: str) -> str:
    phrase = HTTPStatus(status).phrase
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{status} {escape(phrase)}</title>
<style>body{{font-family:sans-serif;max-width:40em;margin:4em auto;padding:0 1em;color:#222}}
h1{{font-size:1.4em}} p.status{{color:#666}}</style></head>
<body>
<h1>{escape(message)}</h1>
<p class="status">{status} {escape(phrase)}</p>
<p>The owner of this server manages its ports on <a href="{escape(hub_page)}">the hub's port page</a>.</p>
</body>
</html>
"""
