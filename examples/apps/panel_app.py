"""A Panel app behind a port of jhproxy-routes.

Panel serves through a Bokeh server, and the page talks to it over a websocket
(``<base>/ws``). Behind a proxy it needs two settings (``commands.py``):

- ``--allow-websocket-origin HOST``: Bokeh refuses websockets whose ``Origin`` is not in its
  list, which holds only ``localhost:<port>`` unless told. ``HOST`` is the host the browser
  shows: the hub's (``hub.example.org``) on a path route, the port's own
  (``8050--alice.hub.example.org``) on a subdomain route; with its port if not 80/443.
  (Tornado 6.6 and later let a websocket of the page's own origin in before Bokeh's list is
  asked: the proxy passes the ``Host`` on, so there it only matters with older Tornado.)
- ``--prefix /ports/alice/8050`` on a path route only: Bokeh serves its routes, scripts and
  websocket below it (the route's whole path reaches it, no ``strip_prefix``).

``--index panel_app`` serves the app at the root (``/`` or the prefix) rather than at
``/panel_app``.
"""

import panel as pn

pn.extension()

count = pn.widgets.StaticText(value="count: 0")
button = pn.widgets.Button(name="Add one")


def add_one(event) -> None:
    count.value = f"count: {event.obj.clicks}"  # runs on the server: the click came over the websocket


button.on_click(add_one)
pn.Column("# jhproxy-routes Panel example", button, count).servable(title="jhproxy-routes Panel example")
