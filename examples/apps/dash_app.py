"""A Dash app behind a port of jhproxy-routes.

``python dash_app.py --port 8050 --base-path /ports/alice/8050`` on a path route: Dash's
``url_base_pathname`` (it needs the trailing slash) makes both its routes and the URLs of its
own requests (layout, callbacks, assets) live below the route. On a subdomain route, no
``--base-path``. The commands: ``commands.py``.
"""

import argparse

from dash import Dash, Input, Output, dcc, html

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, default=8050)
parser.add_argument("--base-path", default="", help="the port's route path, e.g. /ports/alice/8050")
args = parser.parse_args()

app = Dash(__name__, url_base_pathname=args.base_path.rstrip("/") + "/")
app.layout = html.Div(
    [
        html.H1("jhproxy-routes Dash example"),
        dcc.Input(id="name", value="world", type="text"),
        html.P(id="greeting"),
    ]
)


@app.callback(Output("greeting", "children"), Input("name", "value"))
def greet(name: str) -> str:
    return f"Hello, {name}"  # computed by the server: a callback round trip


if __name__ == "__main__":
    app.run(host="0.0.0.0", port=args.port, debug=False)
