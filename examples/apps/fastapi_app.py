"""A FastAPI app behind a port of jhproxy-routes.

On a path route (``/ports/alice/8000``): give the port ``"strip_prefix": True`` in
``c.PortRoutes.ports`` (the app then receives ``/docs``, not ``/ports/alice/8000/docs``) and
start uvicorn with ``--root-path /ports/alice/8000``: FastAPI writes it into the URLs it hands
out, such as the ``openapi.json`` that ``/docs`` (Swagger UI) fetches. Without it, ``/docs``
asks for the hub's ``/openapi.json`` and breaks. On a subdomain route (a host of its own) no
option is needed. The commands: ``commands.py``.
"""

from fastapi import FastAPI

app = FastAPI(title="jhproxy-routes FastAPI example")


@app.get("/items/{item_id}")
def read_item(item_id: int) -> dict:
    return {"item_id": item_id, "doubled": item_id * 2}
