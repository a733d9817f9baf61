"""Sidecar route table data for the unit tests."""


def route(target="http://127.0.0.1:5000", access="public", **extra):
    """A route entry as the hub gives the sidecar (the defaults: a public port on the hub's machine)."""
    return {"target": target, "access": access, **extra}
