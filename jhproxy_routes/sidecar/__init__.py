"""The auth sidecar process (``python -m jhproxy_routes.sidecar``)."""
