"""A Gradio app behind a port of jhproxy-routes.

``python gradio_app.py --port 8050 --root-path /ports/alice/8050`` on a path route, whose
port needs ``"strip_prefix": True`` in ``c.PortRoutes.ports``: Gradio serves its routes at
``/`` and writes ``root_path`` into the URLs its page uses (its API, the queue's event
stream). On a subdomain route, no ``--root-path`` and no option.

The button's click goes through Gradio's queue: the page posts the job and reads the result
from a server-sent event stream. ``analytics_enabled=False``: nothing sent out. The theme
uses the browser's own fonts, not web fonts from a CDN.
"""

import argparse

import gradio as gr

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, default=7860)
parser.add_argument("--root-path", default="", help="the port's route path, e.g. /ports/alice/8050")
args = parser.parse_args()


def greet(name: str) -> str:
    return f"Hello, {name}"  # computed by the server, through the queue


theme = gr.themes.Default(font=["sans-serif"], font_mono=["monospace"])
with gr.Blocks(title="jhproxy-routes Gradio example", analytics_enabled=False) as demo:
    gr.Markdown("# jhproxy-routes Gradio example")
    name = gr.Textbox(label="name", value="world")
    greeting = gr.Textbox(label="greeting")
    gr.Button("Greet").click(greet, name, greeting)

if __name__ == "__main__":
    demo.queue().launch(server_name="0.0.0.0", server_port=args.port, root_path=args.root_path, theme=theme)
